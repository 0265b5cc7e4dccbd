//! Canonical bytes: the exact byte strings that signatures and hashes cover.
//!
//! Every signed or hashed object starts with a domain tag (so a signature over one kind of
//! object can never be replayed as another) followed by its fields in a fixed order, each
//! fixed-width big-endian or length-prefixed. The encoding is written out here by hand and is
//! part of the protocol: changing it changes every coin id.

/// Builds canonical bytes field by field.
#[derive(Debug, Default)]
pub struct Canon {
    bytes: Vec<u8>,
}

impl Canon {
    /// Starts an object with its domain tag.
    pub fn new(domain: &str) -> Canon {
        let mut c = Canon {
            bytes: Vec::with_capacity(160),
        };
        c.bytes_field(domain.as_bytes());
        c
    }

    /// Appends a `u32`, big-endian.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a `u64`, big-endian.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a fixed-size array (its length is implied by the schema).
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }

    /// Appends a variable-length byte string, prefixed by its length as `u32`.
    pub fn bytes_field(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("canonical field longer than 4 GiB");
        self.u32(len);
        self.bytes.extend_from_slice(v);
        self
    }

    /// The finished bytes.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

use thiserror::Error;

/// Why bytes or a protobuf message were rejected at the protocol boundary.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The bytes are not a valid protobuf encoding of the expected message.
    #[error("malformed protobuf: {0}")]
    Decode(String),
    /// The checksum does not match: the bytes were corrupted on the way.
    #[error("checksum mismatch: the envelope was corrupted")]
    Checksum,
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// Dotted path of the field.
        field: &'static str,
    },
    /// A bytes field has the wrong length.
    #[error("field `{field}` must be {expected} bytes, got {actual}")]
    BadLength {
        /// Dotted path of the field.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A field holds a value outside its domain.
    #[error("field `{field}` is invalid: {why}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl From<prost::DecodeError> for ProtocolError {
    fn from(e: prost::DecodeError) -> Self {
        ProtocolError::Decode(e.to_string())
    }
}

/// Copies a bytes field into a fixed-size array, or says which field had the wrong length.
pub(crate) fn fixed<const N: usize>(
    field: &'static str,
    bytes: &[u8],
) -> Result<[u8; N], ProtocolError> {
    bytes.try_into().map_err(|_| ProtocolError::BadLength {
        field,
        expected: N,
        actual: bytes.len(),
    })
}

/// Unwraps a required sub-message.
pub(crate) fn required<T>(field: &'static str, value: Option<T>) -> Result<T, ProtocolError> {
    value.ok_or(ProtocolError::MissingField { field })
}

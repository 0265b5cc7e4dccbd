//! The hash chain: an append-only list of blocks, each holding one side's batch hash and the
//! hash of the block before it.
//!
//! Anyone holding the blocks can verify them ([`verify_blocks`]): each block's recorded hash
//! must be the hash of its contents, and each block must link the previous block's hash. A
//! block altered in place fails the first check at its height; a block altered and re-hashed
//! fails its successor's link, again naming its height. Only the last block can be re-hashed
//! without a successor noticing, which is why every poster is handed the height and hash of
//! its block: [`verify_anchored`] checks the chain against such an anchor.

use crate::reconciler::hash::BatchKey;
use serde::{Deserialize, Serialize};
use specie_protocol::canonical::Canon;
use specie_protocol::crypto::sha256;
use specie_protocol::reconcile::{BatchId, Digest};
use specie_protocol::{Address, InstitutionId, RECONCILIATION_PLATFORM};
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;

const BLOCK_DOMAIN: &str = "specie/v1/reconcile/block";

/// The previous-block hash of the first block.
pub const GENESIS_PREV_HASH: Digest = Digest([0; 32]);

/// Who posted a batch hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Poster {
    /// The reconciliation platform.
    Platform,
    /// An institution, posting the hash of its own batch.
    Institution(InstitutionId),
}

impl Poster {
    /// The poster's reconciler.
    pub fn address(self) -> Address {
        match self {
            Poster::Platform => Address::Reconciler(RECONCILIATION_PLATFORM),
            Poster::Institution(i) => Address::Reconciler(u64::from(i.0)),
        }
    }
}

impl fmt::Display for Poster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Poster::Platform => f.write_str("platform"),
            Poster::Institution(i) => write!(f, "{i}"),
        }
    }
}

/// One block of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Position in the chain, from 0.
    pub height: u64,
    /// The hash of the block at `height - 1` ([`GENESIS_PREV_HASH`] for the first).
    pub prev_hash: Digest,
    /// Who posted.
    pub poster: Poster,
    /// The institution whose batch this is.
    pub institution: InstitutionId,
    /// The institution's batch id.
    pub batch_id: BatchId,
    /// The posted batch hash.
    pub batch_hash: Digest,
    /// How many records the poster hashed.
    pub record_count: u64,
    /// SHA-256 of the fields above ([`Block::compute_hash`]).
    pub hash: Digest,
}

impl Block {
    /// The hash of the block's contents (every field but `hash`).
    pub fn compute_hash(&self) -> Digest {
        let mut c = Canon::new(BLOCK_DOMAIN);
        c.u64(self.height).fixed(&self.prev_hash.0);
        match self.poster {
            Poster::Platform => c.u32(0).u32(0),
            Poster::Institution(i) => c.u32(1).u32(i.0),
        };
        c.u32(self.institution.0)
            .u64(self.batch_id.0)
            .fixed(&self.batch_hash.0)
            .u64(self.record_count);
        Digest(sha256(&c.finish()))
    }

    /// The batch the block is about.
    pub fn key(&self) -> BatchKey {
        BatchKey {
            institution: self.institution,
            batch_id: self.batch_id,
        }
    }
}

/// What verification found wrong, naming the height of the suspect block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    /// A block's contents do not hash to the hash it records: it was altered in place.
    #[error("block {height} was altered: its contents do not match its hash")]
    Altered {
        /// The altered block.
        height: u64,
    },
    /// A block's hash is not the one its successor links to: it (or the link) was rewritten.
    #[error("block {height} was rewritten: block {} links to another hash", height + 1)]
    Relinked {
        /// The block whose successor does not link to it.
        height: u64,
    },
    /// A block sits at another position than its height says.
    #[error("the block at position {position} claims height {height}")]
    WrongHeight {
        /// Where the block is.
        position: u64,
        /// What it claims.
        height: u64,
    },
    /// The chain does not hold the anchored block (truncated, or the block was rewritten).
    #[error("block {height} is not the block anchored at that height")]
    AnchorMismatch {
        /// The anchor's height.
        height: u64,
    },
}

impl ChainError {
    /// The height of the block found at fault.
    pub fn height(&self) -> u64 {
        match *self {
            ChainError::Altered { height }
            | ChainError::Relinked { height }
            | ChainError::AnchorMismatch { height } => height,
            ChainError::WrongHeight { position, .. } => position,
        }
    }
}

/// Verifies a chain from its first block: heights, hashes and links.
pub fn verify_blocks(blocks: &[Block]) -> Result<(), ChainError> {
    verify_from(blocks, 0, GENESIS_PREV_HASH)
}

/// Verifies the blocks of a chain from height `start` on, the first of which must link to
/// `start_prev` (the hash of the block before it, kept when older blocks were dropped;
/// [`GENESIS_PREV_HASH`] at height 0): heights, hashes and links.
pub fn verify_from(blocks: &[Block], start: u64, start_prev: Digest) -> Result<(), ChainError> {
    for (offset, block) in blocks.iter().enumerate() {
        let position = start + offset as u64;
        if block.height != position {
            return Err(ChainError::WrongHeight {
                position,
                height: block.height,
            });
        }
        if block.compute_hash() != block.hash {
            return Err(ChainError::Altered { height: position });
        }
        let expected_prev = match offset {
            0 => start_prev,
            _ => blocks[offset - 1].hash,
        };
        if block.prev_hash != expected_prev {
            // Every earlier block verified on its own, so the one before is the suspect.
            return Err(match position {
                0 => ChainError::Altered { height: 0 },
                _ => ChainError::Relinked {
                    height: position - 1,
                },
            });
        }
    }
    Ok(())
}

/// Verifies a chain and that it holds the block `(height, hash)` a poster was given.
pub fn verify_anchored(blocks: &[Block], height: u64, hash: Digest) -> Result<(), ChainError> {
    verify_blocks(blocks)?;
    match usize::try_from(height).ok().and_then(|h| blocks.get(h)) {
        Some(block) if block.hash == hash => Ok(()),
        _ => Err(ChainError::AnchorMismatch { height }),
    }
}

/// The append-only chain, with an index of who posted what.
///
/// Old blocks can be dropped from the front ([`HashChain::drop_front`]) once nothing needs
/// them any more: the chain then starts at a later height and remembers the hash its first
/// block links to, so what it keeps still verifies ([`HashChain::verify`]) and new blocks
/// still link to the old ones.
#[derive(Debug, Clone, Default)]
pub struct HashChain {
    blocks: Vec<Block>,
    /// Height of `blocks[0]`: blocks below it were dropped.
    start: u64,
    /// The hash the block at `start` links to ([`GENESIS_PREV_HASH`] while nothing was
    /// dropped, else the hash of the last block dropped).
    start_prev: Digest,
    /// (poster, batch) → height, for the blocks kept; a poster posts each batch once.
    index: HashMap<(Poster, BatchKey), u64>,
}

impl HashChain {
    /// An empty chain.
    pub fn new() -> HashChain {
        HashChain::default()
    }

    /// A chain of `blocks` from height `start`, the first linking to `start_prev` (what
    /// [`HashChain::start`], [`HashChain::start_prev`] and [`HashChain::blocks`] return). The
    /// blocks must verify.
    pub fn from_parts(
        start: u64,
        start_prev: Digest,
        blocks: Vec<Block>,
    ) -> Result<HashChain, ChainError> {
        verify_from(&blocks, start, start_prev)?;
        let index = blocks
            .iter()
            .map(|b| ((b.poster, b.key()), b.height))
            .collect();
        Ok(HashChain {
            blocks,
            start,
            start_prev,
            index,
        })
    }

    /// The block that would come next for this post. Appending it is [`HashChain::push`].
    pub fn next_block(
        &self,
        poster: Poster,
        key: BatchKey,
        batch_hash: Digest,
        record_count: u64,
    ) -> Block {
        let mut block = Block {
            height: self.height(),
            prev_hash: self.head_hash(),
            poster,
            institution: key.institution,
            batch_id: key.batch_id,
            batch_hash,
            record_count,
            hash: Digest::default(),
        };
        block.hash = block.compute_hash();
        block
    }

    fn head_hash(&self) -> Digest {
        self.blocks.last().map_or(self.start_prev, |b| b.hash)
    }

    /// Appends a block made by [`HashChain::next_block`] on this chain.
    pub fn push(&mut self, block: Block) {
        // A block is appended only on the chain it was made for: its height and link fit.
        assert_eq!(block.height, self.height(), "block appended out of turn");
        assert_eq!(
            block.prev_hash,
            self.head_hash(),
            "block does not link to the head"
        );
        let previous = self.index.insert((block.poster, block.key()), block.height);
        assert!(previous.is_none(), "a poster posts a batch once");
        self.blocks.push(block);
    }

    /// The block a poster posted for a batch (if it was not dropped).
    pub fn find(&self, poster: Poster, key: BatchKey) -> Option<&Block> {
        self.index
            .get(&(poster, key))
            .map(|&h| &self.blocks[(h - self.start) as usize])
    }

    /// Every block kept, oldest first.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Number of blocks kept.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is kept.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The height of the next block: how many blocks were ever appended.
    pub fn height(&self) -> u64 {
        self.start + self.blocks.len() as u64
    }

    /// The height of the first block kept.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The hash the first block kept links to.
    pub fn start_prev(&self) -> Digest {
        self.start_prev
    }

    /// How many blocks from the front satisfy `droppable`, up to the first that does not.
    pub fn droppable_prefix(&self, droppable: impl Fn(&Block) -> bool) -> usize {
        self.blocks.iter().take_while(|b| droppable(b)).count()
    }

    /// Drops the `n` oldest blocks kept (all of them if fewer).
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.blocks.len());
        if n == 0 {
            return;
        }
        for b in &self.blocks[..n] {
            self.index.remove(&(b.poster, b.key()));
        }
        self.start_prev = self.blocks[n - 1].hash;
        self.start += n as u64;
        self.blocks.drain(..n);
    }

    /// Verifies the blocks kept, against the hash the first of them links to.
    pub fn verify(&self) -> Result<(), ChainError> {
        verify_from(&self.blocks, self.start, self.start_prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(posts: u64) -> HashChain {
        let mut chain = HashChain::new();
        for i in 0..posts {
            let key = BatchKey {
                institution: InstitutionId((i % 3) as u32),
                batch_id: BatchId(i / 2),
            };
            let poster = if i % 2 == 0 {
                Poster::Platform
            } else {
                Poster::Institution(key.institution)
            };
            let block = chain.next_block(poster, key, Digest([i as u8; 32]), 100 + i);
            chain.push(block);
        }
        chain
    }

    #[test]
    fn an_honest_chain_verifies_and_is_indexed_by_poster_and_batch() {
        let c = chain(6);
        assert_eq!(c.verify(), Ok(()));
        let last = c.blocks().last().unwrap();
        assert_eq!(verify_anchored(c.blocks(), last.height, last.hash), Ok(()));
        let found = c.find(last.poster, last.key()).unwrap();
        assert_eq!(found.height, 5);
    }

    #[test]
    fn a_block_altered_in_place_is_found_at_its_height() {
        let mut blocks = chain(6).blocks().to_vec();
        blocks[3].batch_hash = Digest([0xee; 32]);
        assert_eq!(
            verify_blocks(&blocks),
            Err(ChainError::Altered { height: 3 })
        );
    }

    #[test]
    fn a_block_altered_and_rehashed_is_found_by_its_successors_link() {
        let mut blocks = chain(6).blocks().to_vec();
        blocks[2].record_count += 1;
        blocks[2].hash = blocks[2].compute_hash();
        assert_eq!(
            verify_blocks(&blocks),
            Err(ChainError::Relinked { height: 2 })
        );
        assert_eq!(verify_blocks(&blocks).unwrap_err().height(), 2);
    }

    #[test]
    fn the_last_block_rehashed_is_found_by_its_posters_anchor() {
        let honest = chain(4);
        let anchor = honest.blocks()[3].clone();
        let mut blocks = honest.blocks().to_vec();
        blocks[3].batch_hash = Digest([0xee; 32]);
        blocks[3].hash = blocks[3].compute_hash();
        assert_eq!(verify_blocks(&blocks), Ok(()), "no successor to notice");
        assert_eq!(
            verify_anchored(&blocks, anchor.height, anchor.hash),
            Err(ChainError::AnchorMismatch { height: 3 })
        );
        // A truncated chain misses its anchor too.
        assert_eq!(
            verify_anchored(&blocks[..2], anchor.height, anchor.hash),
            Err(ChainError::AnchorMismatch { height: 3 })
        );
    }

    #[test]
    fn a_chain_that_dropped_its_oldest_blocks_still_verifies_and_grows() {
        let mut c = chain(6);
        let whole = c.blocks().to_vec();
        c.drop_front(4);
        assert_eq!((c.start(), c.len(), c.height()), (4, 2, 6));
        assert_eq!(c.verify(), Ok(()));
        assert!(c.find(whole[1].poster, whole[1].key()).is_none());
        assert_eq!(c.find(whole[5].poster, whole[5].key()), Some(&whole[5]));
        let key = BatchKey {
            institution: InstitutionId(9),
            batch_id: BatchId(9),
        };
        let next = c.next_block(Poster::Platform, key, Digest([9; 32]), 1);
        c.push(next);
        let mut all = whole;
        all.push(c.blocks().last().unwrap().clone());
        assert_eq!(
            verify_blocks(&all),
            Ok(()),
            "the new block links to the old ones"
        );
        let again = HashChain::from_parts(c.start(), c.start_prev(), c.blocks().to_vec()).unwrap();
        assert_eq!(again.verify(), Ok(()));
        assert_eq!(again.find(Poster::Platform, key).map(|b| b.height), Some(6));
        // A kept block altered, or the link to the dropped ones broken, is found.
        let mut blocks = c.blocks().to_vec();
        blocks[0].record_count += 1;
        assert_eq!(
            verify_from(&blocks, c.start(), c.start_prev()),
            Err(ChainError::Altered { height: 4 })
        );
        assert_eq!(
            verify_from(c.blocks(), c.start(), Digest([1; 32])),
            Err(ChainError::Relinked { height: 3 })
        );
        c.drop_front(100);
        assert!(c.is_empty());
        assert_eq!(c.height(), 7);
    }

    #[test]
    fn a_removed_block_is_found() {
        let mut blocks = chain(5).blocks().to_vec();
        blocks.remove(2);
        assert_eq!(
            verify_blocks(&blocks),
            Err(ChainError::WrongHeight {
                position: 2,
                height: 3
            })
        );
    }
}

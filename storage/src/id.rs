//! Time-ordered 63-bit ids, Snowflake-style: `time | node | shard | sequence`.
//!
//! | bits | field | range |
//! |---|---|---|
//! | 41 | milliseconds since 2025-01-01T00:00:00Z | ~69 years |
//! | 8 | node | 256 edge nodes |
//! | 6 | shard | 64 shards (cores) per node |
//! | 8 | sequence | 256 ids per millisecond per shard (256k/s) |
//!
//! The top bit stays 0 so ids fit CQL `bigint` and JavaScript-safe comparisons of the
//! high part. Ids sort by time first, so a clustering key made of an id is a time order.
//! The generator is sans-IO: the caller passes the current time, so it is tested with an
//! injected clock. When a shard exhausts a millisecond's sequence, or the wall clock
//! steps back, it keeps counting on its own last timestamp rather than repeating an id.

/// Milliseconds from the Unix epoch to the id epoch (2025-01-01T00:00:00Z).
pub const EPOCH_MS: u64 = 1_735_689_600_000;

const SEQ_BITS: u32 = 8;
const SHARD_BITS: u32 = 6;
const NODE_BITS: u32 = 8;
const TIME_BITS: u32 = 41;

/// Largest node number.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
/// Largest shard number.
pub const MAX_SHARD: u16 = (1 << SHARD_BITS) - 1;

/// A time-ordered id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub u64);

impl Id {
    /// Unix milliseconds at which this id was made.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> (SEQ_BITS + SHARD_BITS + NODE_BITS)) + EPOCH_MS
    }

    /// The node that made it.
    pub fn node(self) -> u16 {
        ((self.0 >> (SEQ_BITS + SHARD_BITS)) & u64::from(MAX_NODE)) as u16
    }

    /// The shard that made it.
    pub fn shard(self) -> u16 {
        ((self.0 >> SEQ_BITS) & u64::from(MAX_SHARD)) as u16
    }

    /// The smallest id of a given Unix millisecond (for time-range scans).
    pub fn min_at(unix_ms: u64) -> Id {
        Id(unix_ms.saturating_sub(EPOCH_MS) << (SEQ_BITS + SHARD_BITS + NODE_BITS))
    }
}

/// Errors of [`IdGenerator::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Node or shard number out of range.
    #[error("node {node} / shard {shard} out of range (max {MAX_NODE} / {MAX_SHARD})")]
    OutOfRange {
        /// Node.
        node: u16,
        /// Shard.
        shard: u16,
    },
}

/// Makes ids for one shard of one node. Not shared between shards (each owns one).
#[derive(Debug, Clone)]
pub struct IdGenerator {
    node: u16,
    shard: u16,
    last_ms: u64,
    seq: u16,
}

impl IdGenerator {
    /// A generator for `node` / `shard`.
    pub fn new(node: u16, shard: u16) -> Result<Self, IdError> {
        if node > MAX_NODE || shard > MAX_SHARD {
            return Err(IdError::OutOfRange { node, shard });
        }
        Ok(Self {
            node,
            shard,
            last_ms: 0,
            seq: 0,
        })
    }

    /// The next id, given the current Unix time in milliseconds. Strictly increasing.
    pub fn next(&mut self, now_unix_ms: u64) -> Id {
        let now = now_unix_ms.saturating_sub(EPOCH_MS) & ((1 << TIME_BITS) - 1);
        if now > self.last_ms {
            self.last_ms = now;
            self.seq = 0;
        } else if self.seq < (1 << SEQ_BITS) - 1 {
            // Same millisecond, or the clock stepped back: keep our own time.
            self.seq += 1;
        } else {
            // Sequence exhausted: borrow the next millisecond.
            self.last_ms += 1;
            self.seq = 0;
        }
        Id((self.last_ms << (SEQ_BITS + SHARD_BITS + NODE_BITS))
            | (u64::from(self.node) << (SEQ_BITS + SHARD_BITS))
            | (u64::from(self.shard) << SEQ_BITS)
            | u64::from(self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_795_000_000_000;

    #[test]
    fn fields_round_trip() {
        let mut g = IdGenerator::new(200, 63).expect("in range");
        let id = g.next(T);
        assert_eq!((id.unix_ms(), id.node(), id.shard()), (T, 200, 63));
        assert!(id.0 < 1 << 63);
    }

    #[test]
    fn ids_strictly_increase_within_a_millisecond_and_past_the_sequence() {
        let mut g = IdGenerator::new(1, 2).expect("in range");
        let mut last = g.next(T);
        for _ in 0..2000 {
            let id = g.next(T);
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn a_clock_that_steps_back_never_repeats_an_id() {
        let mut g = IdGenerator::new(1, 2).expect("in range");
        let a = g.next(T);
        let b = g.next(T - 5_000);
        assert!(b > a);
    }

    #[test]
    fn ids_from_different_shards_differ_in_the_same_millisecond() {
        let mut a = IdGenerator::new(1, 1).expect("in range");
        let mut b = IdGenerator::new(1, 2).expect("in range");
        assert_ne!(a.next(T), b.next(T));
    }

    #[test]
    fn later_time_sorts_later_whatever_the_node() {
        let mut a = IdGenerator::new(MAX_NODE, MAX_SHARD).expect("in range");
        let mut b = IdGenerator::new(0, 0).expect("in range");
        assert!(a.next(T) < b.next(T + 1));
        assert!(Id::min_at(T + 1) > a.next(T));
    }

    #[test]
    fn out_of_range_node_is_refused() {
        assert!(IdGenerator::new(MAX_NODE + 1, 0).is_err());
    }
}

//! Kafka's default partitioner, shared by every backend so an ordering key lands on the same
//! partition index on Redis Streams, on the memory bus and on Kafka (the Redis -> Kafka
//! migration relies on it).
//!
//! The partition of a key is `murmur2(key bytes) & 0x7fffffff` modulo the partition count,
//! exactly what the Java client's `BuiltInPartitioner.partitionForKey` and librdkafka's
//! `murmur2_random` partitioner compute. The key of an [`Event`] is its ordering key
//! (`partitionkey`, else `subject`); an event with neither is placed by its `id`.
//!
//! ```
//! use windlass_eventbus::partition::{PartitionCount, murmur2, partition_for_key};
//!
//! assert_eq!(murmur2(b"foobar"), -790332482); // the Java client's value
//! let p = PartitionCount::new(16)?;
//! assert_eq!(partition_for_key(b"inv_42", p), partition_for_key(b"inv_42", p));
//! # Ok::<(), windlass_eventbus::Error>(())
//! ```

use std::fmt;

use crate::error::{Error, Result};
use crate::event::Event;

/// The largest partition count a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// A validated partition count: 1 to [`MAX_PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionCount(u32);

impl PartitionCount {
    /// One partition: every event of the topic in one total order.
    pub const ONE: PartitionCount = PartitionCount(1);

    /// Checks `n` (1 to [`MAX_PARTITIONS`]).
    pub fn new(n: u32) -> Result<Self> {
        if n == 0 || n > MAX_PARTITIONS {
            return Err(Error::Config(format!(
                "partition count {n} is out of range: a topic has 1 to {MAX_PARTITIONS} partitions"
            )));
        }
        Ok(Self(n))
    }

    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PartitionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// MurmurHash2 (32 bits, seed `0x9747b28c`) as Kafka's Java client computes it
/// (`org.apache.kafka.common.utils.Utils.murmur2`), returned as the Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // The Java switch falls through from the highest remaining byte down to the first.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: the hash with its sign bit cleared (not `abs`, which maps
/// `i32::MIN` to itself).
pub fn to_positive(hash: i32) -> u32 {
    (hash as u32) & 0x7fff_ffff
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner places a record
/// with that key.
pub fn partition_for_key(key: &[u8], partitions: PartitionCount) -> u32 {
    to_positive(murmur2(key)) % partitions.get()
}

/// The partition of an event: by its ordering key (`partitionkey`, else `subject`), else by its
/// `id` (so events without a key still spread over the partitions, each always to the same one).
pub fn partition_for_event(event: &Event, partitions: PartitionCount) -> u32 {
    if partitions.get() == 1 {
        return 0;
    }
    let key = event.ordering_key().unwrap_or(event.id());
    partition_for_key(key.as_bytes(), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of the Java client's own test (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// librdkafka's unit test of its Java-compatible partitioner (`rdmurmur2.c`): the positive
    /// hashes of three keys.
    #[test]
    fn positive_hash_matches_librdkafka() {
        let cases: &[(&[u8], u32)] = &[
            (b"kafka", 1348980580),
            (b"amqp", 767747138),
            (b"giberish123456789", 257239820),
        ];
        for (key, expected) in cases {
            assert_eq!(to_positive(murmur2(key)), *expected);
        }
    }

    #[test]
    fn to_positive_clears_the_sign_bit_only() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn partitions_follow_the_positive_hash() {
        let p = PartitionCount::new(12).unwrap();
        // foobar: -790332482 -> & 0x7fffffff = 1357151166 -> % 12 = 6
        assert_eq!(partition_for_key(b"foobar", p), 1357151166 % 12);
        assert_eq!(partition_for_key(b"foobar", PartitionCount::ONE), 0);
    }

    #[test]
    fn an_event_is_placed_by_its_ordering_key_else_its_id() {
        let p = PartitionCount::new(16).unwrap();
        let keyed = Event::builder("/t", "t")
            .partition_key("inv_42")
            .subject("other")
            .build()
            .unwrap();
        assert_eq!(
            partition_for_event(&keyed, p),
            partition_for_key(b"inv_42", p)
        );
        let by_subject = Event::builder("/t", "t").subject("inv_42").build().unwrap();
        assert_eq!(
            partition_for_event(&by_subject, p),
            partition_for_key(b"inv_42", p)
        );
        let bare = Event::builder("/t", "t").build().unwrap();
        assert_eq!(
            partition_for_event(&bare, p),
            partition_for_key(bare.id().as_bytes(), p)
        );
    }

    #[test]
    fn partition_counts_are_validated() {
        assert!(PartitionCount::new(0).is_err());
        assert!(PartitionCount::new(MAX_PARTITIONS + 1).is_err());
        assert_eq!(PartitionCount::new(MAX_PARTITIONS).unwrap().get(), 1024);
    }
}

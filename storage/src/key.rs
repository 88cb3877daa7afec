//! Order-preserving key encoding: tuples of typed parts to bytes whose bytewise order is
//! the tuple order. Both backends compare keys bytewise, so scans come back in key order
//! everywhere.
//!
//! Encoding of each part (as in FoundationDB's tuple layer, simplified):
//! - `u64`: 8 bytes big-endian;
//! - `i64`: 8 bytes big-endian with the sign bit flipped (negatives sort first);
//! - strings and byte strings: the bytes with `0x00` escaped as `0x00 0xFF`, then a
//!   `0x00 0x00` terminator, so that a prefix sorts before its extensions and parts
//!   never run into each other.

use bytes::{BufMut, Bytes, BytesMut};

/// Builds an encoded key part by part.
#[derive(Debug, Default, Clone)]
pub struct KeyBuilder {
    buf: BytesMut,
}

impl KeyBuilder {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an unsigned integer (ids, timestamps).
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.put_u64(v);
        self
    }

    /// Appends a signed integer.
    pub fn i64(mut self, v: i64) -> Self {
        self.buf.put_u64((v as u64) ^ (1 << 63));
        self
    }

    /// Appends a string.
    pub fn str(self, v: &str) -> Self {
        self.bytes(v.as_bytes())
    }

    /// Appends a byte string.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        for &b in v {
            if b == 0 {
                self.buf.put_slice(&[0, 0xFF]);
            } else {
                self.buf.put_u8(b);
            }
        }
        self.buf.put_slice(&[0, 0]);
        self
    }

    /// The encoded key.
    pub fn build(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads parts back from an encoded key, in the order they were written.
#[derive(Debug, Clone)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// A reader over an encoded key.
    pub fn new(key: &'a [u8]) -> Self {
        Self { rest: key }
    }

    /// Reads a `u64` part.
    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_be_bytes(*head))
    }

    /// Reads an `i64` part.
    pub fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| (v ^ (1 << 63)) as i64)
    }

    /// Reads a byte-string part.
    pub fn bytes(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match *self.rest.get(i)? {
                0 => match *self.rest.get(i + 1)? {
                    0 => {
                        self.rest = &self.rest[i + 2..];
                        return Some(out);
                    }
                    0xFF => {
                        out.push(0);
                        i += 2;
                    }
                    _ => return None,
                },
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }

    /// Reads a string part.
    pub fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }

    /// Whether every part has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Part {
        U(u64),
        I(i64),
        S(Vec<u8>),
    }

    fn encode(parts: &[Part]) -> Bytes {
        parts
            .iter()
            .fold(KeyBuilder::new(), |k, p| match p {
                Part::U(v) => k.u64(*v),
                Part::I(v) => k.i64(*v),
                Part::S(v) => k.bytes(v),
            })
            .build()
    }

    fn part_strategy(kind: u8) -> BoxedStrategy<Part> {
        match kind % 3 {
            0 => any::<u64>().prop_map(Part::U).boxed(),
            1 => any::<i64>().prop_map(Part::I).boxed(),
            _ => proptest::collection::vec(prop_oneof![Just(0u8), Just(0xFF), any::<u8>()], 0..6)
                .prop_map(Part::S)
                .boxed(),
        }
    }

    fn tuple_strategy(shape: Vec<u8>) -> BoxedStrategy<Vec<Part>> {
        shape
            .into_iter()
            .map(part_strategy)
            .collect::<Vec<_>>()
            .boxed()
    }

    proptest! {
        #[test]
        fn byte_order_is_tuple_order(
            (a, b) in proptest::collection::vec(any::<u8>(), 1..4)
                .prop_flat_map(|shape| (tuple_strategy(shape.clone()), tuple_strategy(shape)))
        ) {
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), a.cmp(&b));
        }

        #[test]
        fn parts_read_back(parts in proptest::collection::vec(any::<u8>(), 0..4).prop_flat_map(tuple_strategy)) {
            let key = encode(&parts);
            let mut r = KeyReader::new(&key);
            for p in &parts {
                let got = match p {
                    Part::U(_) => r.u64().map(Part::U),
                    Part::I(_) => r.i64().map(Part::I),
                    Part::S(_) => r.bytes().map(Part::S),
                };
                prop_assert_eq!(got.as_ref(), Some(p));
            }
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn a_string_sorts_before_its_extensions() {
        let a = KeyBuilder::new().str("ab").u64(u64::MAX).build();
        let b = KeyBuilder::new().str("abc").u64(0).build();
        assert!(a < b);
    }
}

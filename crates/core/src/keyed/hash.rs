//! A fast hasher for the map of keys: keys are short (host names, tenant
//! ids), and SipHash costs more than the rest of a lookup.
//!
//! Seeded per map from the standard library's random keys, so which keys
//! collide cannot be chosen from outside; the map is bounded besides.

use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyHash`]ers with one random seed per map.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyHasher {
    seed: u64,
}

impl Default for KeyHasher {
    fn default() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x243f_6a88_85a3_08d3);
        Self { seed: h.finish() }
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = KeyHash;

    fn build_hasher(&self) -> KeyHash {
        KeyHash(self.seed)
    }
}

/// A multiply-and-fold hash over 8-byte words (the folded multiply of
/// foldhash and wyhash), ample for short keys.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyHash(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for KeyHash {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = fold(self.0 ^ u64::from_le_bytes(w), K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = fold(self.0 ^ u64::from_le_bytes(w), K ^ rest.len() as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = fold(self.0 ^ u64::from(i), K);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0 = fold(self.0 ^ i as u64, K);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.0, K ^ 0x0123_4567_89ab_cdef)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_alike_and_near_keys_apart() {
        let b = KeyHasher::default();
        let h = |s: &str| b.hash_one(s);
        assert_eq!(h("api.github.com"), h("api.github.com"));
        let names = [
            "a",
            "b",
            "ab",
            "ba",
            "a.example.com",
            "b.example.com",
            "api.github.com",
            "api.github.co",
            "api.github.comm",
            "127.0.0.1:8080",
            "127.0.0.1:8081",
            "",
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            assert!(seen.insert(h(n)), "{n} collides");
        }
    }
}

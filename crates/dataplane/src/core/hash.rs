//! The hash of the data plane's tables: a multiply-rotate fold over 64-bit
//! words, finished with SplitMix64. Several times cheaper than the standard
//! library's SipHash on the 4- to 16-byte keys looked up per packet. The
//! route tables use it unseeded (their keys come from the control plane and
//! gossip, not from packets); the conntrack seeds it per table, because its
//! keys are chosen by local tasks.

use std::hash::{BuildHasher, Hasher};

/// Builds [`FastHasher`]s from a seed (zero by default).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastHash(pub(crate) u64);

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

#[derive(Debug)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        splitmix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_u16(&mut self, word: u16) {
        self.write_u64(u64::from(word));
    }

    fn write_u8(&mut self, word: u8) {
        self.write_u64(u64::from(word));
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

/// SplitMix64's finaliser: a stable, well-mixed 64-bit hash of `x`.
pub(crate) const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    #[test]
    fn neighbouring_addresses_spread_over_buckets() {
        // hashbrown takes bucket bits from the bottom and tag bits from the
        // top: both must vary across a /22 of addresses.
        let hashes: Vec<u64> =
            (0..1024u32).map(|i| FastHash::default().hash_one(Ipv4Addr::from(0x0a00_0000 + i))).collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        // A random function fills about 1 - 1/e of them: 647.
        assert!(low.len() > 600, "{} distinct low buckets", low.len());
        assert!(top.len() > 120, "{} distinct tags of 128", top.len());
        let seeded = |seed| FastHash(seed).hash_one(Ipv4Addr::new(10, 0, 0, 1));
        assert_ne!(seeded(1), seeded(2));
    }
}

//! The comparison workload shared by the benchmarks: the i-th key is 24
//! bytes and the i-th value 150 bytes that look random (SplitMix64), so
//! every benchmark (and the comparison peers) measure the same data.
#![allow(dead_code)]

/// Value length of the workload.
pub const VALUE: usize = 150;

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The i-th key: 24 bytes that look random.
pub fn key(i: u64) -> [u8; 24] {
    let mut r = Rng(i);
    let mut k = [0u8; 24];
    for c in k.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    k
}

/// The i-th value: 150 bytes that look random.
pub fn value(i: u64) -> [u8; VALUE] {
    let mut r = Rng(i ^ 0xabcdef);
    let mut v = [0u8; VALUE];
    for c in v.chunks_mut(8) {
        let x = r.next().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
    v
}

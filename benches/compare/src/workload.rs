//! The data every peer sees: keys and values derived from their index by a
//! deterministic generator, so no peer pays for storing the data set in the
//! benchmark process and every peer gets exactly the same bytes.

pub const KEY_LEN: usize = 24;
pub const VALUE_LEN: usize = 150;

pub type Key = [u8; KEY_LEN];
pub type Val = [u8; VALUE_LEN];

/// splitmix64: fast, and good enough to make the keys look random.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for a benchmark.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The i-th key: 24 bytes that look random. Keys `0..n` are the stored
/// ones; any index `>= n` names a key that is absent.
#[inline]
pub fn key(i: u64) -> Key {
    let mut r = Rng(i);
    let mut k = [0u8; KEY_LEN];
    for c in k.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    k
}

/// Version `ver` of the value of key `i`: 150 random (incompressible) bytes.
#[inline]
pub fn value(i: u64, ver: u64) -> Val {
    let mut r = Rng(i ^ 0xabcdef ^ ver.rotate_left(40));
    let mut v = [0u8; VALUE_LEN];
    for c in v.chunks_mut(8) {
        let x = r.next().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
    v
}

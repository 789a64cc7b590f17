//! Regenerate the committed fuzz inputs:
//!
//! * `fuzz/base/*.img`: the base images that `open_bytes` mutates (small
//!   stores written by [`mapkv_fuzz::build_base`]; each store has a random
//!   hash seed and CRC salt, so they are committed rather than rebuilt at
//!   fuzz time, which keeps every reproducer reproducible);
//! * `fuzz/corpus/open_bytes/*`: raw-mode seeds (a selector byte 0, then a
//!   whole store, a truncated one, a foreign file) and one seed per
//!   (mode, base image, boot) with a few mutation bytes;
//! * `fuzz/corpus/ops/*`: a few byte strings of different lengths.
//!
//! Run from `fuzz/`: `cargo +nightly run --example gen_corpus`. Rewriting
//! the base images invalidates saved reproducers of modes 1 to 3.

use std::fs;
use std::path::Path;

use mapkv_fuzz::{build_base, layout, scratch_dir, BASES};

/// SplitMix64, so the byte strings are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
    println!("{:>8} {}", bytes.len(), dir.join(name).display());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let keep_base = std::env::args().any(|a| a == "--keep-base");
    let base_dir = root.join("base");
    let ob = root.join("corpus/open_bytes");
    let ops = root.join("corpus/ops");
    for d in [&base_dir, &ob, &ops] {
        fs::create_dir_all(d).unwrap();
    }
    let scratch = scratch_dir();
    let mut images = Vec::new();
    for name in BASES {
        let path = base_dir.join(format!("{name}.img"));
        let bytes = if keep_base && path.exists() {
            fs::read(&path).unwrap()
        } else {
            let b = build_base(name, scratch.path());
            write(&base_dir, &format!("{name}.img"), &b);
            b
        };
        images.push(bytes);
    }

    let mut rng = Rng(0x6d61_706b_7666_757a);
    // Raw mode (selector 0): the rest of the input is the file.
    let raw = |b: &[u8]| [&[0u8][..], b].concat();
    write(&ob, "raw-clean-small", &raw(&images[0]));
    write(&ob, "raw-crash-small", &raw(&images[2]));
    // Cut inside the control block.
    write(
        &ob,
        "raw-truncated-header",
        &raw(&images[0][..layout::CONTROL + 808]),
    );
    write(&ob, "raw-truncated-log", &raw(&images[2][..20000]));
    write(&ob, "raw-foreign", &raw(&b"not a store\n".repeat(200)));
    // Mutation modes 1 to 3, every base image, same boot and reboot.
    for mode in 1u8..=3 {
        for base in 0u8..4 {
            for reboot in [0u8, 0x20] {
                let sel = mode | (base << 2) | reboot;
                let mut input = vec![sel];
                input.extend(rng.bytes(if mode == 1 && reboot == 0 { 0 } else { 24 }));
                write(
                    &ob,
                    &format!("mut-m{mode}-b{base}-r{}", reboot >> 5),
                    &input,
                );
            }
        }
    }
    for (i, n) in [16usize, 48, 96, 200, 400, 800, 1600, 3000]
        .into_iter()
        .enumerate()
    {
        write(&ops, &format!("seed-{i}"), &rng.bytes(n));
    }
}

//! The writers' workload, a pure function of (seed, commit id), so the
//! parent regenerates every commit a writer made from its acknowledgements
//! alone, and the oracle that checks a store after a power cut.
//!
//! Every value is a function of (key, commit id, length), so a value read
//! back is compared byte for byte with the one that commit wrote: a value
//! that was never written cannot match.

use crate::Rng;

/// Keys are `k0000` .. `k0255`: a small space, so keys are overwritten and
/// removed often.
pub const KEYS: u64 = 256;

/// The bytes of key `k`.
pub fn key(k: u64) -> Vec<u8> {
    format!("k{k:04}").into_bytes()
}

/// The key number of `bytes`, if it is one of ours.
pub fn parse_key(bytes: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let n: u64 = s.strip_prefix('k')?.parse().ok()?;
    (n < KEYS && key(n) == bytes).then_some(n)
}

/// The value commit `id` writes to key `k`, `len` bytes long.
pub fn value(k: u64, id: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(k.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ id.rotate_left(17));
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(format!("{k}:{id}:").as_bytes());
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// One commit: single insert or remove, or a batch (later writes to the
/// same key win).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Its id (ids of one store's commits grow by one).
    pub id: u64,
    /// `(key, value length)`, `None` for a remove.
    pub writes: Vec<(u64, Option<usize>)>,
    /// Committed as a batch (else a single `insert` / `remove`).
    pub batch: bool,
    /// The writer calls `flush()` after it.
    pub flush_after: bool,
}

/// Commit `id` of the workload `seed`.
pub fn commit(seed: u64, id: u64) -> Commit {
    let mut rng = Rng::new(seed ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let len = |rng: &mut Rng| {
        if rng.chance(3) {
            5 * 1024 + rng.below(35 * 1024) as usize
        } else {
            rng.below(301) as usize
        }
    };
    let r = rng.below(100);
    let (writes, batch) = if r < 55 {
        let k = rng.below(KEYS);
        (vec![(k, Some(len(&mut rng)))], false)
    } else if r < 70 {
        (vec![(rng.below(KEYS), None)], false)
    } else {
        let n = 2 + rng.below(15);
        let w = (0..n)
            .map(|_| {
                let k = rng.below(KEYS);
                if rng.chance(25) {
                    (k, None)
                } else {
                    (k, Some(len(&mut rng)))
                }
            })
            .collect();
        (w, true)
    };
    Commit {
        id,
        writes,
        batch,
        flush_after: rng.chance(5),
    }
}

/// What each key holds: `(commit id, value length)`, or nothing.
pub type State = Vec<Option<(u64, usize)>>;

/// The empty store.
pub fn empty() -> State {
    vec![None; KEYS as usize]
}

/// What a writer acknowledged, from its report lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    /// Commit ids whose call returned `Ok`, in order.
    pub acked: Vec<u64>,
    /// Everything up to and including this commit id is durable: acked
    /// under `Sync`, or followed by a `flush()` that returned.
    pub durable_through: Option<u64>,
    /// The writer reported an error (after which it stopped).
    pub error: Option<String>,
    /// The writer finished opening the store.
    pub opened: bool,
}

impl Acks {
    /// Take one report line: `@O kind`, `A id`, `S id` (acked under
    /// `Sync`), `F id` (a flush returned after commit `id`), `@E message`.
    /// Other lines are ignored; a line that starts like a report but does
    /// not parse is an error.
    pub fn take(&mut self, line: &str) -> Result<(), String> {
        let id = |s: &str| -> Result<u64, String> {
            s.trim()
                .parse()
                .map_err(|_| format!("bad report line {line:?}"))
        };
        if let Some(rest) = line.strip_prefix("A ") {
            self.acked.push(id(rest)?);
        } else if let Some(rest) = line.strip_prefix("S ") {
            let i = id(rest)?;
            self.acked.push(i);
            self.durable_through = Some(i);
        } else if let Some(rest) = line.strip_prefix("F ") {
            let i = id(rest)?;
            if self.acked.last() != Some(&i) {
                return Err(format!(
                    "flush after {i} but the last ack was {:?}",
                    self.acked.last()
                ));
            }
            self.durable_through = Some(i);
        } else if line.starts_with("@O") {
            self.opened = true;
        } else if let Some(rest) = line.strip_prefix("@E ") {
            self.error = Some(rest.to_string());
        }
        Ok(())
    }
}

/// What [`find_prefix`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// How many of the candidate commits the store holds (a prefix).
    pub applied: usize,
    /// The state it holds.
    pub state: State,
}

/// Check that `found` (what the store holds, per key) is the state after
/// applying a prefix of `ids` (the commits the writer may have made, in
/// order) to `base`, at least `min` of them. Values must match byte for
/// byte. Returns the longest such prefix.
pub fn find_prefix(
    seed: u64,
    base: &State,
    ids: &[u64],
    min: usize,
    found: &[Option<Vec<u8>>],
) -> Result<Verdict, String> {
    assert_eq!(found.len(), KEYS as usize);
    let holds = |k: usize, want: Option<(u64, usize)>| match (&found[k], want) {
        (None, None) => true,
        (Some(v), Some((id, len))) => v.len() == len && *v == value(k as u64, id, len),
        _ => false,
    };
    let mut state = base.clone();
    let mut ok: Vec<bool> = (0..KEYS as usize).map(|k| holds(k, state[k])).collect();
    let mut bad = ok.iter().filter(|&&b| !b).count();
    let mut best = None;
    for j in 0..=ids.len() {
        if bad == 0 && j >= min {
            best = Some((j, state.clone()));
        }
        if j == ids.len() {
            break;
        }
        for (k, w) in commit(seed, ids[j]).writes {
            let k = k as usize;
            state[k] = w.map(|len| (ids[j], len));
            let now = holds(k, state[k]);
            if now != ok[k] {
                if now {
                    bad -= 1;
                } else {
                    bad += 1;
                }
                ok[k] = now;
            }
        }
    }
    if let Some((applied, state)) = best {
        return Ok(Verdict { applied, state });
    }
    // Say what is wrong against the nearest candidate: the minimum.
    let mut want = base.clone();
    for &id in &ids[..min.min(ids.len())] {
        for (k, w) in commit(seed, id).writes {
            want[k as usize] = w.map(|len| (id, len));
        }
    }
    let mut diffs = Vec::new();
    for k in 0..KEYS as usize {
        if !holds(k, want[k]) {
            let got = match &found[k] {
                None => "absent".to_string(),
                Some(v) => {
                    let head = String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned();
                    format!("{} bytes starting {head:?}", v.len())
                }
            };
            diffs.push(format!("k{k:04}: want {:?}, found {got}", want[k]));
            if diffs.len() == 8 {
                break;
            }
        }
    }
    Err(format!(
        "the store holds no prefix of commits {:?}..{:?} (at least {min} of {}) over the last \
         checked state; against the first {min}: {}",
        ids.first(),
        ids.last(),
        ids.len(),
        diffs.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_and_values_are_deterministic() {
        assert_eq!(commit(5, 77), commit(5, 77));
        assert_ne!(commit(5, 77), commit(5, 78));
        assert_eq!(value(3, 9, 100), value(3, 9, 100));
        assert_ne!(value(3, 9, 100), value(3, 10, 100));
        assert_eq!(value(3, 9, 2).len(), 2);
        assert_eq!(parse_key(&key(17)), Some(17));
        assert_eq!(parse_key(b"k17"), None);
    }

    fn apply(seed: u64, base: &State, ids: &[u64]) -> Vec<Option<Vec<u8>>> {
        let mut s = base.clone();
        for &id in ids {
            for (k, w) in commit(seed, id).writes {
                s[k as usize] = w.map(|l| (id, l));
            }
        }
        s.iter()
            .enumerate()
            .map(|(k, e)| e.map(|(id, l)| value(k as u64, id, l)))
            .collect()
    }

    #[test]
    fn finds_the_prefix_and_rejects_what_is_not_one() {
        let seed = 11;
        let ids: Vec<u64> = (100..140).collect();
        let base = empty();
        let found = apply(seed, &base, &ids[..25]);
        let v = find_prefix(seed, &base, &ids, 10, &found).unwrap();
        assert!(v.applied >= 25 && v.applied <= 40, "{}", v.applied);
        // Requiring more than the store holds fails.
        let lost = find_prefix(seed, &base, &ids, 35, &found);
        if apply(seed, &base, &ids[..35]) != found {
            assert!(lost.is_err());
        }
        // A value with one byte changed is never accepted.
        let mut bent = found.clone();
        let k = bent
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
            .unwrap();
        bent[k].as_mut().unwrap()[0] ^= 1;
        assert!(find_prefix(seed, &base, &ids, 0, &bent).is_err());
        // Nor is half of a batch.
        let b = ids.iter().position(|&id| {
            let c = commit(seed, id);
            c.batch
                && c.writes
                    .iter()
                    .map(|w| w.0)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    > 1
        });
        if let Some(b) = b {
            let mut half = apply(seed, &base, &ids[..b]);
            let c = commit(seed, ids[b]);
            let (k, w) = c.writes[0];
            half[k as usize] = w.map(|l| value(k, ids[b], l));
            if half != apply(seed, &base, &ids[..b]) && half != apply(seed, &base, &ids[..=b]) {
                let r = find_prefix(seed, &base, &ids[..=b], 0, &half);
                assert!(r.is_err(), "half of batch {b} accepted: {r:?}");
            }
        }
    }

    #[test]
    fn acks_parse() {
        let mut a = Acks::default();
        for l in ["@S", "@O Clean", "A 5", "A 6", "F 6", "S 7", "junk"] {
            a.take(l).unwrap();
        }
        assert!(a.opened);
        assert_eq!(a.acked, vec![5, 6, 7]);
        assert_eq!(a.durable_through, Some(7));
        assert!(a.take("A x").is_err());
        assert!(a.take("F 3").is_err());
    }
}

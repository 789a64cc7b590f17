//! Cross-process primitives that live in the mapping: the writer lock and
//! the change-notification futex.
//!
//! # The writer lock
//!
//! One 64-bit word, the control block's `writer_lock` (file offset
//! [`WRITER_LOCK_OFFSET`](super::WRITER_LOCK_OFFSET)), taken and released
//! with one compare-and-swap each (no system call when uncontended), plus
//! the kernel's word on whether its holder is alive:
//!
//! ```text
//! bits 0..12   holder: registration slot id, 1..=4095; 0 = free
//! bit  12      waiting: someone sleeps on the word (the releaser wakes them)
//! bit  13      shared: the holder's registration is shared (a read lock;
//!              see file::register), so any lock on its slot means alive
//! bits 14..64  sequence: bumped by every acquisition (so a compare-and-swap
//!              against a word read earlier cannot succeed after the lock
//!              changed hands in between)
//! ```
//!
//! Every read-write handle claims a *registration slot* when it first
//! writes: an OFD `fcntl` lock on one byte of the store file far past its
//! end (see [`file::register`]), held for as long as
//! the handle's file is open. The kernel drops that lock when the holder
//! dies, in any PID namespace, and keeps it while the holder is stopped or
//! paused. A waiter sleeps on the word with `FUTEX_WAIT` and a timeout;
//! when the word has not changed over a nap, it asks the kernel
//! (`F_OFD_GETLK`) whether anyone still holds the holder's slot. Nobody:
//! the holder died, and the waiter takes the lock over with a
//! compare-and-swap on the exact word it saw ([`Acquired::OwnerDied`]).
//! After `Options::lock_timeout` the waiter gives up with an error instead.
//!
//! The file holds no pointer, thread id or other process-private value:
//! whatever is written into the word, the worst outcome is a wait that
//! times out or a takeover followed by the repair every dead holder gets,
//! never a write to memory chosen by the file.
//!
//! # The futex
//!
//! A 32-bit counter in the control block (`notify`, reached through
//! `Control::notify_word`) that every commit bumps; waiters
//! sleep on it with `FUTEX_WAIT` (not the private variant: the word is in a
//! shared file mapping, so the kernel keys it by inode and offset, and
//! processes with different mappings of the file meet on the same futex).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::file;
use super::mapping::{Arena, MapMode, OutOfBounds};

const HOLDER: u64 = (1 << 12) - 1;
const WAITING: u64 = 1 << 12;
const SHARED: u64 = 1 << 13;
const SEQ_SHIFT: u32 = 14;

const _: () = assert!(file::MAX_REGISTRATION as u64 == HOLDER);

/// How the writer lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The previous holder released it.
    Normal,
    /// The kernel says the previous holder is gone (it died holding the
    /// lock); the caller must check the store for a half-made change (the
    /// control block's writer word says).
    OwnerDied,
}

/// Why the writer lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// `Options::lock_timeout` passed while a live holder kept it.
    TimedOut,
    Io(io::Error),
}

/// A read-write handle's registration: the open file description whose
/// OFD lock on slot `id` says the handle is open. Made by the process that
/// uses it: after a `fork` the child registers anew through a description
/// of its own (sharing the parent's would make the two one holder).
#[derive(Debug)]
pub(crate) struct Registration {
    slot: file::Slot,
    /// The fork generation of the process that made it (see `forks`).
    made_in: u64,
    /// A description of our own, when the arena's is not (after fork).
    own: Option<File>,
}

impl Registration {
    /// Register through `arena`'s file (or, in a forked child, through a
    /// new description of the same file).
    pub(crate) fn new(arena: &Arena) -> io::Result<Registration> {
        let made_in = forks();
        // The arena's description is ours unless we are a forked child of
        // the process that opened it; then open our own.
        let own = if arena.opener_pid() == std::process::id() {
            None
        } else {
            Some(file::reopen(arena.file(), arena.path())?)
        };
        let avoid = arena
            .lock_word()
            .map_or(0, |w| holder_of(w.load(Ordering::Relaxed)).id);
        let slot = file::register(own.as_ref().unwrap_or(arena.file()), avoid)?;
        Ok(Registration { slot, made_in, own })
    }

    /// Whether this registration belongs to the calling process (false in
    /// a child forked after it was made).
    #[inline]
    pub(crate) fn is_ours(&self) -> bool {
        // Not getpid(): that is a system call (glibc stopped caching it),
        // and this runs on every commit.
        self.made_in == forks()
    }

    fn file<'a>(&'a self, arena: &'a Arena) -> &'a File {
        self.own.as_ref().unwrap_or(arena.file())
    }

    /// The lock word after `w` is taken by this registration: the next
    /// sequence, not waiting.
    fn next(&self, w: u64) -> u64 {
        let shared = if self.slot.exclusive { 0 } else { SHARED };
        ((w >> SEQ_SHIFT).wrapping_add(1) << SEQ_SHIFT) | shared | self.slot.id as u64
    }
}

/// Move the lock word from `w` (as read) to taken by `reg`; `None` if it
/// changed meanwhile.
#[inline]
fn take(word: &AtomicU64, w: u64, reg: &Registration) -> Option<Held> {
    let new = reg.next(w);
    word.compare_exchange(w, new, Ordering::Acquire, Ordering::Relaxed)
        .ok()
        .map(|_| Held(new))
}

/// The registration a lock word names as its holder.
fn holder_of(w: u64) -> file::Slot {
    file::Slot {
        id: (w & HOLDER) as u16,
        exclusive: w & SHARED == 0,
    }
}

/// How many times this process's ancestry forked since mapkv first looked:
/// a child's count differs from its parent's (a `pthread_atfork` child
/// handler bumps it), so a registration knows the process that made it
/// without a system call.
pub(crate) fn forks() -> u64 {
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static HOOKED: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    HOOKED.call_once(|| {
        // SAFETY: registers a handler that only does an atomic add (which
        // is async-signal-safe, as a handler run in the child of a fork
        // must be); no prepare or parent handler.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
    FORKS.load(Ordering::Relaxed)
}

/// The lock word as it was when we took it: proof of holding, and what
/// the release compares against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held(u64);

impl Arena {
    fn lock_word(&self) -> io::Result<&AtomicU64> {
        if self.mode() != MapMode::Shared {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the writer lock needs a shared read-write mapping",
            ));
        }
        self.control_block()
            .map(|c| &c.writer_lock)
            .map_err(|OutOfBounds| io::Error::other("writer lock outside the file"))
    }

    /// Set the writer lock free (keeping its sequence). Only the opener
    /// that is alone calls this: nobody else can hold it.
    pub(crate) fn init_writer_lock(&self) -> io::Result<()> {
        let w = self.lock_word()?;
        let seq = w.load(Ordering::Acquire) >> SEQ_SHIFT;
        w.store(seq << SEQ_SHIFT, Ordering::Release);
        Ok(())
    }

    /// Take the writer lock for registration `reg`, waiting `timeout` at
    /// most. The caller must release it with
    /// [`unlock_writer`](Arena::unlock_writer).
    #[inline]
    pub(crate) fn lock_writer(
        &self,
        reg: &Registration,
        timeout: Duration,
    ) -> Result<(Held, Acquired), LockError> {
        let word = self.lock_word().map_err(LockError::Io)?;
        let w = word.load(Ordering::Relaxed);
        if w & HOLDER == 0 {
            if let Some(held) = take(word, w, reg) {
                return Ok((held, Acquired::Normal));
            }
        }
        self.lock_writer_slow(word, reg, timeout)
    }

    #[cold]
    fn lock_writer_slow(
        &self,
        word: &AtomicU64,
        reg: &Registration,
        timeout: Duration,
    ) -> Result<(Held, Acquired), LockError> {
        let deadline = Instant::now() + timeout;
        const SPINS: u32 = 100;
        const FIRST_NAP: Duration = Duration::from_millis(1);
        const LONGEST_NAP: Duration = Duration::from_millis(50);
        let mut spins = 0;
        let mut nap = FIRST_NAP;
        // The held word we last napped on: if it is unchanged after a nap,
        // ask the kernel whether its holder is alive.
        let mut napped_on = None;
        loop {
            let w = word.load(Ordering::Relaxed);
            if w & HOLDER == 0 {
                if let Some(held) = take(word, w, reg) {
                    return Ok((held, Acquired::Normal));
                }
                continue;
            }
            if spins < SPINS {
                spins += 1;
                if spins < SPINS / 2 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            if napped_on == Some(w & !WAITING) {
                let alive =
                    file::registration_held(reg.file(self), holder_of(w)).map_err(LockError::Io)?;
                if !alive {
                    // Dead: take over, unless the word moved meanwhile.
                    if let Some(held) = take(word, w, reg) {
                        return Ok((held, Acquired::OwnerDied));
                    }
                    continue;
                }
            } else {
                napped_on = Some(w & !WAITING);
                nap = FIRST_NAP;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LockError::TimedOut);
            }
            if w & WAITING == 0
                && word
                    .compare_exchange(w, w | WAITING, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            futex_wait_low(word, (w | WAITING) as u32, nap.min(deadline - now));
            nap = (nap * 2).min(LONGEST_NAP);
        }
    }

    /// Release the writer lock taken as `held`. Fails, leaving the word
    /// alone, if the word no longer names this acquisition (something
    /// wrote into the file meanwhile).
    #[inline]
    pub(crate) fn unlock_writer(&self, held: Held) -> io::Result<()> {
        let word = self.lock_word()?;
        let mut w = word.load(Ordering::Relaxed);
        loop {
            if w & !WAITING != held.0 {
                return Err(io::Error::other(format!(
                    "the writer lock word changed while held (now {w:#x}, taken as {:#x})",
                    held.0
                )));
            }
            let free = held.0 & !(HOLDER | SHARED);
            match word.compare_exchange_weak(w, free, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        if w & WAITING != 0 {
            futex_wake_low(word);
        }
        Ok(())
    }

    /// Registration slot of the current holder of the writer lock (0: free).
    #[cfg(test)]
    pub(crate) fn writer_lock_holder(&self) -> u16 {
        self.lock_word()
            .map_or(0, |w| (w.load(Ordering::Relaxed) & HOLDER) as u16)
    }
}

/// The low half of a 64-bit word in the mapping, as the futex the kernel
/// sleeps on (little-endian: the low half is at the word's address).
fn low_half(word: &AtomicU64) -> *const u32 {
    word.as_ptr() as *const u32
}

#[cfg(target_endian = "big")]
compile_error!("the writer lock sleeps on the low half of its word: little-endian only");

/// Sleep while the low half of `word` equals `expected`, at most `timeout`.
fn futex_wait_low(word: &AtomicU64, expected: u32, timeout: Duration) {
    // SAFETY: the pointer is the 4-aligned low half of a live, 8-aligned
    // atomic word that outlives the call; the kernel only reads it,
    // atomically. See futex_wait_ptr.
    unsafe { futex_wait_ptr(low_half(word), expected, timeout) }
}

fn futex_wake_low(word: &AtomicU64) {
    // SAFETY: FUTEX_WAKE uses the address only as the key.
    unsafe { futex_wake_ptr(low_half(word)) }
}

/// # Safety
/// `word` must point to a live, 4-aligned 32-bit word for the duration of
/// the call.
unsafe fn futex_wait_ptr(word: *const u32, expected: u32, timeout: Duration) {
    #[cfg(target_os = "linux")]
    {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the caller vouches for `word`; FUTEX_WAIT only reads it,
        // atomically, in the kernel; `ts` is a local that outlives the call.
        // The shared (not PRIVATE) variant is required for a word in a
        // shared file mapping.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word,
                libc::FUTEX_WAIT,
                expected,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No futex: sleep a little and let the caller re-check.
        let _ = (word, expected);
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
    }
}

/// # Safety
/// As for [`futex_wait_ptr`] (the kernel only uses the address as a key).
unsafe fn futex_wake_ptr(word: *const u32) {
    #[cfg(target_os = "linux")]
    // SAFETY: FUTEX_WAKE does not access the word's memory beyond using its
    // address as the key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = word;
}

/// Sleep while `*word == expected`, at most `timeout`. Returns early on a
/// wake, a signal, or if the word already differs. Spurious returns are
/// fine: callers re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    // SAFETY: `word` is a live, aligned AtomicU32 (in the mapping or
    // anywhere else) borrowed for the call.
    unsafe { futex_wait_ptr(word.as_ptr(), expected, timeout) }
}

/// Wake every waiter sleeping on `word`, in any process.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: as in futex_wait.
    unsafe { futex_wake_ptr(word.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn arena() -> (tempfile::TempDir, Arena) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(65536).unwrap();
        let a = Arena::new(f, &p, 65536, 1 << 20, MapMode::Shared).unwrap();
        (dir, a)
    }

    /// A registration through a description of its own, as another
    /// process (or another handle) would have.
    fn other_handle(a: &Arena) -> Registration {
        let own = file::reopen(a.file(), a.path()).unwrap();
        let slot = file::register(&own, 0).unwrap();
        Registration {
            slot,
            made_in: forks(),
            own: Some(own),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn lock_excludes_handles() {
        let (_d, a) = arena();
        a.init_writer_lock().unwrap();
        let a = Arc::new(a);
        let counter = Arc::new(AtomicU32::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (a, c) = (a.clone(), counter.clone());
                std::thread::spawn(move || {
                    let reg = other_handle(&a);
                    for _ in 0..2000 {
                        let (held, how) = a.lock_writer(&reg, secs(60)).unwrap();
                        assert_eq!(how, Acquired::Normal);
                        // A non-atomic read-modify-write: lost updates show
                        // if the lock does not exclude.
                        let v = c.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        c.store(v + 1, Ordering::Relaxed);
                        a.unlock_writer(held).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
        assert_eq!(a.writer_lock_holder(), 0);
    }

    #[test]
    fn dead_holder_is_taken_over() {
        let (_d, a) = arena();
        a.init_writer_lock().unwrap();
        let dead = other_handle(&a);
        let (_held, _) = a.lock_writer(&dead, secs(1)).unwrap();
        assert_eq!(a.writer_lock_holder(), dead.slot.id);
        // Its description closes (the process died): the kernel drops its
        // registration lock, and a waiter takes over.
        drop(dead);
        let me = other_handle(&a);
        let (held, how) = a.lock_writer(&me, secs(10)).unwrap();
        assert_eq!(how, Acquired::OwnerDied);
        assert_eq!(a.writer_lock_holder(), me.slot.id);
        a.unlock_writer(held).unwrap();
        let (held, how) = a.lock_writer(&me, secs(1)).unwrap();
        assert_eq!(how, Acquired::Normal);
        a.unlock_writer(held).unwrap();
    }

    #[test]
    fn live_holder_is_waited_for_then_times_out() {
        let (_d, a) = arena();
        a.init_writer_lock().unwrap();
        let holder = other_handle(&a);
        let (held, _) = a.lock_writer(&holder, secs(1)).unwrap();
        let me = other_handle(&a);
        let t = Instant::now();
        assert!(matches!(
            a.lock_writer(&me, Duration::from_millis(200)),
            Err(LockError::TimedOut)
        ));
        assert!(t.elapsed() >= Duration::from_millis(200));
        // Still the holder's: a live holder is never taken over.
        assert_eq!(a.writer_lock_holder(), holder.slot.id);
        // A release wakes a waiter.
        let a = Arc::new(a);
        let a2 = a.clone();
        let waiter = std::thread::spawn(move || {
            let (h, how) = a2.lock_writer(&me, secs(30)).unwrap();
            a2.unlock_writer(h).unwrap();
            how
        });
        std::thread::sleep(Duration::from_millis(50));
        a.unlock_writer(held).unwrap();
        assert_eq!(waiter.join().unwrap(), Acquired::Normal);
    }

    #[test]
    fn hostile_words_never_crash_and_never_hang() {
        let (_d, a) = arena();
        let me = other_handle(&a);
        let word = a.lock_word().unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let hostile = match i % 4 {
                0 => u64::MAX,
                1 => rng,
                2 => me.slot.id as u64 | (rng & !HOLDER), // names our own slot
                _ => rng & !HOLDER,                       // free, odd sequence
            };
            word.store(hostile, Ordering::SeqCst);
            // Nobody else holds any slot: every named holder is dead.
            let (held, _) = a.lock_writer(&me, secs(10)).unwrap();
            a.unlock_writer(held).unwrap();
        }
        // A word changed under the holder: the release refuses rather than
        // freeing someone else's lock.
        let (held, _) = a.lock_writer(&me, secs(1)).unwrap();
        word.store(12345 << SEQ_SHIFT | 7, Ordering::SeqCst);
        assert!(a.unlock_writer(held).is_err());
        assert_eq!(a.writer_lock_holder(), 7);
    }

    #[test]
    fn futex_wakes_and_times_out() {
        let w = Arc::new(AtomicU32::new(0));
        // Times out (rather than hanging) when nobody wakes it.
        futex_wait(&w, 0, Duration::from_millis(20));
        // A wrong expected value returns at once.
        let t = std::time::Instant::now();
        futex_wait(&w, 1, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(4));
        let w2 = w.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.store(1, Ordering::SeqCst);
            futex_wake_all(&w2);
        });
        let t = std::time::Instant::now();
        while w.load(Ordering::SeqCst) == 0 {
            futex_wait(&w, 0, Duration::from_secs(10));
        }
        assert!(t.elapsed() < Duration::from_secs(9));
        h.join().unwrap();
    }
}

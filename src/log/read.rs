//! The one record reader. Everything that reads a record back out of the
//! mapping goes through here: its header, a key comparison, a copy checked
//! against the record's CRC, and the expiry prefix of a TTL put.
//!
//! Nothing here trusts the file: every offset and length is checked
//! against the mapping before it is used, nothing is allocated for a length
//! the file cannot hold, and a record counts only once its CRC matches the
//! bytes copied out (another process may change the file at any time, so
//! the copy is what gets checked, never the mapping itself).

use std::path::Path;

use super::record::{BodyCrc, Header, HEADER_LEN, TTL_LEN};
use crate::storage::mapping::Arena;
use crate::storage::ARENA_START;
use crate::{Error, Result};

/// Reads the records of one file.
#[derive(Clone, Copy)]
pub(crate) struct Records<'a> {
    arena: &'a Arena,
    salt: u32,
    /// For error messages.
    path: &'a Path,
}

/// Where [`Records::load`] copies a record.
pub(crate) enum Dest<'b> {
    /// Into a buffer: key, then the value area (expiry prefix and value).
    Copy(&'b mut Vec<u8>),
    /// The value only, into a slice that must be exactly its length
    /// (otherwise [`Error::ValueSize`]).
    Exact(&'b mut [u8]),
}

/// What [`Records::load`] found at a slot's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Load {
    /// The record holds another key.
    OtherKey,
    /// The key's live value, copied and checked; for [`Dest::Copy`], the
    /// value starts at this offset of the buffer.
    Live { value_at: usize },
    /// The key's entry, but its expiry has passed: invisible.
    Expired,
}

/// A put record read back whole and checked: key, expiry and value.
pub(crate) struct Put {
    /// Key, then the value area.
    buf: Vec<u8>,
    key_len: usize,
    expires: Option<u64>,
}

impl Put {
    /// The put `Records::load` copied into `buf` (key, then the value
    /// area), its value at `value_at`.
    pub(crate) fn from_loaded(buf: Vec<u8>, key_len: usize, value_at: usize) -> Put {
        let expires = (value_at > key_len).then(|| expiry_of(&buf[key_len..]));
        Put {
            buf,
            key_len,
            expires,
        }
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.buf[..self.key_len]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.buf[self.value_at()..]
    }

    /// The expiry time (ms since the Unix epoch), if it has one.
    pub(crate) fn expires(&self) -> Option<u64> {
        self.expires
    }

    /// Whether it has an expiry that has passed (the clock is read only
    /// for an entry that has one).
    pub(crate) fn expired(&self) -> bool {
        self.expires.is_some_and(|at| at <= now_ms())
    }

    /// Offset of the value in [`into_buf`](Put::into_buf)'s buffer.
    pub(crate) fn value_at(&self) -> usize {
        self.key_len + if self.expires.is_some() { TTL_LEN } else { 0 }
    }

    /// The buffer (key, then the value area) and the value's offset in it.
    pub(crate) fn into_buf(self) -> (Vec<u8>, usize) {
        let at = self.value_at();
        (self.buf, at)
    }
}

impl<'a> Records<'a> {
    pub(crate) fn new(arena: &'a Arena, salt: u32, path: &'a Path) -> Records<'a> {
        Records { arena, salt, path }
    }

    fn corrupt(&self, offset: u64, what: &str) -> Error {
        Error::Corrupted {
            path: self.path.to_path_buf(),
            offset,
            what: what.into(),
        }
    }

    #[cold]
    fn past_end(&self, off: u64) -> Error {
        self.corrupt(off, "record runs past the end of the file")
    }

    #[cold]
    fn not_live(&self, off: u64) -> Error {
        self.corrupt(off, "slot points at something that is not a live record")
    }

    /// The header of the record at `off` (a slot's offset), unchecked
    /// beyond lying inside the arena.
    #[inline]
    pub(crate) fn header(&self, off: u64) -> Result<Header> {
        if off < ARENA_START {
            return Err(self.corrupt(off, "slot points into the file header"));
        }
        let mut b = [0u8; HEADER_LEN as usize];
        self.arena
            .read(off, &mut b)
            .map_err(|_| self.corrupt(off, "slot points past the end of the file"))?;
        let h = Header::from_bytes(&b);
        // The CRCs are checked with the body; the field rules here, so that
        // every path reads a record the same way (a put marked with an
        // expiry but too short to hold one made `get` say absent and
        // `contains_key` present, reading the expiry from the next record).
        if !h.fields_ok() {
            return Err(self.corrupt(off, "record header fails its field checks"));
        }
        Ok(h)
    }

    /// The header of the put at `off`; anything else there is damage.
    pub(crate) fn put_header(&self, off: u64) -> Result<Header> {
        let h = self.header(off)?;
        if !h.is_put() {
            return Err(self.not_live(off));
        }
        Ok(h)
    }

    /// Whether the file has at least `end` bytes: the verified length, or,
    /// if that is shorter (another process may have grown the file), what
    /// `fstat` says now.
    #[inline]
    pub(crate) fn within_file(&self, end: u64) -> bool {
        end <= self.arena.len() || self.arena.refresh().is_ok_and(|l| end <= l)
    }

    /// Does the put at `off` hold `key`? Reads the header and key only.
    pub(crate) fn key_eq(&self, off: u64, key: &[u8]) -> Result<bool> {
        let h = self.put_header(off)?;
        if h.key_len as usize != key.len() {
            return Ok(false);
        }
        let mut small = [0u8; 64];
        let mut big;
        let buf: &mut [u8] = if key.len() <= small.len() {
            &mut small[..key.len()]
        } else {
            big = vec![0u8; key.len()];
            &mut big
        };
        self.arena
            .read(off + HEADER_LEN, buf)
            .map_err(|_| self.past_end(off))?;
        Ok(buf == key)
    }

    /// The key of the record at `off` (header already read), unverified.
    pub(crate) fn key(&self, off: u64, h: &Header) -> Result<Vec<u8>> {
        let mut k = vec![0u8; h.key_len as usize];
        self.arena
            .read(off + HEADER_LEN, &mut k)
            .map_err(|_| self.past_end(off))?;
        Ok(k)
    }

    /// The key of the record at `off` into `buf` (header already read),
    /// unverified; `key` without an allocation per record.
    pub(crate) fn key_into(&self, off: u64, h: &Header, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.resize(h.key_len as usize, 0);
        self.arena
            .read(off + HEADER_LEN, buf)
            .map_err(|_| self.past_end(off))
    }

    /// Bytes of the live put at `off` (for accounting).
    pub(crate) fn live_len(&self, off: u64) -> Result<u64> {
        let h = self.put_header(off)?;
        Ok(super::record::record_len(
            h.key_len as usize,
            h.val_len as usize,
        ))
    }

    /// Copy the key and value area of the put at `off` into `buf` (key
    /// first), after checking its kind and that it lies inside the file.
    fn copy(&self, off: u64, h: &Header, buf: &mut Vec<u8>) -> Result<()> {
        if !h.is_put() {
            return Err(self.not_live(off));
        }
        let n = h.key_len as usize + h.val_len as usize;
        if !self.within_file((off + HEADER_LEN).saturating_add(n as u64)) {
            return Err(self.past_end(off));
        }
        buf.clear();
        buf.resize(n, 0);
        self.arena
            .read(off + HEADER_LEN, buf)
            .map_err(|_| self.past_end(off))
    }

    /// Check the record's CRC over the parts of a copy, in order.
    fn verify(&self, off: u64, h: &Header, parts: &[&[u8]]) -> Result<()> {
        let mut crc = BodyCrc::new(self.salt, off, &h.tail_bytes());
        for p in parts {
            crc.update(p);
        }
        if crc.finish() != h.crc {
            return Err(self.corrupt(off, "record fails its checksum"));
        }
        Ok(())
    }

    /// The put at `off` (header `h`), copied whole and checked.
    pub(crate) fn put(&self, off: u64, h: &Header) -> Result<Put> {
        self.put_reusing(off, h, Vec::new())
    }

    /// As [`put`](Records::put), copied into `buf` (its capacity is
    /// reused; [`Put::into_buf`] gives it back).
    pub(crate) fn put_reusing(&self, off: u64, h: &Header, mut buf: Vec<u8>) -> Result<Put> {
        self.copy(off, h, &mut buf)?;
        self.verify(off, h, &[&buf])?;
        let key_len = h.key_len as usize;
        let expires = h.has_ttl().then(|| expiry_of(&buf[key_len..]));
        Ok(Put {
            buf,
            key_len,
            expires,
        })
    }

    /// Whether the put at `off` (header `h`) has an expiry at or before
    /// `now` (reads the 8-byte prefix only; not CRC-checked, like a key
    /// comparison).
    pub(crate) fn expired_at(&self, off: u64, h: &Header, now: u64) -> Result<bool> {
        if !h.has_ttl() {
            return Ok(false);
        }
        let mut at = [0u8; TTL_LEN];
        self.arena
            .read(off + HEADER_LEN + h.key_len as u64, &mut at)
            .map_err(|_| self.past_end(off))?;
        Ok(expiry_of(&at) <= now)
    }

    /// The read path's look at one candidate slot: if the put at `off`
    /// holds `key`, copy it into `dest` and check it. Starts all of the
    /// record's cache lines loading at once.
    #[inline]
    pub(crate) fn load(&self, off: u64, key: &[u8], dest: &mut Dest<'_>) -> Result<Load> {
        let span = match dest {
            Dest::Copy(_) => 256,
            Dest::Exact(out) => (TTL_LEN + out.len()) as u64,
        };
        self.arena
            .prefetch(off, HEADER_LEN + key.len() as u64 + span);
        let h = self.header(off)?;
        if !h.is_put() {
            return Err(self.not_live(off));
        }
        if h.key_len as usize != key.len() {
            return Ok(Load::OtherKey);
        }
        match dest {
            Dest::Copy(buf) => {
                self.copy(off, &h, buf)?;
                if &buf[..key.len()] != key {
                    return Ok(Load::OtherKey);
                }
                self.verify(off, &h, &[buf])?;
                if !h.has_ttl() {
                    return Ok(Load::Live {
                        value_at: key.len(),
                    });
                }
                if expiry_of(&buf[key.len()..]) <= now_ms() {
                    return Ok(Load::Expired);
                }
                Ok(Load::Live {
                    value_at: key.len() + TTL_LEN,
                })
            }
            Dest::Exact(out) => self.load_exact(off, &h, key, out),
        }
    }

    /// `load` into a slice of exactly the value's length: no allocation
    /// but the key's, no copy but into `out`.
    fn load_exact(&self, off: u64, h: &Header, key: &[u8], out: &mut [u8]) -> Result<Load> {
        let klen = key.len() as u64;
        let end = (off + HEADER_LEN + klen).saturating_add(h.val_len as u64);
        if !self.within_file(end) {
            return Err(self.past_end(off));
        }
        let mut kbuf = vec![0u8; key.len()];
        self.arena
            .read(off + HEADER_LEN, &mut kbuf)
            .map_err(|_| self.past_end(off))?;
        if kbuf != key {
            return Ok(Load::OtherKey);
        }
        let plen = if h.has_ttl() { TTL_LEN } else { 0 };
        let mut prefix = [0u8; TTL_LEN];
        self.arena
            .read(off + HEADER_LEN + klen, &mut prefix[..plen])
            .map_err(|_| self.past_end(off))?;
        if plen > 0 && expiry_of(&prefix) <= now_ms() {
            return Ok(Load::Expired);
        }
        let vlen = (h.val_len as usize).saturating_sub(plen);
        if vlen != out.len() {
            return Err(Error::ValueSize {
                expected: out.len(),
                found: vlen,
            });
        }
        self.arena
            .read(off + HEADER_LEN + klen + plen as u64, out)
            .map_err(|_| self.past_end(off))?;
        self.verify(off, h, &[&kbuf, &prefix[..plen], out])?;
        Ok(Load::Live { value_at: 0 })
    }
}

/// Milliseconds since the Unix epoch, now (the clock expiry times use).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The expiry time `ttl` from now.
pub(crate) fn expiry_after(ttl: std::time::Duration) -> u64 {
    now_ms().saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64)
}

/// The expiry time of a TTL put, from the first bytes of its value area.
fn expiry_of(value_area: &[u8]) -> u64 {
    let mut b = [0u8; TTL_LEN];
    let n = value_area.len().min(TTL_LEN);
    b[..n].copy_from_slice(&value_area[..n]);
    u64::from_le_bytes(b)
}

//! Owned byte buffers handed to callers.

use std::fmt;
use std::ops::Deref;

/// Bytes read from the store, owned by the caller.
///
/// A `Value` is a copy made with raw-pointer reads from the mapping and
/// checked (bounds, CRC) after the copy, so it can never change under you
/// and never aliases memory another process may write. It dereferences to
/// `[u8]`.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("v.mapkv"))?;
/// db.insert(b"k", b"hello")?;
/// let v = db.get(b"k")?.unwrap();
/// assert_eq!(&*v, b"hello");
/// assert_eq!(v.len(), 5);
/// let owned: Vec<u8> = v.into_vec();
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Value {
    buf: Vec<u8>,
    start: usize,
}

impl Value {
    /// `buf[start..]` is the value.
    pub(crate) fn from_parts(buf: Vec<u8>, start: usize) -> Value {
        debug_assert!(start <= buf.len());
        Value { buf, start }
    }

    /// The whole buffer (the value starts at `start`), for reuse.
    pub(crate) fn into_parts(self) -> Vec<u8> {
        self.buf
    }

    /// The value's bytes as a `Vec`, without copying when possible.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("iv.mapkv"))?;
    /// db.insert(b"k", b"bytes")?;
    /// let v: Vec<u8> = db.get(b"k")?.unwrap().into_vec();
    /// assert_eq!(v, b"bytes".to_vec());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.start > 0 {
            self.buf.drain(..self.start);
        }
        self.buf
    }

    /// The value's bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("as.mapkv"))?;
    /// db.insert(b"k", b"text")?;
    /// let v = db.get(b"k")?.unwrap();
    /// assert_eq!(std::str::from_utf8(v.as_slice()).unwrap(), "text");
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::borrow::Borrow<[u8]> for Value {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Value {}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Value {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Value {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Vec<u8>> for Value {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_slice();
        match std::str::from_utf8(s) {
            Ok(t) if s.len() <= 64 => write!(f, "Value({t:?})"),
            _ => write!(f, "Value({} bytes)", s.len()),
        }
    }
}

impl From<Value> for Vec<u8> {
    fn from(v: Value) -> Vec<u8> {
        v.into_vec()
    }
}

/// A value that owns `bytes` (no copy).
///
/// ```
/// let v = mapkv::Value::from(b"abc".to_vec());
/// assert_eq!(&*v, b"abc");
/// ```
impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        Value::from_parts(bytes, 0)
    }
}

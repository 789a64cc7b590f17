//! Python values to what the library takes, and back.

use std::borrow::Cow;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

/// The bytes of a key or value: `bytes` (borrowed, no copy), `str`
/// (UTF-8), `bytearray` or `memoryview` (copied: they can change while the
/// GIL is released).
pub(crate) fn bytes_of<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(match s.to_cow()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        });
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    if obj.cast::<PyMemoryView>().is_ok() {
        // bytes(memoryview) copies its contents (C order); the buffer API
        // itself is not in the stable ABI before Python 3.11.
        let b = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return Ok(Cow::Owned(b.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "keys and values are bytes, bytearray, memoryview or str, not {}",
        obj.get_type().name()?
    )))
}

/// Seconds (int or float) as a `Duration`; `what` names the argument in
/// the error.
pub(crate) fn seconds(secs: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds >= 0, not {secs}"
        ))
    })
}

/// An optional number of seconds.
pub(crate) fn opt_seconds(secs: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    secs.map(|s| seconds(s, what)).transpose()
}

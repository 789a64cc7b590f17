//! mapkv's errors as Python exceptions.
//!
//! `mapkv.Error` is the base class; each subclass names one kind of
//! failure a caller may want to handle on its own. Some also derive from
//! the built-in exception a Python programmer would reach for
//! (`TimeoutError`, `ValueError`), so `except TimeoutError:` works too.
//! The message is always the Rust error's.

use pyo3::exceptions::{PyException, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The exception classes, made once when the module is imported.
struct Classes {
    error: Py<PyType>,
    corrupted: Py<PyType>,
    not_a_store: Py<PyType>,
    lock_timeout: Py<PyType>,
    read_only: Py<PyType>,
    key_too_large: Py<PyType>,
    value_too_large: Py<PyType>,
    out_of_space: Py<PyType>,
    closed: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// A class `name(*bases)` in module `mapkv`, made with `type()` because
/// some have two bases.
fn class<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[&Bound<'py, PyType>],
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__doc__", doc)?;
    ns.set_item("__module__", "mapkv")?;
    let t = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, bases)?, ns))?;
    Ok(t.cast_into::<PyType>()?.unbind())
}

/// Make the classes and add them to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes = CLASSES.get_or_try_init(py, || -> PyResult<Classes> {
        let exception = py.get_type::<PyException>();
        let error = class(
            py,
            "Error",
            &[&exception],
            "Base class of every error mapkv raises. The message is the Rust library's.",
        )?;
        let e = error.bind(py);
        let value_error = py.get_type::<PyValueError>();
        let timeout = py.get_type::<PyTimeoutError>();
        Ok(Classes {
            corrupted: class(
                py,
                "CorruptedError",
                &[e],
                "A header, slot or record of the store failed its checks; the message says where.",
            )?,
            not_a_store: class(
                py,
                "NotAStoreError",
                &[e],
                "The file is not a mapkv store, or a store of a format version this build \
                 cannot read. The file was left untouched.",
            )?,
            lock_timeout: class(
                py,
                "LockTimeoutError",
                &[e, &timeout],
                "A wait ran out (lock_timeout): another writer held the writer lock, or \
                 another handle held the store while recovering it. Nothing was written.",
            )?,
            read_only: class(
                py,
                "ReadOnlyError",
                &[e],
                "A write through a handle opened with read_only=True.",
            )?,
            key_too_large: class(
                py,
                "KeyTooLargeError",
                &[e, &value_error],
                "A key longer than MAX_KEY_LEN bytes. Nothing was written.",
            )?,
            value_too_large: class(
                py,
                "ValueTooLargeError",
                &[e, &value_error],
                "A value longer than MAX_VALUE_LEN bytes. Nothing was written.",
            )?,
            out_of_space: class(
                py,
                "OutOfSpaceError",
                &[e],
                "The file could not grow: the disk is full, or the write does not fit in \
                 the cache's capacity. Nothing was written; the store stays usable.",
            )?,
            closed: class(
                py,
                "ClosedError",
                &[e, &value_error],
                "The handle was closed.",
            )?,
            error,
        })
    })?;
    for (name, t) in [
        ("Error", &classes.error),
        ("CorruptedError", &classes.corrupted),
        ("NotAStoreError", &classes.not_a_store),
        ("LockTimeoutError", &classes.lock_timeout),
        ("ReadOnlyError", &classes.read_only),
        ("KeyTooLargeError", &classes.key_too_large),
        ("ValueTooLargeError", &classes.value_too_large),
        ("OutOfSpaceError", &classes.out_of_space),
        ("ClosedError", &classes.closed),
    ] {
        m.add(name, t.clone_ref(py))?;
    }
    Ok(())
}

fn classes(py: Python<'_>) -> &Classes {
    CLASSES
        .get(py)
        .expect("the exception classes are made when the module is imported")
}

/// The Python exception for a mapkv error.
pub(crate) fn to_py(e: mapkv::Error) -> PyErr {
    use mapkv::Error as E;
    Python::attach(|py| {
        let c = classes(py);
        let t = match &e {
            E::Corrupted { .. } => &c.corrupted,
            E::NotMapkv { .. } | E::UnsupportedVersion { .. } => &c.not_a_store,
            E::Timeout { .. } | E::Locked { .. } => &c.lock_timeout,
            E::ReadOnly { .. } => &c.read_only,
            E::KeyTooLarge { .. } => &c.key_too_large,
            E::ValueTooLarge { .. } => &c.value_too_large,
            E::OutOfSpace { .. } => &c.out_of_space,
            // Io, Refused, ValueSize, Overflow, CapacityMismatch,
            // BadPosition, NeedsRecovery, Poisoned, and any later variant.
            _ => &c.error,
        };
        PyErr::from_type(t.bind(py).clone(), e.to_string())
    })
}

/// The error for a call on a closed handle.
pub(crate) fn closed(py: Python<'_>) -> PyErr {
    PyErr::from_type(
        classes(py).closed.bind(py).clone(),
        "the store handle is closed",
    )
}

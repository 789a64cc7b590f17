//! Iteration over a store's entries.

use mapkv::{Db, Iter};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::errors::to_py;

/// What the iterator yields.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Keys,
    Values,
    Items,
}

type Borrowing<'a> = Iter<'a>;

self_cell::self_cell!(
    /// A handle and an iterator that borrows it: `mapkv::Iter` borrows the
    /// `Db` it walks, and a Python iterator must own what it uses.
    struct Owning {
        owner: Db,
        #[covariant]
        dependent: Borrowing,
    }
);

/// An iterator over a store's keys, values or `(key, value)` pairs, in
/// no particular order. Entries present for the whole iteration are
/// returned exactly once; entries written meanwhile may or may not be.
#[pyclass(frozen, name = "Iterator", module = "mapkv")]
pub(crate) struct PyIter {
    /// Locked only with the GIL held.
    inner: Mutex<Owning>,
    kind: Kind,
}

impl PyIter {
    pub(crate) fn new(db: Db, kind: Kind) -> PyResult<PyIter> {
        Ok(PyIter {
            inner: Mutex::new(Owning::new(db, |db| db.iter())),
            kind,
        })
    }
}

#[pymethods]
impl PyIter {
    fn __iter__<'py>(slf: &Bound<'py, Self>) -> Bound<'py, Self> {
        slf.clone()
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let next = self.inner.lock().with_dependent_mut(|_, it| it.next());
        let Some(item) = next else {
            return Ok(None);
        };
        let (k, v) = item.map_err(to_py)?;
        Ok(Some(match self.kind {
            Kind::Keys => PyBytes::new(py, &k).into_any(),
            Kind::Values => PyBytes::new(py, &v).into_any(),
            Kind::Items => {
                PyTuple::new(py, [PyBytes::new(py, &k), PyBytes::new(py, &v)])?.into_any()
            }
        }))
    }
}

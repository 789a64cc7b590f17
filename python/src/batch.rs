//! `mapkv.Batch`: writes applied all-or-nothing.

use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::convert::{bytes_of, opt_seconds};
use crate::errors::to_py;

/// One staged write.
enum Op {
    Put(Vec<u8>, Vec<u8>, Option<Duration>),
    Remove(Vec<u8>),
}

/// Writes staged in memory and applied together by `commit()`: after a
/// crash either all of them are in the store or none is. As a context
/// manager it commits at the end of the block, unless the block raised:
/// then nothing is written.
///
/// The operations are kept here and handed to the library at commit, so a
/// batch filled in a forked child commits through the child's own handle.
#[pyclass(frozen, name = "Batch", module = "mapkv")]
pub(crate) struct PyBatch {
    /// This process's handle of the store, at commit time (a batch filled
    /// before a fork commits through the child's own handle).
    db: DbOf,
    /// Locked only with the GIL held, never across a blocking call.
    ops: Mutex<Vec<Op>>,
}

/// How a batch gets the handle it commits through.
pub(crate) type DbOf = Box<dyn Fn(Python<'_>) -> PyResult<mapkv::Db> + Send + Sync>;

impl PyBatch {
    pub(crate) fn new(db: DbOf) -> PyBatch {
        PyBatch {
            db,
            ops: Mutex::new(Vec::new()),
        }
    }
}

#[pymethods]
impl PyBatch {
    /// Stage setting `key` to `value` (with `ttl` seconds, if given).
    #[pyo3(signature = (key, value, ttl = None))]
    fn set(
        &self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        let op = Op::Put(
            bytes_of(key)?.into_owned(),
            bytes_of(value)?.into_owned(),
            opt_seconds(ttl, "ttl")?,
        );
        self.ops.lock().push(op);
        Ok(())
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set(key, value, None)
    }

    /// Stage removing `key` (absent keys are fine).
    fn delete(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let op = Op::Remove(bytes_of(key)?.into_owned());
        self.ops.lock().push(op);
        Ok(())
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.delete(key)
    }

    /// Operations staged.
    fn __len__(&self) -> usize {
        self.ops.lock().len()
    }

    /// Apply every staged operation as one commit and empty the batch.
    /// If it raises, nothing of the batch was applied.
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        let ops = std::mem::take(&mut *self.ops.lock());
        if ops.is_empty() {
            return Ok(());
        }
        let db = (self.db)(py)?;
        py.detach(|| {
            let mut b = db.batch();
            for op in &ops {
                match op {
                    Op::Put(k, v, None) => b.insert(k, v),
                    Op::Put(k, v, Some(t)) => b.insert_with_ttl(k, v, *t),
                    Op::Remove(k) => b.remove(k),
                };
            }
            b.commit()
        })
        .map_err(to_py)
    }

    /// Drop every staged operation.
    fn discard(&self) {
        self.ops.lock().clear();
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> Bound<'py, Self> {
        slf.clone()
    }

    /// Commit if the block raised nothing; otherwise discard.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyType>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some() {
            self.discard();
        } else {
            self.commit(py)?;
        }
        Ok(false)
    }
}

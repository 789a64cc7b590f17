//! The Python binding of mapkv: the extension module `mapkv._mapkv`.
//!
//! Every method calls the Rust library; the binding keeps no store logic of
//! its own. What it adds is what Python needs:
//!
//! * conversions (bytes-like or `str` keys and values, seconds as floats),
//! * errors as Python exceptions ([`errors`]),
//! * the GIL released around every call that can block (the writer lock,
//!   syncs, compaction, waits) and waits cut into slices so that Ctrl-C
//!   interrupts them,
//! * fork safety: a handle used in a child forked after it was opened
//!   reopens the store in the child ([`fork`]).
//!
//! `mapkv.Cache` and `memoize` are Python code on top of `Db`
//! (`mapkv/__init__.py`).

use pyo3::prelude::*;

mod batch;
mod convert;
mod db;
mod errors;
mod fork;
mod iter;

#[pymodule]
fn _mapkv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fork::install();
    errors::register(m)?;
    m.add_class::<db::PyDb>()?;
    m.add_class::<batch::PyBatch>()?;
    m.add_class::<iter::PyIter>()?;
    m.add("MAX_KEY_LEN", mapkv::MAX_KEY_LEN)?;
    m.add("MAX_VALUE_LEN", mapkv::MAX_VALUE_LEN)?;
    Ok(())
}

//! `ferry._core`: the per-key hot path of the Ferry workers. Redis values and keys are
//! checked and encoded straight into Postgres binary COPY data, with no Python object per row.

mod audit;
mod bind;
mod calendar;
mod copy;
mod error;
mod integer;
mod memory;
mod pattern;
mod remembered;
mod repr;
mod timestamp;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("COPY_HEADER", PyBytes::new(py, &copy::COPY_HEADER))?;
    m.add("COPY_TRAILER", PyBytes::new(py, &copy::COPY_TRAILER))?;
    m.add_function(wrap_pyfunction!(bind::values::parse_int, m)?)?;
    m.add_class::<bind::key_pattern::KeyPattern>()?;
    m.add_class::<bind::counter_sync::PageResult>()?;
    m.add_class::<bind::counter_sync::CounterSync>()?;
    m.add_function(wrap_pyfunction!(bind::audit::encode_audit, m)?)?;
    m.add_function(wrap_pyfunction!(bind::audit::dead_letter_fields, m)?)?;
    m.add_class::<bind::audit::AuditBatch>()?;
    Ok(())
}

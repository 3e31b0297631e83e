//! `encode_audit` and `AuditBatch`: a batch of stream entries as `audit_log` COPY tuples.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::audit::{encode_entries, raw_fields_json, Entry};
use crate::bind::convert::{borrow_bytes, items, type_name};
use crate::error::{CoreError, CoreResult};

/// Good entries of a batch as COPY tuples, and dead letters for the malformed ones.
#[pyclass(frozen, module = "ferry._core", name = "AuditBatch")]
pub struct AuditBatch {
    /// `audit_log` tuples only: stream_id, actor_id, action, target_type, target_id, ip,
    /// occurred_at, metadata.
    #[pyo3(get)]
    copy_data: Py<PyBytes>,
    /// Tuples in `copy_data`.
    #[pyo3(get)]
    rows: u64,
    /// `(stream id, raw fields as JSON object text, reason)` per malformed entry.
    #[pyo3(get)]
    dead: Vec<(Py<PyBytes>, String, String)>,
}

#[pymethods]
impl AuditBatch {
    fn __repr__(&self) -> String {
        format!("AuditBatch(rows={}, dead={})", self.rows, self.dead.len())
    }
}

/// Checks a batch of `(stream id, fields)` entries as `XREADGROUP` returns them, with
/// `fields` `None` for a deleted entry. One bad entry never fails the batch; ValueError only
/// when an item does not have that shape.
#[pyfunction]
#[pyo3(signature = (entries, /))]
pub fn encode_audit(py: Python<'_>, entries: &Bound<'_, PyAny>) -> CoreResult<AuditBatch> {
    let objects = items(entries, "entries")?;
    let mut owned = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        let parts = items(object, &format!("entries[{index}]"))?;
        let [id, fields] = parts.as_slice() else {
            return Err(CoreError::argument(format!(
                "entries[{index}] must be a (stream id, fields) pair, got {} items",
                parts.len()
            )));
        };
        let pairs = if fields.is_none() {
            None
        } else {
            let dict = fields.cast::<PyDict>().map_err(|_| {
                CoreError::argument(format!(
                    "entries[{index}] fields must be a dict or None, got {}",
                    type_name(fields)
                ))
            })?;
            Some(dict.iter().collect::<Vec<_>>())
        };
        owned.push((index, id.clone(), pairs));
    }

    let mut borrowed = Vec::with_capacity(owned.len());
    for (index, id, pairs) in &owned {
        let id = borrow_bytes(id, || format!("entries[{index}] stream id"), "bytes")?;
        let fields = match pairs {
            None => None,
            Some(pairs) => Some(
                pairs
                    .iter()
                    .map(|(name, value)| {
                        let what = || format!("entries[{index}] field names and values");
                        Ok((
                            borrow_bytes(name, what, "bytes")?,
                            borrow_bytes(value, what, "bytes")?,
                        ))
                    })
                    .collect::<CoreResult<Vec<_>>>()?,
            ),
        };
        borrowed.push(Entry { id, fields });
    }

    let batch = py.detach(|| encode_entries(&borrowed));
    let dead = batch
        .dead
        .into_iter()
        .map(|letter| {
            (
                PyBytes::new(py, &letter.id).unbind(),
                letter.fields_json,
                letter.reason,
            )
        })
        .collect();
    Ok(AuditBatch {
        copy_data: PyBytes::new(py, batch.copy.as_bytes()).unbind(),
        rows: batch.rows,
        dead,
    })
}

/// The fields of one entry as the JSON object text dead letters carry: names and values that
/// are not UTF-8 or hold NUL are base64, so the text always loads into `jsonb`.
#[pyfunction]
#[pyo3(signature = (fields, /))]
pub fn dead_letter_fields(fields: &Bound<'_, PyDict>) -> CoreResult<String> {
    let pairs: Vec<_> = fields.iter().collect();
    let mut borrowed = Vec::with_capacity(pairs.len());
    for (name, value) in &pairs {
        let what = || "fields names and values".to_owned();
        borrowed.push((
            borrow_bytes(name, what, "bytes")?,
            borrow_bytes(value, what, "bytes")?,
        ));
    }
    Ok(raw_fields_json(&borrowed))
}

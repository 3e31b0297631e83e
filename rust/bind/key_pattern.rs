//! `KeyPattern`: a compiled key template as Python sees it.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::bind::convert::{items, segment_from_py, segment_to_py};
use crate::error::CoreResult;
use crate::pattern::Template;
use crate::repr::str_repr;

/// A key template such as `"usage:{day:date}:{account}:{metric}"`, compiled once.
#[pyclass(frozen, module = "ferry._core", name = "KeyPattern")]
pub struct KeyPattern {
    template: Arc<Template>,
}

impl KeyPattern {
    /// The compiled template, shared with the syncs that use it.
    pub fn template_arc(&self) -> Arc<Template> {
        Arc::clone(&self.template)
    }
}

#[pymethods]
impl KeyPattern {
    /// Compiles `template`; raises ValueError naming the problem when it is malformed.
    #[new]
    fn new(template: &str) -> CoreResult<Self> {
        Ok(KeyPattern {
            template: Arc::new(Template::compile(template)?),
        })
    }

    /// The template text as given.
    #[getter]
    fn template(&self) -> &str {
        self.template.source()
    }

    /// Names of the named segments, in order.
    #[getter]
    fn segment_names(&self) -> Vec<String> {
        self.template.names().to_vec()
    }

    /// The `SCAN MATCH` glob for the template's keys, such as `"quota:*"`.
    #[getter]
    fn scan_match(&self) -> &str {
        self.template.scan_match()
    }

    /// The named segments of `key` as `str` and `datetime.date` values, or `None` when the key
    /// does not match the template.
    fn parse<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let mut segments = Vec::with_capacity(self.template.names().len());
        if !self.template.parse(key, &mut segments) {
            return Ok(None);
        }
        let values = segments
            .into_iter()
            .map(|segment| segment_to_py(py, segment))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Some(PyTuple::new(py, values)?))
    }

    /// The key whose segments are `segments`; the inverse of `parse`. Raises ValueError on a
    /// wrong number of segments, a wrong type, or text that is empty or holds ':' or NUL.
    fn format<'py>(
        &self,
        py: Python<'py>,
        segments: &Bound<'py, PyAny>,
    ) -> CoreResult<Bound<'py, PyBytes>> {
        let objects = items(segments, "segments")?;
        self.template.check_arity(objects.len())?;
        let values = objects
            .iter()
            .zip(self.template.names().iter().zip(self.template.kinds()))
            .map(|(object, (name, kind))| segment_from_py(object, name, *kind))
            .collect::<CoreResult<Vec<_>>>()?;
        Ok(PyBytes::new(py, &self.template.format(&values)?))
    }

    fn __repr__(&self) -> String {
        format!("KeyPattern({})", str_repr(self.template.source()))
    }
}

//! `CounterSync` and `PageResult`: the memory of a counter sync and the pages it encodes.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bind::convert::{borrow_bytes, items, segment_from_py, type_name};
use crate::bind::key_pattern::KeyPattern;
use crate::error::{CoreError, CoreResult};
use crate::memory::{Memory, Page};

/// Binary COPY tuples for one page of counters, with what happened to its keys.
#[pyclass(frozen, module = "ferry._core", name = "PageResult")]
pub struct PageResult {
    /// COPY tuples only, one per row to write; no header or trailer.
    #[pyo3(get)]
    copy_data: Py<PyBytes>,
    /// Rows in `copy_data`.
    #[pyo3(get)]
    rows: u64,
    /// Values that are not Redis integers; their rows were skipped.
    #[pyo3(get)]
    invalid: u64,
    /// Keys that do not match the pattern; skipped.
    #[pyo3(get)]
    malformed: u64,
    /// `None` values (the key vanished between SCAN and MGET); written as 0.
    #[pyo3(get)]
    missing: u64,
    /// Keys already seen earlier in this run; skipped.
    #[pyo3(get)]
    duplicates: u64,
    /// Values equal to what was last written for the key; skipped.
    #[pyo3(get)]
    unchanged: u64,
    /// At most five one-line descriptions of bad keys and values.
    #[pyo3(get)]
    examples: Vec<String>,
}

impl PageResult {
    fn from_page(py: Python<'_>, page: Page) -> Self {
        let counts = page.counts;
        PageResult {
            copy_data: PyBytes::new(py, page.copy.as_bytes()).unbind(),
            rows: counts.rows,
            invalid: counts.invalid,
            malformed: counts.malformed,
            missing: counts.missing,
            duplicates: counts.duplicates,
            unchanged: counts.unchanged,
            examples: page.examples,
        }
    }
}

#[pymethods]
impl PageResult {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "PageResult(rows={}, invalid={}, malformed={}, missing={}, duplicates={}, \
             unchanged={}, copy_data=<{} bytes>)",
            self.rows,
            self.invalid,
            self.malformed,
            self.missing,
            self.duplicates,
            self.unchanged,
            self.copy_data.bind(py).as_bytes().len()
        )
    }
}

/// Encodes `MGET` pages into COPY rows and remembers what was last written for each key.
#[pyclass(module = "ferry._core", name = "CounterSync")]
pub struct CounterSync {
    memory: Memory,
}

#[pymethods]
impl CounterSync {
    /// A sync with no memory for keys of `pattern`.
    #[new]
    fn new(pattern: &Bound<'_, KeyPattern>) -> Self {
        CounterSync {
            memory: Memory::new(pattern.get().template_arc()),
        }
    }

    /// Starts a run: clears the keys seen and the writes pending.
    fn begin_run(&mut self) {
        self.memory.begin_run();
    }

    /// Encodes one SCAN page (`keys`) and its MGET reply (`values`) into rows for the keys
    /// whose value changed. Raises ValueError when the lengths differ or an item is not
    /// bytes (or None, for a value).
    fn encode_page(
        &mut self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        values: &Bound<'_, PyAny>,
    ) -> CoreResult<PageResult> {
        let keys = items(keys, "keys")?;
        let values = items(values, "values")?;
        if keys.len() != values.len() {
            return Err(CoreError::argument(format!(
                "keys and values must have the same length, got {} keys and {} values",
                keys.len(),
                values.len()
            )));
        }

        let mut pairs = Vec::with_capacity(keys.len());
        for (index, (key, value)) in keys.iter().zip(&values).enumerate() {
            let key = borrow_bytes(key, || format!("keys[{index}]"), "bytes")?;
            let value = if value.is_none() {
                None
            } else {
                Some(borrow_bytes(
                    value,
                    || format!("values[{index}]"),
                    "bytes or None",
                )?)
            };
            pairs.push((key, value));
        }

        // The bytes objects stay alive and immutable in `keys` and `values`, so other Python
        // threads can run while the page is encoded.
        let memory = &mut self.memory;
        let page = py.detach(|| memory.encode_page(&pairs));
        Ok(PageResult::from_page(py, page))
    }

    /// After a complete walk: rows of value 0 for remembered non-zero keys the run did not see.
    fn encode_absent(&mut self, py: Python<'_>) -> PageResult {
        let memory = &mut self.memory;
        let page = py.detach(|| memory.encode_absent());
        PageResult::from_page(py, page)
    }

    /// Makes the run's pending writes the remembered values; clears the run's state.
    fn commit_run(&mut self) {
        self.memory.commit_run();
    }

    /// Drops all memory and run state; the caller reseeds after a failed run.
    fn forget(&mut self) {
        self.memory.forget();
    }

    /// Remembers rows read from Postgres, each `(*segments, value)`; returns how many.
    /// Raises ValueError on a row of the wrong shape or type.
    fn seed(&mut self, rows: &Bound<'_, PyAny>) -> CoreResult<usize> {
        let template = self.memory.template();
        let names = template.names();
        let kinds = template.kinds();
        let mut seeded = Vec::new();
        for (index, row) in rows.try_iter()?.enumerate() {
            let row = row?;
            let fields = items(&row, "a seed row")?;
            let Some((value, segment_objects)) = fields.split_last() else {
                return Err(seed_shape_error(index, names.len(), 0));
            };
            if segment_objects.len() != names.len() {
                return Err(seed_shape_error(index, names.len(), fields.len()));
            }
            let segments = segment_objects
                .iter()
                .zip(names.iter().zip(kinds))
                .map(|(object, (name, kind))| segment_from_py(object, name, *kind))
                .collect::<CoreResult<Vec<_>>>()?;
            let value: i64 = value.extract().map_err(|_| {
                CoreError::argument(format!(
                    "seed row {index} must end with an int within 64 bits, got {}",
                    type_name(value)
                ))
            })?;
            seeded.push((template.format(&segments)?, value));
        }

        // Seed only once every row has been read, so a bad row leaves the memory untouched.
        let count = seeded.len();
        for (key, value) in seeded {
            self.memory.seed(&key, value);
        }
        Ok(count)
    }

    fn __len__(&self) -> usize {
        self.memory.len()
    }
}

fn seed_shape_error(index: usize, segments: usize, got: usize) -> CoreError {
    CoreError::argument(format!(
        "seed row {index} must have {} items ({segments} segments and the value), got {got}",
        segments + 1
    ))
}

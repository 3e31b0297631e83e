//! `CounterSync` and `PageResult`: the memory of a counter sync and the pages it encodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bind::convert::{borrow_bytes, items, segment_from_py, type_name};
use crate::bind::key_pattern::KeyPattern;
use crate::error::{CoreError, CoreResult};
use crate::memory::{Memory, Page};
use crate::pattern::Template;

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
///
/// The memory sits behind a mutex rather than PyO3's borrow flag: pages are encoded with the
/// GIL released, and another thread (the runner's heartbeat reading `len()`) must then wait
/// or read the last known size, not fail with "Already mutably borrowed".
#[pyclass(frozen, module = "ferry._core", name = "CounterSync")]
pub struct CounterSync {
    template: Arc<Template>,
    memory: Mutex<Memory>,
    remembered: AtomicUsize,
}

impl CounterSync {
    /// Runs `work` on the memory with the GIL released and the lock held, then publishes the
    /// number of remembered keys for `__len__`.
    fn with_memory<T, F>(&self, py: Python<'_>, work: F) -> T
    where
        T: Send,
        F: Send + FnOnce(&mut Memory) -> T,
    {
        py.detach(|| {
            let mut memory = match self.memory.lock() {
                Ok(memory) => memory,
                Err(poisoned) => {
                    // A panic left the memory half-updated. Forgetting it costs one run that
                    // rewrites every row, and is always correct.
                    let mut memory = poisoned.into_inner();
                    memory.forget();
                    self.memory.clear_poison();
                    memory
                }
            };
            let result = work(&mut memory);
            self.remembered.store(memory.len(), Ordering::Relaxed);
            result
        })
    }
}

#[pymethods]
impl CounterSync {
    /// A sync with no memory for keys of `pattern`.
    #[new]
    fn new(pattern: &Bound<'_, KeyPattern>) -> Self {
        let template = pattern.get().template_arc();
        CounterSync {
            memory: Mutex::new(Memory::new(Arc::clone(&template))),
            template,
            remembered: AtomicUsize::new(0),
        }
    }

    /// Starts a run: clears the keys seen and the writes pending.
    fn begin_run(&self, py: Python<'_>) {
        self.with_memory(py, Memory::begin_run);
    }

    /// Encodes one SCAN page (`keys`) and its MGET reply (`values`) into rows for the keys
    /// whose value changed. Raises ValueError when the lengths differ or an item is not
    /// bytes (or None, for a value).
    fn encode_page(
        &self,
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

        // The bytes objects stay alive and immutable in `keys` and `values` while the GIL is
        // released, so the borrowed slices stay valid.
        let page = self.with_memory(py, |memory| memory.encode_page(&pairs));
        Ok(PageResult::from_page(py, page))
    }

    /// After a complete walk: rows of value 0 for remembered non-zero keys the run did not see.
    fn encode_absent(&self, py: Python<'_>) -> PageResult {
        let page = self.with_memory(py, Memory::encode_absent);
        PageResult::from_page(py, page)
    }

    /// Makes the run's pending writes the remembered values; clears the run's state.
    fn commit_run(&self, py: Python<'_>) {
        self.with_memory(py, Memory::commit_run);
    }

    /// Drops all memory and run state; the caller reseeds after a failed run.
    fn forget(&self, py: Python<'_>) {
        self.with_memory(py, Memory::forget);
    }

    /// Remembers rows read from Postgres, each `(*segments, value)`, and returns how many were
    /// remembered. Rows that no key could produce (text that is empty or holds ':' or NUL, or
    /// a key too long) are skipped: no key will ever match them. Raises ValueError on a row
    /// of the wrong shape or type, and then remembers none of the rows.
    fn seed(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> CoreResult<usize> {
        let names = self.template.names();
        let kinds = self.template.kinds();
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
            if let Ok(key) = self.template.format(&segments) {
                seeded.push((key, value));
            }
        }

        // Seed only once every row has been read, so a bad row leaves the memory untouched.
        Ok(self.with_memory(py, |memory| {
            for (key, value) in &seeded {
                memory.seed(key, *value);
            }
            seeded.len()
        }))
    }

    /// Number of remembered keys, as of the last call that finished; never waits.
    fn __len__(&self) -> usize {
        self.remembered.load(Ordering::Relaxed)
    }
}

fn seed_shape_error(index: usize, segments: usize, got: usize) -> CoreError {
    CoreError::argument(format!(
        "seed row {index} must have {} items ({segments} segments and the value), got {got}",
        segments + 1
    ))
}

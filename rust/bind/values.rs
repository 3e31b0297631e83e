//! Module-level functions and constants about single values.

use pyo3::prelude::*;

use crate::integer::parse_counter;

/// Applies Redis's integer rules to a value read with `GET` or `MGET`.
///
/// `None` (the key is missing) and `b""` count as 0; a value that Redis would not accept as
/// an integer gives `None`.
#[pyfunction]
#[pyo3(signature = (value, /))]
pub fn parse_int(value: Option<&[u8]>) -> Option<i64> {
    parse_counter(value)
}

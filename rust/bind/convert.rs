//! Conversions between Python objects and the core's values, with the argument errors that
//! name what was expected and what arrived.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDate, PyDateTime, PyList, PySequence, PyString, PyTuple};

use crate::calendar::Date;
use crate::error::{CoreError, CoreResult};
use crate::pattern::{Kind, Segment};

/// The name of an object's type, for error messages.
pub fn type_name(object: &Bound<'_, PyAny>) -> String {
    object
        .get_type()
        .name()
        .map_or_else(|_| "an unknown type".to_owned(), |name| name.to_string())
}

/// The items of a list, tuple or other sequence, borrowed without copying their contents.
pub fn items<'py>(sequence: &Bound<'py, PyAny>, what: &str) -> CoreResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = sequence.cast::<PyList>() {
        return Ok(list.iter().collect());
    }
    if let Ok(tuple) = sequence.cast::<PyTuple>() {
        return Ok(tuple.iter().collect());
    }
    let not_sequence = || {
        CoreError::argument(format!(
            "{what} must be a sequence, got {}",
            type_name(sequence)
        ))
    };
    if sequence.is_instance_of::<PyBytes>() || sequence.is_instance_of::<PyString>() {
        return Err(not_sequence());
    }
    let sequence = sequence.cast::<PySequence>().map_err(|_| not_sequence())?;
    Ok(sequence.try_iter()?.collect::<PyResult<_>>()?)
}

/// The bytes of a `bytes` object, borrowed; otherwise an argument error saying that `what`
/// (built only on failure) must be `expected`.
pub fn borrow_bytes<'a>(
    object: &'a Bound<'_, PyAny>,
    what: impl FnOnce() -> String,
    expected: &str,
) -> CoreResult<&'a [u8]> {
    match object.cast::<PyBytes>() {
        Ok(bytes) => Ok(bytes.as_bytes()),
        Err(_) => Err(CoreError::argument(format!(
            "{} must be {expected}, got {}",
            what(),
            type_name(object)
        ))),
    }
}

/// Reads the value of segment `name` of type `kind` from a `str` or `datetime.date`.
pub fn segment_from_py<'a>(
    object: &'a Bound<'_, PyAny>,
    name: &str,
    kind: Kind,
) -> CoreResult<Segment<'a>> {
    let wrong_type = |expected: &str| {
        CoreError::argument(format!(
            "segment {name} must be {expected}, got {}",
            type_name(object)
        ))
    };
    match kind {
        Kind::Text => {
            let text = object.cast::<PyString>().map_err(|_| wrong_type("str"))?;
            Ok(Segment::Text(text.to_str()?))
        }
        Kind::Date => {
            // A datetime is a date to isinstance, but its time of day would be dropped silently.
            if object.is_instance_of::<PyDateTime>() || !object.is_instance_of::<PyDate>() {
                return Err(wrong_type("datetime.date"));
            }
            let year: u16 = object.getattr("year")?.extract()?;
            let month: u8 = object.getattr("month")?.extract()?;
            let day: u8 = object.getattr("day")?.extract()?;
            let date = Date::new(year, month, day)
                .ok_or_else(|| wrong_type("a date between years 1 and 9999"))?;
            Ok(Segment::Date(date))
        }
    }
}

/// A segment as a Python `str` or `datetime.date`.
pub fn segment_to_py<'py>(py: Python<'py>, segment: Segment<'_>) -> PyResult<Bound<'py, PyAny>> {
    match segment {
        Segment::Text(text) => Ok(PyString::new(py, text).into_any()),
        Segment::Date(date) => {
            Ok(PyDate::new(py, i32::from(date.year()), date.month(), date.day())?.into_any())
        }
    }
}

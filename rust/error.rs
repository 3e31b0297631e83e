//! The one error type of the core, and its single translation into Python exceptions.

use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::{CastError, PyErr};

/// Everything the core refuses; each variant carries the message shown to the caller.
#[derive(Debug)]
pub enum CoreError {
    /// A key template that cannot be compiled.
    Template(String),
    /// An argument of the wrong shape, type or value.
    Argument(String),
    /// An exception raised by Python while an argument was read, passed on unchanged.
    Python(PyErr),
}

impl CoreError {
    /// Builds an [`CoreError::Argument`] from anything that reads as a message.
    pub fn argument(message: impl Into<String>) -> Self {
        CoreError::Argument(message.into())
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Template(message) | CoreError::Argument(message) => f.write_str(message),
            CoreError::Python(err) => fmt::Display::fmt(err, f),
        }
    }
}

impl std::error::Error for CoreError {}

impl From<PyErr> for CoreError {
    fn from(err: PyErr) -> Self {
        CoreError::Python(err)
    }
}

impl From<CastError<'_, '_>> for CoreError {
    fn from(err: CastError<'_, '_>) -> Self {
        CoreError::Argument(err.to_string())
    }
}

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> Self {
        match err {
            CoreError::Template(message) | CoreError::Argument(message) => {
                PyValueError::new_err(message)
            }
            CoreError::Python(err) => err,
        }
    }
}

/// The result type of every fallible function in the core.
pub type CoreResult<T> = Result<T, CoreError>;

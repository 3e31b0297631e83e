//! The Python-facing layer: argument extraction, result objects and the classes of
//! `ferry._core`. The modules beside this folder hold the rules and know nothing of Python.

pub mod audit;
pub mod convert;
pub mod counter_sync;
pub mod key_pattern;
pub mod values;

//! The command line: parses, then calls the library.

pub mod image;

//! The `qkv` command line: argument parsing and printing. What commands do lives in the library.

pub mod args;
pub mod config;
pub mod output;

//! `--log-level` / `NSRUN_LOG`: how much nsrun itself says on stderr, Docker's level names.
//! Errors are always printed; `warn` adds warnings, `info` (the default) notes, `debug` what
//! a run did (its id, image, timings, how limits were enforced).

use std::sync::atomic::{AtomicU8, Ordering};

/// A level, most quiet first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        match s.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" | "fatal" | "panic" => Ok(Level::Error),
            _ => Err(format!(
                "invalid log level {s:?}: expected debug, info, warn or error"
            )),
        }
    }
}

/// Sets the level for the rest of the process.
pub fn set(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether messages of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// `nsrun: warning: …` unless the level is `error`.
pub fn warn(msg: impl std::fmt::Display) {
    if enabled(Level::Warn) {
        eprintln!("nsrun: warning: {msg}");
    }
}

/// `nsrun: note: …` at `info` and `debug`.
pub fn note(msg: impl std::fmt::Display) {
    if enabled(Level::Info) {
        eprintln!("nsrun: note: {msg}");
    }
}

/// `nsrun: debug: …` at `debug` only.
pub fn debug(msg: impl std::fmt::Display) {
    if enabled(Level::Debug) {
        eprintln!("nsrun: debug: {msg}");
    }
}

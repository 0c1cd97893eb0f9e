//! What every test crate shares about preconditions: a test whose precondition is missing (no
//! root, no registry, no user namespaces, a kernel without IA32 emulation) fails in CI where the
//! callers require it, and is skipped elsewhere — loudly, and counted: each skip is printed past
//! the test harness's output capture and appended to `NSRUN_TEST_SKIP_LOG`, whose lines
//! `scripts/test.sh` counts at the end, so a skipped test never passes unnoticed.
//!
//! Every test file declares `mod support;`; the shared modules (`common`, `confine_common`,
//! `images_common`) call it as `crate::support`.
#![allow(dead_code)]

use std::io::Write;

/// Whether we run in CI (`CI` set to anything but empty, `false` or `0`), where a missing
/// precondition is a failure, never a skip. The one definition every test uses.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Records that the running test is skipped, and why.
pub fn skipped(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let exe = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let line = format!("SKIP {exe} {test}: {why}");
    // io::stderr() directly, not eprintln!: the harness captures only the print macros.
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(path) = std::env::var_os("NSRUN_TEST_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

//! `nsrun`: see `nsrun --help` and the README.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod cli;

fn main() {
    // First, so that the trace's origin is the start of nsrun's own code.
    nsrun::sandbox::trace::init_from_env();
    // `NSRUN_LOG=debug` (any tracing filter) shows the library's events on stderr: setup steps,
    // fallbacks and their reasons. Unset, nothing is printed. No thread is started, so the
    // helper mode below stays single-threaded.
    if let Ok(filter) = std::env::var("NSRUN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    }
    // The library's helper mode: a multithreaded caller runs sandboxes through us.
    nsrun::helper::run_if_helper();
    // The tool of `nsrun doctor`'s probe sandbox.
    nsrun::doctor::run_if_probe();
    std::process::exit(cli::main(std::env::args().collect()));
}

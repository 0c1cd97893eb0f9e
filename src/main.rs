//! `nsrun`: see `nsrun --help` and the README.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod cli;

fn main() {
    // The library's helper mode: a multithreaded caller runs sandboxes through us.
    nsrun::helper::run_if_helper();
    // The tool of `nsrun doctor`'s probe sandbox.
    nsrun::doctor::run_if_probe();
    std::process::exit(cli::main(std::env::args().collect()));
}

//! `nsrun`: see `nsrun --help` and the README.

mod cli;

fn main() {
    // First, so that the trace's origin is the start of nsrun's own code.
    nsrun::sandbox::trace::init_from_env();
    // The library's helper mode: a multithreaded caller runs sandboxes through us.
    nsrun::helper::run_if_helper();
    // The tool of `nsrun doctor`'s probe sandbox.
    nsrun::doctor::run_if_probe();
    std::process::exit(cli::main(std::env::args().collect()));
}

//! `nsrun`: see `nsrun --help` and the README.

mod cli;

fn main() {
    // The library's helper mode: a multithreaded caller runs sandboxes through us.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == nsrun::helper::HELPER_ARG)
    {
        std::process::exit(nsrun::helper::helper_main());
    }
    std::process::exit(cli::main(std::env::args().collect()));
}

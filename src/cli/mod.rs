//! The command line: parses, then calls the library. Nothing here that the library cannot do.

pub mod doctor;
pub mod image;
pub mod run;

use clap::{Parser, Subcommand};

/// An error that ends nsrun: one line on stderr and an exit status (125 for nsrun's own errors).
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    /// A bad flag or argument: Docker's 125.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 125,
            message: message.into(),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "nsrun",
    version,
    about = "Run untrusted tools in rootless containers, without a daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new sandbox.
    Run(run::RunArgs),
    /// Pull an image into the cache.
    Pull(image::PullArgs),
    /// List cached images.
    Images(image::ImagesArgs),
    /// Show a cached image's manifest, config and cache entry as JSON.
    Inspect(image::InspectArgs),
    /// Remove cached images.
    Rmi(image::RmiArgs),
    /// Remove unreferenced images and what interrupted pulls left.
    Gc(image::GcArgs),
    /// Check whether confined runs work here; say which setting refuses and the fix.
    Doctor(doctor::DoctorArgs),
}

/// Subcommand names, so that `nsrun IMAGE -- CMD` can be told from `nsrun SUBCOMMAND`.
const SUBCOMMANDS: &[&str] = &[
    "run", "help", "pull", "images", "inspect", "rmi", "gc", "doctor",
];

/// A clap error as the one line nsrun prints for every error: clap's first line, its tip if it
/// has one, and where to read more (clap's own rendering takes three to five lines).
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let tip = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    format!("{first}{tip}; see nsrun --help")
}

/// Parses `args` (including argv[0]) and runs the command; returns the exit status.
pub fn main(mut args: Vec<String>) -> i32 {
    // `nsrun IMAGE -- CMD` and `nsrun --rootfs DIR -- CMD` are `nsrun run …`.
    if let Some(first) = args.get(1) {
        let is_global = matches!(first.as_str(), "-h" | "--help" | "-V" | "--version");
        if !is_global && !SUBCOMMANDS.contains(&first.as_str()) {
            args.insert(1, "run".into());
        }
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // --help and --version: clap's own output, on stdout.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            eprintln!("nsrun: {}", one_line(&e));
            return 125;
        }
    };
    let result = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Pull(a) => image::pull(a),
        Command::Images(a) => image::images(a),
        Command::Inspect(a) => image::inspect(a),
        Command::Rmi(a) => image::rmi(a),
        Command::Gc(a) => image::gc(a),
        Command::Doctor(a) => doctor::main(a),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("nsrun: {}", f.message);
            f.code
        }
    }
}

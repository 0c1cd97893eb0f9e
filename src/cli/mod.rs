//! The command line: parses, then calls the library. Nothing here that the library cannot do.

pub mod docker_syntax;
pub mod doctor;
pub mod image;
pub mod log;
pub mod run;
pub mod serve;

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
    /// How much nsrun says on stderr: debug, info (default), warn or error.
    #[arg(long, global = true, value_name = "LEVEL", env = "NSRUN_LOG")]
    pub log_level: Option<String>,
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
    /// Serve the runner over HTTP to tenants with tokens (docs/serve-api.md).
    Serve(serve::ServeArgs),
    /// Add or revoke a tenant's token in a tokens file for `nsrun serve`.
    Token(serve::TokenArgs),
}

/// Subcommand names, so that `nsrun IMAGE -- CMD` can be told from `nsrun SUBCOMMAND`.
const SUBCOMMANDS: &[&str] = &[
    "run", "help", "pull", "images", "inspect", "rmi", "gc", "doctor", "serve", "token",
];

/// Options that podman takes before the subcommand (`podman --root DIR pull IMAGE`), each with
/// its value; nsrun's subcommands take them after it.
const LEADING_OPTIONS: &[&str] = &[
    "--root",
    "--registry-ca",
    "--insecure-registry",
    "--log-level",
];

/// The command line with a subcommand in second place: leading [`LEADING_OPTIONS`] are moved
/// behind the subcommand that follows them, and a line without one is `nsrun run …`
/// (`nsrun IMAGE -- CMD`, `nsrun --rootfs DIR -- CMD`). So the shorthand never takes a
/// subcommand's name, or an option's value, for an image.
fn with_subcommand(mut args: Vec<String>) -> Vec<String> {
    if args.len() < 2 {
        return args;
    }
    // Skip the leading options (with their values, `--opt VALUE` or `--opt=VALUE`).
    let mut i = 1;
    while let Some(a) = args.get(i) {
        let name = a.split('=').next().unwrap_or(a);
        if !LEADING_OPTIONS.contains(&name) {
            break;
        }
        i += if a.contains('=') { 1 } else { 2 };
    }
    let i = i.min(args.len());
    match args.get(i) {
        Some(sub) if SUBCOMMANDS.contains(&sub.as_str()) => {
            let sub = args.remove(i);
            args.insert(1, sub);
        }
        Some(first) if i == 1 && matches!(first.as_str(), "-h" | "--help" | "-V" | "--version") => {
        }
        _ => args.insert(1, "run".into()),
    }
    args
}

/// A clap error as the one line nsrun prints for every error: clap's first line, its tip if it
/// has one, and where to read more (clap's own rendering takes three to five lines).
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    // "the following required arguments were not provided:" names them on the next line.
    if first.ends_with(':') {
        if let Some(next) = lines.next() {
            first = format!("{first} {next}");
        }
    }
    let tip = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    format!("{first}{tip}; see nsrun --help")
}

/// Parses `args` (including argv[0]) and runs the command; returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    let args = with_subcommand(args);
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
    if let Some(l) = cli.log_level.as_deref().filter(|l| !l.is_empty()) {
        match l.parse::<log::Level>() {
            Ok(level) => log::set(level),
            Err(e) => {
                eprintln!("nsrun: --log-level: {e}");
                return 125;
            }
        }
    }
    let result = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Pull(a) => image::pull(a),
        Command::Images(a) => image::images(a),
        Command::Inspect(a) => image::inspect(a),
        Command::Rmi(a) => image::rmi(a),
        Command::Gc(a) => image::gc(a),
        Command::Doctor(a) => doctor::main(a),
        Command::Serve(a) => serve::main(a),
        Command::Token(a) => serve::token(a),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("nsrun: {}", f.message);
            f.code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Vec<String> {
        with_subcommand(s.split_whitespace().map(String::from).collect())
            .into_iter()
            .skip(1)
            .collect()
    }

    #[test]
    fn leading_options_go_behind_the_subcommand() {
        assert_eq!(
            line("nsrun --root /c pull alpine"),
            ["pull", "--root", "/c", "alpine"]
        );
        assert_eq!(line("nsrun --root=/c images"), ["images", "--root=/c"]);
        assert_eq!(
            line("nsrun --root /c --insecure-registry r:5000 pull r:5000/a"),
            [
                "pull",
                "--root",
                "/c",
                "--insecure-registry",
                "r:5000",
                "r:5000/a"
            ]
        );
        // The shorthand: whatever is not a subcommand runs, options included.
        assert_eq!(
            line("nsrun --root /c alpine id"),
            ["run", "--root", "/c", "alpine", "id"]
        );
        assert_eq!(line("nsrun alpine -- id"), ["run", "alpine", "--", "id"]);
        assert_eq!(
            line("nsrun --rootfs /r -- id"),
            ["run", "--rootfs", "/r", "--", "id"]
        );
        assert_eq!(line("nsrun gc"), ["gc"]);
        assert_eq!(line("nsrun --help"), ["--help"]);
        assert_eq!(
            line("nsrun --log-level debug images"),
            ["images", "--log-level", "debug"]
        );
        assert_eq!(line("nsrun --root"), ["run", "--root"]);
        // An image named like a subcommand needs `run`.
        assert_eq!(line("nsrun run pull"), ["run", "pull"]);
    }

    #[test]
    fn every_subcommand_is_known_to_the_shorthand() {
        use clap::CommandFactory;
        for sub in Cli::command().get_subcommands() {
            assert!(SUBCOMMANDS.contains(&sub.get_name()), "{}", sub.get_name());
        }
    }
}

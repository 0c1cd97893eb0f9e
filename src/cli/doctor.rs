//! `nsrun doctor [--json] [--proc MODE] [--root DIR]` and
//! `nsrun doctor --seccomp-profile docker|podman`.

use std::path::PathBuf;

use nsrun::doctor::{self, seccomp_profile, Options};

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of checking, print the seccomp profile for the worker's container: ENGINE's
    /// default (docker: shipped with nsrun; podman: this machine's) plus exactly the calls nsrun
    /// needs.
    #[arg(long, value_name = "ENGINE")]
    pub seccomp_profile: Option<String>,
    /// The /proc mode to probe with: fresh or host-bind.
    #[arg(long, value_name = "MODE", default_value = "fresh")]
    pub proc: String,
    /// Image cache directory to check (default as for `nsrun run`).
    #[arg(long, value_name = "DIR", env = "NSRUN_ROOT")]
    pub root: Option<PathBuf>,
}

/// Exit 0 when a confined run will work here, 1 when not (125: a bad flag).
pub fn main(a: DoctorArgs) -> Result<i32, Failure> {
    if let Some(engine) = &a.seccomp_profile {
        let json = seccomp_profile::for_engine(engine).map_err(Failure::usage)?;
        print!("{json}");
        return Ok(0);
    }
    let opts = Options {
        root: a.root.filter(|r| !r.as_os_str().is_empty()),
        proc: a.proc.parse().map_err(Failure::usage)?,
    };
    let report = doctor::diagnose(&doctor::Facts::gather(&opts));
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data serialises")
        );
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok { 0 } else { 1 })
}

//! Docker's image rules: how an image's config and a request make the command, environment,
//! working directory and user of a run.

use super::Error;
use crate::registry::manifest::ImageConfig;
use crate::sandbox::SandboxSpec;

/// The command line Docker builds: the image's Entrypoint (or `entrypoint`, where
/// `Some(&[])` clears it) followed by `args`, or by the image's Cmd when `args` is empty and
/// the entrypoint was not overridden (Docker drops the image's Cmd with `--entrypoint`).
///
/// ```
/// use nsrun::registry::manifest::ImageConfig;
/// use nsrun::runner::command_line;
/// let c = ImageConfig {
///     entrypoint: Some(vec!["/bin/tool".into()]),
///     cmd: Some(vec!["--help".into()]),
///     ..Default::default()
/// };
/// assert_eq!(command_line(&c, None, &[]).unwrap(), ["/bin/tool", "--help"]);
/// assert_eq!(command_line(&c, Some(&[]), &["sh".into()]).unwrap(), ["sh"]);
/// assert!(command_line(&ImageConfig::default(), None, &[]).is_err());
/// ```
pub fn command_line(
    config: &ImageConfig,
    entrypoint: Option<&[String]>,
    args: &[String],
) -> Result<Vec<String>, Error> {
    let argv = config.argv(entrypoint, args);
    if argv.is_empty() {
        return Err(Error::bad_spec(
            "no command specified: the image has no Entrypoint or Cmd; give one after the image",
        ));
    }
    Ok(argv)
}

/// Applies `config` to `spec` as `docker run` does: the command ([`command_line`]); the
/// image's Env under the spec's (the spec wins by key); the image's WorkingDir and User unless
/// the spec sets its own; the image's StopSignal unless the spec has one.
///
/// ```
/// use nsrun::registry::manifest::ImageConfig;
/// use nsrun::sandbox::SandboxSpec;
/// let c = ImageConfig {
///     cmd: Some(vec!["run".into()]),
///     env: vec!["PATH=/bin".into(), "MODE=a".into()],
///     working_dir: Some("/app".into()),
///     user: Some("1000".into()),
///     ..Default::default()
/// };
/// let mut s = SandboxSpec::default();
/// s.env = vec!["MODE=b".into()];
/// s.user = Some("0".into());
/// nsrun::runner::apply_image(&mut s, &c, None, &[]).unwrap();
/// assert_eq!(s.args, ["run"]);
/// assert_eq!(s.env, ["PATH=/bin", "MODE=b"]);
/// assert_eq!((s.cwd.as_deref(), s.user.as_deref()), (Some("/app"), Some("0")));
/// ```
pub fn apply_image(
    spec: &mut SandboxSpec,
    config: &ImageConfig,
    entrypoint: Option<&[String]>,
    args: &[String],
) -> Result<(), Error> {
    spec.args = command_line(config, entrypoint, args)?;
    spec.env = config.env_with(&spec.env);
    if spec.cwd.is_none() {
        spec.cwd = config.working_dir.clone().filter(|w| !w.is_empty());
    }
    if spec.user.is_none() {
        spec.user = config.user.clone().filter(|u| !u.is_empty());
    }
    if spec.stop_signal.is_none() {
        spec.stop_signal = config.stop_signal.clone().filter(|s| !s.is_empty());
    }
    Ok(())
}

//! The runner's errors: one enum a program can match, each with Docker's exit code, and
//! serialisable, so that the helper process can send it back as it is (docs/helper-protocol.md).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::registry::RegistryError;
use crate::sandbox::RunError;
use crate::store::StoreError;

/// Why a run produced no [`super::RunResult`]. Every message is one line.
///
/// ```
/// use nsrun::runner::Error;
/// let e = Error::CommandNotFound { command: "dnsx".into(), message: "exec: \"dnsx\": executable file not found in $PATH".into() };
/// assert_eq!(e.exit_code(), 127);
/// let json = serde_json::to_string(&e).unwrap();
/// assert!(json.contains(r#""kind":"command_not_found""#));
/// assert_eq!(serde_json::from_str::<Error>(&json).unwrap(), e);
/// ```
#[derive(Debug, Clone, Error, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Error {
    /// The request itself is wrong (a bad name, limit, env entry, mount, user…): fix the request.
    #[error("{message}")]
    BadSpec { message: String },
    /// The image is neither cached (with pull policy `never`) nor in its registry.
    #[error("{message}")]
    ImageNotFound { reference: String, message: String },
    /// The registry refused the credentials (or none were given and it wants some).
    #[error("{message}")]
    Auth { reference: String, message: String },
    /// Pulling failed for another reason (network, verification, unpacking, limits).
    #[error("{message}")]
    PullFailed { reference: String, message: String },
    /// The host refuses to create the sandbox; the message names the setting and the fix.
    #[error("{message}")]
    HostRefused { message: String },
    /// Setting up the sandbox failed at a named step with an errno.
    #[error("{message}")]
    Setup {
        step: String,
        errno: i32,
        message: String,
    },
    /// The command does not exist in the container (Docker's 127).
    #[error("{message}")]
    CommandNotFound { command: String, message: String },
    /// The command exists but cannot be executed (Docker's 126).
    #[error("{message}")]
    NotExecutable { command: String, message: String },
    /// Creating the run's scratch, writing an input or reading an output failed.
    #[error("{message}")]
    Files { path: String, message: String },
    /// Another failure of the sandbox machinery (cgroups, id maps, a system call).
    #[error("{message}")]
    Sandbox { message: String },
    /// The helper process could not be started or ended without an answer.
    #[error("{message}")]
    Helper { message: String },
    /// The run was cancelled (killed, or its handle dropped) before the tool started.
    #[error("the run was cancelled before the tool started")]
    Cancelled,
}

impl Error {
    /// Docker's convention: 127 command not found, 126 not executable, 125 everything else
    /// (nsrun's own failure).
    /// A stable name of the kind of failure, for machines (the service's `errorKind`):
    /// `badSpec`, `imageNotFound`, `auth`, `pullFailed`, `hostRefused`, `setup`,
    /// `commandNotFound`, `notExecutable`, `files`, `sandbox`, `helper` or `cancelled`.
    ///
    /// ```
    /// let e = nsrun::Error::Cancelled;
    /// assert_eq!(e.kind(), "cancelled");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadSpec { .. } => "badSpec",
            Error::ImageNotFound { .. } => "imageNotFound",
            Error::Auth { .. } => "auth",
            Error::PullFailed { .. } => "pullFailed",
            Error::HostRefused { .. } => "hostRefused",
            Error::Setup { .. } => "setup",
            Error::CommandNotFound { .. } => "commandNotFound",
            Error::NotExecutable { .. } => "notExecutable",
            Error::Files { .. } => "files",
            Error::Sandbox { .. } => "sandbox",
            Error::Helper { .. } => "helper",
            Error::Cancelled => "cancelled",
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound { .. } => 127,
            Error::NotExecutable { .. } => 126,
            _ => 125,
        }
    }

    pub(crate) fn bad_spec(message: impl Into<String>) -> Error {
        Error::BadSpec {
            message: message.into(),
        }
    }

    pub(crate) fn files(path: &std::path::Path, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Files {
            path: path.display().to_string(),
            message: format!("{what} {}: {e}", path.display()),
        }
    }

    /// Classifies an image cache or registry failure for `reference`.
    pub fn from_store(reference: &str, e: &StoreError) -> Error {
        let reference = reference.to_string();
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) | StoreError::Registry(RegistryError::NotFound { .. }) => {
                Error::ImageNotFound { reference, message }
            }
            StoreError::Registry(RegistryError::Unauthorized { .. } | RegistryError::Auth(_)) => {
                Error::Auth { reference, message }
            }
            StoreError::Reference(_) => Error::BadSpec { message },
            _ => Error::PullFailed { reference, message },
        }
    }
}

impl From<&RunError> for Error {
    fn from(e: &RunError) -> Error {
        let message = e.to_string();
        match e {
            RunError::Plan(_) => Error::BadSpec { message },
            RunError::Clone(_) | RunError::Idmap(_) => Error::HostRefused { message },
            RunError::Setup { what, err, .. } => Error::Setup {
                step: what.clone(),
                errno: *err as i32,
                message,
            },
            RunError::NotFound { cmd, .. } | RunError::NoSuchFile { cmd } => {
                Error::CommandNotFound {
                    command: cmd.clone(),
                    message,
                }
            }
            RunError::NotExecutable { cmd, .. } => Error::NotExecutable {
                command: cmd.clone(),
                message,
            },
            _ => Error::Sandbox { message },
        }
    }
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Error {
        Error::from(&e)
    }
}

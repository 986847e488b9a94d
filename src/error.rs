//! One error type for the whole tool, carrying the exit code DESIGN §6 assigns.
//!
//! Every message names the file, tensor or device it is about; the CLI prints it as one line.

use std::fmt;
use std::path::Path;

/// What kind of failure, which decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Exit 1: a verification that ran and found a mismatch.
    VerifyFail,
    /// Exit 2: bad input, unsupported model, missing device, I/O trouble.
    BadInput,
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::BadInput, message: message.into() }
    }

    pub fn verify_fail(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::VerifyFail, message: message.into() }
    }

    /// An I/O error on `path`, with what we were doing.
    pub fn io(path: &Path, doing: &str, err: std::io::Error) -> Self {
        Error::bad_input(format!("{}: {doing}: {err}", path.display()))
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::VerifyFail => 1,
            ErrorKind::BadInput => 2,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `bail!`-style shorthand for bad-input errors.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => { $crate::error::Error::bad_input(format!($($arg)*)) };
}

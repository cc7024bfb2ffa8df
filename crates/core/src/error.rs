//! Error types shared by every role: configuration errors (exit code 2) and runtime role errors
//! (exit code 1).

use std::fmt;

/// A configuration value that cannot be accepted. Always names the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `broker.frontend`; empty for the whole document.
    pub key: String,
    /// What is wrong and, where there is a fixed set, the valid choices.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error, with `prefix` put in front of its key (`broker` + `frontend`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.key = if self.key.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.key)
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration key `{}`: {}",
                self.key, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A role failed to start or failed while running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RoleError(pub String);

impl RoleError {
    /// A role error from anything printable.
    pub fn new(message: impl fmt::Display) -> Self {
        RoleError(message.to_string())
    }
}

impl From<std::io::Error> for RoleError {
    fn from(err: std::io::Error) -> Self {
        RoleError(err.to_string())
    }
}

//! Log output: tracing-subscriber writing text or JSON lines to stderr, filtered by
//! `--log-level`, else `RUST_LOG`, else `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use troupe_core::ConfigError;

/// Installs the global subscriber.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), ConfigError> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).map_err(|err| {
            ConfigError::new(
                "--log-level",
                format!(
                    "\"{level}\" is not a log filter ({err}); use a level (error, warn, info, debug, trace) or directives like \"info,troupe_broker=debug\""
                ),
            )
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
    Ok(())
}

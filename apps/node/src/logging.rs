//! Log output: tracing-subscriber writing text or JSON lines to stderr, filtered by
//! `--log-level`, else the config's `log_level`, else `RUST_LOG`, else `info`. The filter can
//! be replaced while the node runs (a reload applies a changed `log_level`).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::cli::LogFormat;
use troupe_core::ConfigError;

/// The installed filter's handle and its text.
struct Installed {
    handle: reload::Handle<EnvFilter, Registry>,
    shown: Mutex<String>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Parses a filter, with a message that says what a filter looks like.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|err| {
        format!(
            "\"{level}\" is not a log filter ({err}); use a level (error, warn, info, debug, trace) or directives like \"info,troupe_broker=debug\""
        )
    })
}

/// The filter for `level`, or `RUST_LOG`, else `info` when `level` is empty; and its text.
fn filter_for(level: &str) -> Result<(EnvFilter, String), String> {
    if !level.is_empty() {
        return Ok((parse_filter(level)?, level.to_string()));
    }
    match std::env::var("RUST_LOG") {
        Ok(env) if EnvFilter::try_new(&env).is_ok() => Ok((EnvFilter::new(&env), env)),
        _ => Ok((EnvFilter::new("info"), "info".to_string())),
    }
}

/// Installs the global subscriber with filter `level` (see the module doc for the default).
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), ConfigError> {
    let (filter, shown) = filter_for(level.unwrap_or_default())
        .map_err(|why| ConfigError::new("--log-level", why))?;
    let (filter, handle) = reload::Layer::new(filter);
    let output = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => Registry::default().with(filter).with(output).try_init(),
        LogFormat::Json => Registry::default()
            .with(filter)
            .with(output.json().with_current_span(true))
            .try_init(),
    };
    // A subscriber already installed (tests) is fine: the first one's filter stays.
    if result.is_ok() {
        let _ = INSTALLED.set(Installed {
            handle,
            shown: Mutex::new(shown),
        });
    }
    Ok(())
}

/// The filter in force, as text.
pub fn current_filter() -> String {
    INSTALLED
        .get()
        .map(|i| i.shown.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default()
}

/// Replaces the filter with `level` (empty: `RUST_LOG`, else `info`). Returns the filter's
/// text before and after.
pub fn set_filter(level: &str) -> Result<(String, String), String> {
    let (filter, shown) = filter_for(level)?;
    let Some(installed) = INSTALLED.get() else {
        return Err("no log subscriber is installed".into());
    };
    installed
        .handle
        .reload(filter)
        .map_err(|err| format!("cannot replace the log filter: {err}"))?;
    let mut current = installed.shown.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::mem::replace(&mut *current, shown.clone());
    Ok((before, shown))
}

/// The filter `level` would give, as text, without installing it.
pub fn filter_text(level: &str) -> String {
    filter_for(level)
        .map(|(_, shown)| shown)
        .unwrap_or_default()
}

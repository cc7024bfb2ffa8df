//! Log output: tracing-subscriber writing text or JSON lines to stderr, filtered by
//! `--log-level`, else the config's `log_level`, else `RUST_LOG`, else `info`. The filter can
//! be replaced while the node runs (a reload applies a changed `log_level`).
//!
//! Logging never waits on stderr. A formatted line goes into a bounded queue of
//! [`QUEUE_LINES`] lines that a thread of its own (`troupe-log`) writes out; no role, actor or
//! socket loop ever writes to stderr itself. When stderr cannot keep up (a full pipe nobody
//! reads, a slow terminal), the lines that find the queue full are dropped and counted, and a
//! `WARN` line `N log lines dropped: the log output could not keep up` (fields `dropped`, since
//! the last such line, and `total`, since the start) says so once the queue takes lines again:
//! at most one such line a second, the first one a second after the first drop.
//!
//! A service's output line (target `troupe_supervisor::output`) is printed as the service
//! wrote it, followed by its `service`, `stream` and `pid` fields, with no span and no target:
//! the node puts its own timestamp in front only of a line that has none, and its level word
//! (in text format) only in front of a line that states none. The event's level is the one
//! the line states, so filters and the `level` key of JSON lines see it.
//!
//! The queue is written out before the process exits: [`init`] has [`flush`] run by
//! `exit(3)`, which `std::process::exit` calls, so a line logged just before the exit (the
//! node's `node stopped`, `second signal; exiting at once`) is not lost. A program may also
//! call [`flush`] itself; the second call does nothing.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{Format, Full, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::cli::LogFormat;
use troupe_core::ConfigError;

/// Lines the queue in front of stderr holds; a line that finds it full is dropped.
pub const QUEUE_LINES: usize = 8192;

/// Shortest time between two lines saying how many lines were dropped.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(1);

/// The log target of services' output lines, and the names their events carry, saying what
/// the line already has (as the supervisor's `output` module names them).
const SERVICE_TARGET: &str = "troupe_supervisor::output";
const LINE_PLAIN: &str = "service output";
const LINE_WITH_TIME: &str = "service output with time";
const LINE_WITH_LEVEL: &str = "service output with level";
const LINE_WITH_TIME_AND_LEVEL: &str = "service output with time and level";

/// The installed filter's handle and its text, and the output queue.
struct Installed {
    handle: reload::Handle<EnvFilter, Registry>,
    shown: Mutex<String>,
    sink: Sink,
    /// Dropped (by [`flush`]) to write out the queue and stop its thread.
    guard: Mutex<Option<WorkerGuard>>,
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

/// Installs the global subscriber with filter `level` (see the module doc for the default),
/// writing to stderr through the queue.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), ConfigError> {
    let (filter, shown) = filter_for(level.unwrap_or_default())
        .map_err(|why| ConfigError::new("--log-level", why))?;
    let (filter, handle) = reload::Layer::new(filter);
    let (sink, guard, woken) = Sink::new(std::io::stderr(), QUEUE_LINES);
    let output = fmt::layer()
        .with_writer(sink.clone())
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => Registry::default()
            .with(filter)
            .with(output.event_format(NodeFormat::text()))
            .try_init(),
        LogFormat::Json => Registry::default()
            .with(filter)
            .with(
                output
                    .fmt_fields(JsonFields::new())
                    .event_format(NodeFormat::json()),
            )
            .try_init(),
    };
    // A subscriber already installed (tests) is fine: the first one's filter and queue stay
    // (this one's queue thread ends as `guard` is dropped).
    if result.is_ok() {
        let (dropped, closed) = (sink.dropped.clone(), sink.closed.clone());
        let _ = INSTALLED.set(Installed {
            handle,
            shown: Mutex::new(shown),
            sink,
            guard: Mutex::new(Some(guard)),
        });
        let _ = std::thread::Builder::new()
            .name("troupe-log-drops".into())
            .spawn(move || report_drops(&dropped, &woken, &closed));
        // SAFETY: atexit(3) only records the address of a function that lives as long as the
        // program; `flush_at_exit` cannot unwind (`flush` does not panic).
        unsafe { libc::atexit(flush_at_exit) };
    }
    Ok(())
}

/// [`flush`], run by `exit(3)`: `std::process::exit` (the end of `main`, a second signal)
/// writes the queue out first. `_exit(2)` (a forked child that failed to `exec`) does not.
extern "C" fn flush_at_exit() {
    flush();
}

/// Writes out the lines still queued and stops the queue's thread; for a program about to
/// exit (run at `exit(3)` anyway, see the module doc): lines logged afterwards are dropped. Waits at most about 1.1 s: a stderr that does not drain is given up
/// on (tracing-appender then prints one line on stdout saying so). Does nothing when no
/// subscriber was installed by [`init`], or the second time.
pub fn flush() {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    let guard = installed
        .guard
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // Dropping the guard waits for the thread to write what is queued (at most ~1.1 s).
    drop(guard);
    installed.sink.closed.store(true, Ordering::Release);
}

/// How many lines were dropped because stderr could not keep up, since [`init`].
pub fn dropped_lines() -> usize {
    INSTALLED
        .get()
        .map_or(0, |installed| installed.sink.dropped.dropped_lines())
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

/// Where formatted lines go: the queue in front of stderr, which never blocks; a line that
/// finds it full is counted in `dropped` and wakes the drop reporter.
#[derive(Clone)]
struct Sink {
    queue: NonBlocking,
    dropped: ErrorCounter,
    wake: SyncSender<()>,
    /// Set by [`flush`]: lines are dropped from then on.
    closed: Arc<AtomicBool>,
}

impl Sink {
    /// A queue of `lines` lines in front of `output`, the thread that writes it out (until
    /// its guard is dropped), and the channel that tells of dropped lines.
    fn new<W: Write + Send + 'static>(
        output: W,
        lines: usize,
    ) -> (Sink, WorkerGuard, Receiver<()>) {
        let (queue, guard) = NonBlockingBuilder::default()
            .buffered_lines_limit(lines)
            .lossy(true)
            .thread_name("troupe-log")
            .finish(output);
        let (wake, woken) = sync_channel(1);
        let sink = Sink {
            dropped: queue.error_counter(),
            queue,
            wake,
            closed: Arc::new(AtomicBool::new(false)),
        };
        (sink, guard, woken)
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter { sink: self }
    }
}

/// One line's writer (the formatter writes each line with one `write_all`).
struct SinkWriter<'a> {
    sink: &'a Sink,
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let sink = self.sink;
        if sink.closed.load(Ordering::Acquire) {
            return Ok(line.len());
        }
        let before = sink.dropped.dropped_lines();
        // Never blocks: a full queue drops the line and counts it.
        sink.queue.clone().write_all(line)?;
        if sink.dropped.dropped_lines() != before {
            let _ = sink.wake.try_send(());
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The drop reporter's thread: after lines were dropped, waits [`DROP_REPORT_EVERY`], logs
/// how many, and does so again every [`DROP_REPORT_EVERY`] until its line got into the queue
/// (the queue's thread then writes it once stderr drains).
fn report_drops(dropped: &ErrorCounter, woken: &Receiver<()>, closed: &AtomicBool) {
    let mut reported = 0;
    loop {
        while woken.try_recv().is_ok() {}
        while dropped.dropped_lines() <= reported {
            if woken.recv().is_err() {
                return;
            }
        }
        std::thread::sleep(DROP_REPORT_EVERY);
        if closed.load(Ordering::Acquire) {
            return;
        }
        let total = dropped.dropped_lines();
        let lines = total - reported;
        tracing::warn!(
            dropped = lines,
            total,
            "{lines} log lines dropped: the log output could not keep up"
        );
        // No line dropped meanwhile: this one is in the queue. Otherwise it may have been
        // dropped itself, and the next report counts from the same point.
        if dropped.dropped_lines() == total {
            reported = total;
        }
    }
}

/// The event format: the node's own events as tracing-subscriber formats them; a service's
/// line with what it lacks of the node's timestamp and level (see the module doc).
struct NodeFormat<F> {
    node: Format<F, SystemTime>,
    /// A line with neither timestamp nor level.
    plain: Format<F, SystemTime>,
    /// A line that states its level but has no timestamp.
    levelled: Format<F, SystemTime>,
    /// A line with a timestamp but no level.
    stamped: Format<F, ()>,
    /// A line with both.
    bare: Format<F, ()>,
}

impl NodeFormat<Full> {
    fn text() -> Self {
        let line = Format::default().with_target(false);
        NodeFormat {
            node: Format::default(),
            plain: line.clone(),
            levelled: line.clone().with_level(false),
            stamped: line.clone().without_time(),
            bare: line.without_time().with_level(false),
        }
    }
}

impl NodeFormat<Json> {
    /// In JSON the level is a key, always there: only the timestamp is left out.
    fn json() -> Self {
        let line = Format::default()
            .json()
            .with_current_span(false)
            .with_span_list(false);
        NodeFormat {
            node: Format::default().json().with_current_span(true),
            plain: line.clone(),
            levelled: line.clone(),
            stamped: line.clone().without_time(),
            bare: line.without_time(),
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for NodeFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    Format<F, SystemTime>: FormatEvent<S, N>,
    Format<F, ()>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if meta.target() != SERVICE_TARGET {
            return self.node.format_event(ctx, writer, event);
        }
        match meta.name() {
            LINE_PLAIN => self.plain.format_event(ctx, writer, event),
            LINE_WITH_LEVEL => self.levelled.format_event(ctx, writer, event),
            LINE_WITH_TIME => self.stamped.format_event(ctx, writer, event),
            LINE_WITH_TIME_AND_LEVEL => self.bare.format_event(ctx, writer, event),
            _ => self.node.format_event(ctx, writer, event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats `emit`'s events with `format` into a string.
    fn formatted<F>(format: NodeFormat<F>, json: bool, emit: impl FnOnce()) -> String
    where
        NodeFormat<F>: FormatEvent<Registry, tracing_subscriber::fmt::format::DefaultFields>
            + FormatEvent<Registry, JsonFields>
            + Send
            + Sync
            + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = out.clone();
            move || Captured(out.clone())
        };
        let layer = fmt::layer().with_writer(writer).with_ansi(false);
        if json {
            let subscriber =
                Registry::default().with(layer.fmt_fields(JsonFields::new()).event_format(format));
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let subscriber = Registry::default().with(layer.event_format(format));
            tracing::subscriber::with_default(subscriber, emit);
        }
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Events like the supervisor's, one per kind of line.
    fn service_lines() {
        let span = tracing::info_span!("role", node = "a");
        let _in = span.enter();
        tracing::info!(target: "troupe_node", "node ready");
        tracing::event!(name: LINE_PLAIN, target: SERVICE_TARGET, parent: None, tracing::Level::INFO, service = %"web", stream = "stdout", pid = 42u32, "listening");
        tracing::event!(name: LINE_WITH_LEVEL, target: SERVICE_TARGET, parent: None, tracing::Level::WARN, service = %"web", stream = "stderr", pid = 42u32, "WARN slow");
        tracing::event!(name: LINE_WITH_TIME, target: SERVICE_TARGET, parent: None, tracing::Level::INFO, service = %"web", stream = "stdout", pid = 42u32, "2024-05-01T12:00:00Z up");
        tracing::event!(name: LINE_WITH_TIME_AND_LEVEL, target: SERVICE_TARGET, parent: None, tracing::Level::ERROR, service = %"web", stream = "stdout", pid = 42u32, "2024-05-01 12:00:00 ERROR down");
    }

    /// The text after the node's timestamp (which ends at the first `Z `).
    fn after_time(line: &str) -> &str {
        assert!(line.starts_with("20"), "{line}");
        line.split_once("Z ").unwrap().1
    }

    #[test]
    fn text_lines_of_services_get_only_what_they_lack() {
        let out = formatted(NodeFormat::text(), false, service_lines);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(
            after_time(lines[0]),
            " INFO role{node=\"a\"}: troupe_node: node ready"
        );
        assert_eq!(
            after_time(lines[1]),
            " INFO listening service=web stream=\"stdout\" pid=42"
        );
        assert_eq!(
            after_time(lines[2]),
            "WARN slow service=web stream=\"stderr\" pid=42"
        );
        assert_eq!(
            lines[3],
            " INFO 2024-05-01T12:00:00Z up service=web stream=\"stdout\" pid=42"
        );
        assert_eq!(
            lines[4],
            "2024-05-01 12:00:00 ERROR down service=web stream=\"stdout\" pid=42"
        );
    }

    #[test]
    fn json_lines_of_services_keep_their_level_and_lose_only_a_second_timestamp() {
        let out = formatted(NodeFormat::json(), true, service_lines);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "{out}");
        let has_time: Vec<bool> = lines.iter().map(|l| l.get("timestamp").is_some()).collect();
        assert_eq!(has_time, [true, true, true, false, false]);
        let levels: Vec<&str> = lines.iter().map(|l| l["level"].as_str().unwrap()).collect();
        assert_eq!(levels, ["INFO", "INFO", "WARN", "INFO", "ERROR"]);
        assert_eq!(lines[0]["span"]["name"], "role");
        assert_eq!(
            lines[4]["fields"]["message"],
            "2024-05-01 12:00:00 ERROR down"
        );
        assert_eq!(lines[4]["fields"]["service"], "web");
        assert_eq!(lines[4]["fields"]["pid"], 42);
        assert!(lines[4].get("span").is_none());
    }

    /// An output that takes nothing until it is opened.
    struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_never_blocks_the_writer() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (sink, guard, woken) = Sink::new(Gate(gate.clone(), out.clone()), 4);
        let started = std::time::Instant::now();
        for i in 0..100 {
            sink.make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // 4 queued, at most one held by the stalled thread: the rest dropped and counted.
        let dropped = sink.dropped.dropped_lines();
        assert!((95..=96).contains(&dropped), "{dropped}");
        assert!(woken.try_recv().is_ok(), "the reporter was not woken");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard); // writes out what is queued
        let written = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 100 - dropped, "{written}");
        assert!(written.starts_with("line 0\n"), "{written}");
        // Once closed, lines go nowhere and are not counted.
        sink.closed.store(true, Ordering::Release);
        sink.make_writer().write_all(b"late\n").unwrap();
        assert_eq!(sink.dropped.dropped_lines(), dropped);
    }
}

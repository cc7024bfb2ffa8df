//! A service's stdout and stderr: split into lines (bounded), logged once each as a tracing
//! event (fields `service`, `stream`, `pid`) at the level the line states, if it states one,
//! matched against a `log_line` readiness check, and optionally appended (with a timestamp and
//! the stream) to a per-service log file that a writer thread rotates by size or age.
//!
//! What a line states about itself ([`header`]) is read from its first bytes only:
//!
//! - a leading timestamp: a date and time `YYYY-MM-DD` (or `YYYY/MM/DD`), `T` or a space,
//!   `HH:MM:SS`, optionally `.` or `,` and 1 to 9 digits, optionally `Z` or an offset
//!   (`+02:00`, `-0500`), optionally in brackets, then a space or the end of the line;
//! - a level: after the timestamp if there is one (and any spaces), a whole upper-case word
//!   `TRACE`, `DEBUG`, `INFO`, `WARN`, `WARNING`, `ERROR`, `FATAL` or `CRITICAL` (the last two
//!   are `ERROR`), optionally in brackets, followed by a space, a `:` or the end of the line;
//! - a JSON object (the line starts with `{`, at most [`JSON_MAX`] bytes): its level is its
//!   `"level"` string (any case, same words), and it has a timestamp when it has a
//!   `"timestamp"`, `"time"` or `"ts"` key.
//!
//! The event's level is the stated one, else `INFO`. Its metadata name ([`PLAIN`],
//! [`WITH_TIME`], [`WITH_LEVEL`], [`WITH_TIME_AND_LEVEL`]) tells the node's formatter what the
//! line already has, so that it adds its own timestamp only to a line without one, and its own
//! level word only to a line that states none.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::spec::LogFileSpec;

/// Splits a byte stream into lines of at most `max` bytes; a longer line is cut into pieces.
/// Holds at most `max` bytes between calls.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub(crate) fn new(max: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds `bytes`; calls `line` for each complete line (without its `\n` or `\r\n`).
    pub(crate) fn push(&mut self, mut bytes: &[u8], line: &mut impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let room = self.max - self.partial.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.partial.extend_from_slice(&window[..end]);
                    emit(&mut self.partial, line);
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.partial.len() >= self.max {
                        emit(&mut self.partial, line);
                    }
                }
            }
        }
    }

    /// End of stream: a last line without newline is emitted.
    pub(crate) fn finish(&mut self, line: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&mut self.partial, line);
        }
        self.partial = Vec::new();
    }
}

fn emit(partial: &mut Vec<u8>, line: &mut impl FnMut(&[u8])) {
    if partial.last() == Some(&b'\r') {
        partial.pop();
    }
    line(partial);
    partial.clear();
}

thread_local! {
    /// One read buffer per arbiter thread, shared by every reader on it: reads are
    /// synchronous (`try_read`), so a service costs no buffer while its pipe is quiet.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Most bytes read from one pipe before the reader lets the other tasks of its arbiter run (the
/// supervisor's own messages among them), so a service that writes without pause delays
/// nothing for long.
const READ_CHUNK: usize = 16 * 1024;

/// Reads `fd` (a pipe) until end of file, calling `line` for each line.
pub(crate) async fn read_lines(
    fd: OwnedFd,
    max_line: usize,
    mut line: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut splitter = LineSplitter::new(max_line);
    loop {
        pipe.readable().await?;
        let read = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            loop {
                match pipe.try_read(&mut buf) {
                    Ok(n) => {
                        splitter.push(&buf[..n], &mut line);
                        return Ok(Some(n));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })?;
        match read {
            Some(0) => {
                splitter.finish(&mut line);
                return Ok(());
            }
            // More may be waiting: read it after the arbiter's other tasks had their turn.
            Some(_) => tokio::task::yield_now().await,
            None => {}
        }
    }
}

/// The log target of services' lines (`--log-level info,troupe_supervisor::output=warn`).
pub(crate) const TARGET: &str = "troupe_supervisor::output";
/// Event name of a service line with neither a timestamp nor a level of its own.
pub(crate) const PLAIN: &str = "service output";
/// Event name of a service line that starts with a timestamp and states no level.
pub(crate) const WITH_TIME: &str = "service output with time";
/// Event name of a service line that states its level and has no timestamp.
pub(crate) const WITH_LEVEL: &str = "service output with level";
/// Event name of a service line that has both.
pub(crate) const WITH_TIME_AND_LEVEL: &str = "service output with time and level";

/// Longest line read as JSON for its level; a longer one counts as plain text.
pub(crate) const JSON_MAX: usize = 64 * 1024;

/// A level a service's line states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stated {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Stated {
    /// The level a word names (`WARNING` is `Warn`; `FATAL` and `CRITICAL` are `Error`).
    fn from_word(word: &str) -> Option<Stated> {
        Some(match word {
            "TRACE" => Stated::Trace,
            "DEBUG" => Stated::Debug,
            "INFO" => Stated::Info,
            "WARN" | "WARNING" => Stated::Warn,
            "ERROR" | "FATAL" | "CRITICAL" => Stated::Error,
            _ => return None,
        })
    }
}

/// What a line states about itself (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    /// It starts with a timestamp.
    pub(crate) time: bool,
    /// The level it states.
    pub(crate) level: Option<Stated>,
}

/// Reads what `line` states about itself: a leading timestamp, a level (see the module doc).
/// Looks at a bounded prefix, except for a JSON line (at most [`JSON_MAX`] bytes).
pub(crate) fn header(line: &str) -> Header {
    let bytes = line.as_bytes();
    let start = bytes.len() - bytes.trim_ascii_start().len();
    if bytes.get(start) == Some(&b'{') {
        return json_header(line);
    }
    match timestamp_len(bytes) {
        Some(n) => Header {
            time: true,
            level: level_word(bytes[n..].trim_ascii_start()),
        },
        None => Header {
            time: false,
            level: level_word(&bytes[start..]),
        },
    }
}

/// Length of a timestamp at the start of `b`, if one is there.
fn timestamp_len(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    let digits = |at: &mut usize, n: usize| -> Option<()> {
        let field = b.get(*at..*at + n)?;
        field.iter().all(u8::is_ascii_digit).then(|| *at += n)
    };
    let byte = |at: &mut usize, allowed: &[u8]| -> Option<u8> {
        let c = *b.get(*at).filter(|c| allowed.contains(c))?;
        *at += 1;
        Some(c)
    };
    let bracket = byte(&mut at, b"[").is_some();
    digits(&mut at, 4)?;
    let sep = byte(&mut at, b"-/")?;
    digits(&mut at, 2)?;
    byte(&mut at, &[sep])?;
    digits(&mut at, 2)?;
    byte(&mut at, b"T ")?;
    digits(&mut at, 2)?;
    byte(&mut at, b":")?;
    digits(&mut at, 2)?;
    byte(&mut at, b":")?;
    digits(&mut at, 2)?;
    if byte(&mut at, b".,").is_some() {
        let n = b[at..]
            .iter()
            .take(10)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if !(1..=9).contains(&n) {
            return None;
        }
        at += n;
    }
    match b.get(at) {
        Some(b'Z' | b'z') => at += 1,
        Some(b'+' | b'-') => {
            at += 1;
            digits(&mut at, 2)?;
            let colon = byte(&mut at, b":").is_some();
            if digits(&mut at, 2).is_none() && colon {
                return None;
            }
        }
        _ => {}
    }
    if bracket {
        byte(&mut at, b"]")?;
    }
    match b.get(at) {
        None => Some(at),
        Some(c) if c.is_ascii_whitespace() => Some(at),
        Some(_) => None,
    }
}

/// The level word at the start of `b` (`INFO`, `[WARN]`, `ERROR:`), if it is one.
fn level_word(b: &[u8]) -> Option<Stated> {
    let (bracket, b) = match b.first() {
        Some(b'[') => (true, &b[1..]),
        _ => (false, b),
    };
    // The longest word is CRITICAL: a longer run of capitals is no level word.
    let n = b
        .iter()
        .take(9)
        .take_while(|c| c.is_ascii_uppercase())
        .count();
    let mut after = &b[n..];
    if bracket {
        after = after.strip_prefix(b"]")?;
    }
    match after.first() {
        None | Some(b':') => {}
        Some(c) if c.is_ascii_whitespace() => {}
        Some(_) => return None,
    }
    Stated::from_word(std::str::from_utf8(&b[..n]).ok()?)
}

/// The header of a line that looks like a JSON object.
fn json_header(line: &str) -> Header {
    #[derive(serde::Deserialize)]
    struct Head {
        level: Option<serde_json::Value>,
        timestamp: Option<serde::de::IgnoredAny>,
        time: Option<serde::de::IgnoredAny>,
        ts: Option<serde::de::IgnoredAny>,
    }
    if line.len() > JSON_MAX {
        return Header::default();
    }
    let Ok(head) = serde_json::from_str::<Head>(line) else {
        return Header::default();
    };
    let level = match &head.level {
        Some(serde_json::Value::String(word)) if word.len() <= 8 => {
            Stated::from_word(&word.to_ascii_uppercase())
        }
        _ => None,
    };
    Header {
        time: head.timestamp.is_some() || head.time.is_some() || head.ts.is_some(),
        level,
    }
}

/// Logs one event for `text` with the service's fields, at the level the line states (else
/// `INFO`), named after what the line already has; outside any span, so it carries nothing
/// but the line and its three fields.
pub(crate) fn log_line(service: &str, stream: &'static str, pid: u32, text: &str) {
    use tracing::Level;
    macro_rules! event {
        ($name:expr, $level:expr) => {
            tracing::event!(
                name: $name,
                target: TARGET,
                parent: None,
                $level,
                service = %service,
                stream,
                pid,
                "{text}"
            )
        };
    }
    let head = header(text);
    match (head.time, head.level) {
        (false, None) => event!(PLAIN, Level::INFO),
        (true, None) => event!(WITH_TIME, Level::INFO),
        (false, Some(Stated::Trace)) => event!(WITH_LEVEL, Level::TRACE),
        (false, Some(Stated::Debug)) => event!(WITH_LEVEL, Level::DEBUG),
        (false, Some(Stated::Info)) => event!(WITH_LEVEL, Level::INFO),
        (false, Some(Stated::Warn)) => event!(WITH_LEVEL, Level::WARN),
        (false, Some(Stated::Error)) => event!(WITH_LEVEL, Level::ERROR),
        (true, Some(Stated::Trace)) => event!(WITH_TIME_AND_LEVEL, Level::TRACE),
        (true, Some(Stated::Debug)) => event!(WITH_TIME_AND_LEVEL, Level::DEBUG),
        (true, Some(Stated::Info)) => event!(WITH_TIME_AND_LEVEL, Level::INFO),
        (true, Some(Stated::Warn)) => event!(WITH_TIME_AND_LEVEL, Level::WARN),
        (true, Some(Stated::Error)) => event!(WITH_TIME_AND_LEVEL, Level::ERROR),
    }
}

/// Lines waiting for the log-file writer; beyond this they are dropped and counted.
const LOG_QUEUE: usize = 8192;

struct Record {
    file: Arc<LogFileSpec>,
    at: SystemTime,
    stream: &'static str,
    line: Vec<u8>,
}

/// Where services' lines go to be written to their log files, by a dedicated thread (file
/// writes never run on the arbiter).
#[derive(Clone)]
pub(crate) struct LogFiles {
    queue: SyncSender<Record>,
    dropped: Arc<AtomicU64>,
}

impl LogFiles {
    /// Starts the writer thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let (queue, records) = sync_channel::<Record>(LOG_QUEUE);
        troupe_core::span::spawn_role_thread(
            "troupe-svc-logs",
            tracing::Span::current(),
            "supervisor",
            move || {
                let mut writer = Writer::default();
                for record in records {
                    writer.write(&record.file, record.at, record.stream, &record.line);
                }
            },
        )?;
        Ok(LogFiles {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `line`, read from `stream` now, for `file`; never blocks.
    pub(crate) fn write(&self, file: &Arc<LogFileSpec>, stream: &'static str, line: &[u8]) {
        let record = Record {
            file: file.clone(),
            at: SystemTime::now(),
            stream,
            line: line.to_vec(),
        };
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped.is_multiple_of(10_000) {
                    tracing::warn!(
                        dropped,
                        file = %file.path.display(),
                        "log file writer is behind; output lines dropped from log files (still logged as events)"
                    );
                }
            }
        }
    }
}

/// A log file the writer holds open.
struct OpenFile {
    file: File,
    size: u64,
    /// When its first line was written: the file's age counts from here.
    born: SystemTime,
}

/// What [`Writer::warn_once`] says when a file cannot be opened, or rotated.
const OPEN: &str = "cannot open log file";
const ROTATE: &str = "cannot rotate log file";

#[derive(Default)]
struct Writer {
    open: HashMap<PathBuf, OpenFile>,
    /// The last error met per file and operation (open, rotate), so that each is logged once
    /// until that operation succeeds again.
    failed: HashMap<(PathBuf, &'static str), String>,
}

impl Writer {
    /// Appends `<timestamp> <stream> <line>` to the file, rotating it first when the line
    /// would make it larger than `max_bytes` or it is older than `max_age`.
    fn write(&mut self, spec: &LogFileSpec, at: SystemTime, stream: &str, line: &[u8]) {
        let mut record = Vec::with_capacity(STAMP_LEN + stream.len() + line.len() + 3);
        record.extend_from_slice(stamp(at).as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_bytes());
        record.push(b' ');
        record.extend_from_slice(line);
        record.push(b'\n');
        let needed = record.len() as u64;
        if !self.open.contains_key(&spec.path) && !self.reopen(spec, at) {
            return;
        }
        let due = self.open.get(&spec.path).is_some_and(|f| {
            let too_big = f.size + needed > spec.max_bytes;
            let too_old = spec.max_age.is_some_and(|age| {
                at.duration_since(f.born)
                    .is_ok_and(|lived| lived >= age.max(LogFileSpec::MIN_AGE))
            });
            f.size > 0 && (too_big || too_old)
        });
        if due {
            self.open.remove(&spec.path);
            match rotate(spec) {
                Ok(()) => {
                    self.failed.remove(&(spec.path.clone(), ROTATE));
                }
                Err(e) => self.warn_once(spec, ROTATE, e),
            }
            if !self.reopen(spec, at) {
                return;
            }
        }
        if let Some(f) = self.open.get_mut(&spec.path) {
            match f.file.write_all(&record) {
                Ok(()) => f.size += needed,
                Err(e) => {
                    tracing::warn!(file = %spec.path.display(), error = %e, "cannot write log file");
                    self.open.remove(&spec.path);
                }
            }
        }
    }

    /// Opens the file for appending; false (logged once) when it cannot be opened.
    fn reopen(&mut self, spec: &LogFileSpec, at: SystemTime) -> bool {
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.path);
        match opened {
            Ok(file) => {
                let meta = file.metadata().ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let born = if size == 0 {
                    at
                } else {
                    first_stamp(&spec.path)
                        .or_else(|| meta.and_then(|m| m.created().ok()))
                        .unwrap_or(at)
                };
                self.open
                    .insert(spec.path.clone(), OpenFile { file, size, born });
                self.failed.remove(&(spec.path.clone(), OPEN));
                true
            }
            Err(e) => {
                self.warn_once(spec, OPEN, e);
                false
            }
        }
    }

    /// Logs `what` failing for this file, unless it failed the same way last time.
    fn warn_once(&mut self, spec: &LogFileSpec, what: &'static str, error: std::io::Error) {
        let error = error.to_string();
        let key = (spec.path.clone(), what);
        if self.failed.get(&key) != Some(&error) {
            tracing::warn!(file = %spec.path.display(), %error, "{what}");
            self.failed.insert(key, error);
        }
    }
}

/// `path` → `path.1` → … → `path.<backups>` (the oldest is dropped); with no backups the
/// file is truncated.
fn rotate(spec: &LogFileSpec) -> std::io::Result<()> {
    let numbered = |n: u32| {
        let mut name = spec.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if spec.backups == 0 {
        return File::create(&spec.path).map(|_| ());
    }
    for n in (1..spec.backups).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(&spec.path, numbered(1))
}

/// Length of a log-file timestamp, `2024-05-01T12:00:00.123Z`.
const STAMP_LEN: usize = 24;

/// `at` as RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.123Z`); a time before
/// 1970 is written as 1970's first instant.
fn stamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(days);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The time a [`stamp`] stands for, if `text` is one.
fn parse_stamp(text: &[u8]) -> Option<SystemTime> {
    if text.len() != STAMP_LEN {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = &text[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let shape = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ];
    if shape.iter().any(|&(i, c)| text[i] != c) || text[23] != b'Z' {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let millis = number(20..23)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::try_from(year).ok()?, month, day)).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_millis(millis))
}

/// The timestamp of the first line of the log file at `path`, if it starts with one.
fn first_stamp(path: &std::path::Path) -> Option<SystemTime> {
    let mut head = Vec::with_capacity(STAMP_LEN);
    File::open(path)
        .ok()?
        .take(STAMP_LEN as u64)
        .read_to_end(&mut head)
        .ok()?;
    parse_stamp(&head)
}

/// Year, month, day of the day `days` after 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to the given date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let (month, day) = (month as i64, day as i64);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut s = LineSplitter::new(max);
        let mut push = |l: &[u8]| lines.push(String::from_utf8_lossy(l).into_owned());
        for chunk in chunks {
            s.push(chunk, &mut push);
        }
        s.finish(&mut push);
        lines
    }

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        assert_eq!(split(&[b"a\nb", b"c\r\n", b"d"], 100), ["a", "bc", "d"]);
        assert_eq!(split(&[b"abcdefgh\n"], 3), ["abc", "def", "gh"]);
        assert_eq!(split(&[b"ab", b"cd", b"e\n"], 2), ["ab", "cd", "e"]);
        assert_eq!(split(&[b"\n\n"], 10), ["", ""]);
        assert!(split(&[], 10).is_empty());
    }

    fn spec(dir: &tempfile::TempDir, max_bytes: u64, backups: u32) -> LogFileSpec {
        LogFileSpec {
            path: dir.path().join("svc.log"),
            max_bytes,
            backups,
            max_age: None,
        }
    }

    /// The texts of a log file's lines, each checked to be `<stamp> <stream> <text>`.
    fn texts(path: &std::path::Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let (at, rest) = line.split_at(STAMP_LEN);
                assert!(parse_stamp(at.as_bytes()).is_some(), "{line}");
                let (stream, text) = rest[1..].split_once(' ').unwrap();
                assert!(stream == "stdout" || stream == "stderr", "{line}");
                text.to_string()
            })
            .collect()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_714_564_800 + secs)
    }

    #[test]
    fn log_files_rotate_by_size_keeping_backups() {
        let dir = tempfile::tempdir().unwrap();
        // Each line is 40 bytes: 24 of timestamp, " stdout ", 7 of text and a newline.
        let spec = spec(&dir, 80, 2);
        let mut w = Writer::default();
        for i in 0..12 {
            w.write(&spec, at(i), "stdout", format!("line-{i:02}").as_bytes());
        }
        assert_eq!(texts(&spec.path), ["line-10", "line-11"]);
        assert_eq!(texts(&dir.path().join("svc.log.1")), ["line-08", "line-09"]);
        assert_eq!(texts(&dir.path().join("svc.log.2")), ["line-06", "line-07"]);
        assert!(!dir.path().join("svc.log.3").exists());
        let first = std::fs::read_to_string(&spec.path).unwrap();
        assert_eq!(
            first.lines().next(),
            Some("2024-05-01T12:00:10.000Z stdout line-10")
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_loses_its_lines_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LogFileSpec {
            path: dir.path().join("missing").join("svc.log"),
            ..spec(&dir, 1024, 1)
        };
        let mut w = Writer::default();
        w.write(&spec, at(0), "stdout", b"a");
        w.write(&spec, at(1), "stdout", b"b");
        assert_eq!(w.failed.len(), 1);
        assert!(w.open.is_empty());
        std::fs::create_dir(dir.path().join("missing")).unwrap();
        w.write(&spec, at(2), "stdout", b"c");
        assert!(w.failed.is_empty());
        assert_eq!(texts(&spec.path), ["c"]);
    }

    #[test]
    fn without_backups_the_file_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(&dir, 40, 0);
        let mut w = Writer::default();
        for line in ["aaaa", "bbbb", "cccc"] {
            w.write(&spec, at(0), "stderr", line.as_bytes());
        }
        assert_eq!(texts(&spec.path), ["cccc"]);
    }

    #[test]
    fn log_files_rotate_by_age_counted_from_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LogFileSpec {
            max_age: Some(Duration::from_secs(60)),
            ..spec(&dir, 1 << 20, 3)
        };
        let mut w = Writer::default();
        w.write(&spec, at(0), "stdout", b"a");
        w.write(&spec, at(59), "stdout", b"b");
        w.write(&spec, at(60), "stdout", b"c");
        assert_eq!(texts(&spec.path), ["c"]);
        assert_eq!(texts(&dir.path().join("svc.log.1")), ["a", "b"]);
        // A writer that reopens the file (a node started again) reads its age from its
        // first line.
        let mut again = Writer::default();
        again.write(&spec, at(100), "stdout", b"d");
        assert_eq!(texts(&spec.path), ["c", "d"]);
        again.write(&spec, at(120), "stdout", b"e");
        assert_eq!(texts(&spec.path), ["e"]);
        assert_eq!(texts(&dir.path().join("svc.log.1")), ["c", "d"]);
        assert_eq!(texts(&dir.path().join("svc.log.2")), ["a", "b"]);
        // A clock that goes back rotates nothing.
        again.write(&spec, at(0), "stdout", b"f");
        assert_eq!(texts(&spec.path), ["e", "f"]);
    }

    #[test]
    fn max_age_is_a_bounded_duration_and_errors_name_the_key() {
        let parse = |entry: &str| {
            let text = format!("[[services]]\nid = \"a\"\ncommand = \"x\"\n{entry}");
            serde_path_to_error::deserialize::<_, crate::SupervisorConfig>(toml::Deserializer::new(
                &text,
            ))
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
        };
        let config = parse("log_file = { path = \"/tmp/a.log\", max_age = \"1d\" }").unwrap();
        let file = config.services[0].log_file.clone().unwrap();
        assert_eq!(file.max_age, Some(Duration::from_secs(86_400)));
        assert_eq!(file.max_bytes, 10 * 1024 * 1024);
        // Shown as a status shows it, and read back.
        let shown = serde_json::to_value(&file).unwrap();
        assert_eq!(shown["max_age"], "86400s");
        let back: LogFileSpec = serde_json::from_value(shown).unwrap();
        assert_eq!(back, file);
        let unset = parse("log_file = { path = \"/tmp/a.log\" }").unwrap();
        let unset = unset.services[0].log_file.clone().unwrap();
        assert_eq!(unset.max_age, None);
        assert!(serde_json::to_value(&unset)
            .unwrap()
            .get("max_age")
            .is_none());
        for (bad, why) in [
            ("\"0s\"", "at least 1s"),
            ("\"500ms\"", "at least 1s"),
            ("\"367d\"", "at most 31622400s"),
            ("\"soon\"", "invalid duration"),
            ("3600", "needs a unit"),
        ] {
            let (key, message) = parse(&format!(
                "log_file = {{ path = \"/a.log\", max_age = {bad} }}"
            ))
            .unwrap_err();
            assert_eq!(key, "services[0].log_file.max_age", "{bad}: {message}");
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_and_read_back() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_709_251_199, "2024-02-29T23:59:59.000Z"),
            (1_714_564_800, "2024-05-01T12:00:00.000Z"),
            (4_102_444_800, "2100-01-01T00:00:00.000Z"),
        ];
        for (secs, text) in cases {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(stamp(time), text);
            assert_eq!(parse_stamp(text.as_bytes()), Some(time), "{text}");
        }
        let time = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        assert_eq!(stamp(time), "2024-05-01T12:00:00.123Z");
        assert_eq!(parse_stamp(b"2024-05-01T12:00:00.123Z"), Some(time));
        for bad in [
            &b"2024-05-01T12:00:00Z"[..],
            b"2024-13-01T12:00:00.000Z",
            b"2024-05-01 12:00:00.000Z",
            b"2024-05-01T12:00:00.000+",
            b"line-10 and more text",
            b"",
        ] {
            assert_eq!(parse_stamp(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(stamp(UNIX_EPOCH - Duration::from_secs(5)), cases[0].1);
    }

    #[test]
    fn a_line_states_its_timestamp_and_level_at_its_start() {
        let h = |time, level| Header { time, level };
        let cases = [
            ("listening on 80", h(false, None)),
            ("ERROR db down", h(false, Some(Stated::Error))),
            ("  WARN padded", h(false, Some(Stated::Warn))),
            ("[DEBUG] bracketed", h(false, Some(Stated::Debug))),
            ("WARNING:root:python", h(false, Some(Stated::Warn))),
            ("TRACE", h(false, Some(Stated::Trace))),
            ("FATAL: gone", h(false, Some(Stated::Error))),
            ("CRITICAL x", h(false, Some(Stated::Error))),
            ("INFO: ready", h(false, Some(Stated::Info))),
            ("Error handling enabled", h(false, None)),
            ("error: lower case is text", h(false, None)),
            ("INFORMATION follows", h(false, None)),
            ("INFO-ish", h(false, None)),
            ("[INFO ready", h(false, None)),
            ("the ERROR is later", h(false, None)),
            ("2024-05-01T12:00:00Z listening", h(true, None)),
            (
                "2024-05-01T12:00:00.123456Z  INFO t: m",
                h(true, Some(Stated::Info)),
            ),
            (
                "2024-05-01 12:00:00,123 ERROR x",
                h(true, Some(Stated::Error)),
            ),
            ("2024/05/01 12:00:00 plain go log", h(true, None)),
            (
                "[2024-05-01T12:00:00+02:00] [WARN] x",
                h(true, Some(Stated::Warn)),
            ),
            (
                "2024-05-01T12:00:00-0500 DEBUG x",
                h(true, Some(Stated::Debug)),
            ),
            ("2024-05-01T12:00:00", h(true, None)),
            ("2024-05-01T12:00:00.1234567890 x", h(false, None)),
            ("2024-05-01T12:00:00+02: x", h(false, None)),
            ("2024-05-01T12:00:00x", h(false, None)),
            ("2024-05/01T12:00:00 x", h(false, None)),
            ("[2024-05-01T12:00:00 x", h(false, None)),
            ("2024-05-01", h(false, None)),
            ("12:00:00 ERROR time alone is no timestamp", h(false, None)),
            (
                r#"{"level":"warn","msg":"x"}"#,
                h(false, Some(Stated::Warn)),
            ),
            (
                r#"{"timestamp":"2024-05-01T12:00:00Z","level":"ERROR","fields":{}}"#,
                h(true, Some(Stated::Error)),
            ),
            (r#"  {"time":1714564800,"level":30}"#, h(true, None)),
            (r#"{"ts":1.5,"msg":"x"}"#, h(true, None)),
            (r#"{"level":"loud"}"#, h(false, None)),
            (r#"{"level":"warn""#, h(false, None)),
            (r#"{"level":"warn","level":"info"}"#, h(false, None)),
            ("", h(false, None)),
        ];
        for (line, expected) in cases {
            assert_eq!(header(line), expected, "{line:?}");
        }
        let long = format!(r#"{{"level":"error","pad":"{}"}}"#, "x".repeat(JSON_MAX));
        assert_eq!(header(&long), h(false, None));
        assert_eq!(header(&"A".repeat(100_000)), h(false, None));
    }

    /// Records the events it sees: (name, level, root, fields).
    #[derive(Default)]
    struct Events(std::sync::Mutex<Vec<(String, tracing::Level, bool, String)>>);

    impl tracing::Subscriber for Events {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!("{}={v:?} ", f.name()));
                }
            }
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            let meta = event.metadata();
            assert_eq!(meta.target(), TARGET);
            self.0.lock().unwrap().push((
                meta.name().to_string(),
                *meta.level(),
                event.is_root(),
                fields.0,
            ));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_line_is_logged_once_at_its_own_level_named_after_what_it_has() {
        let events = Arc::new(Events::default());
        tracing::subscriber::with_default(events.clone(), || {
            let span = tracing::info_span!("role");
            let _in = span.enter();
            log_line("web", "stdout", 42, "listening");
            log_line("web", "stderr", 42, "2024-05-01T12:00:00Z started");
            log_line("web", "stderr", 42, "WARN slow");
            log_line("web", "stdout", 42, "2024-05-01 12:00:00 ERROR down");
        });
        let seen = events.0.lock().unwrap();
        let expected = [
            (PLAIN, tracing::Level::INFO, "stdout", "listening"),
            (
                WITH_TIME,
                tracing::Level::INFO,
                "stderr",
                "2024-05-01T12:00:00Z started",
            ),
            (WITH_LEVEL, tracing::Level::WARN, "stderr", "WARN slow"),
            (
                WITH_TIME_AND_LEVEL,
                tracing::Level::ERROR,
                "stdout",
                "2024-05-01 12:00:00 ERROR down",
            ),
        ];
        assert_eq!(seen.len(), expected.len());
        for ((name, level, root, fields), (e_name, e_level, stream, text)) in
            seen.iter().zip(expected)
        {
            assert_eq!((name.as_str(), *level, *root), (e_name, e_level, true));
            assert_eq!(
                fields,
                &format!("message={text} service=web stream=\"{stream}\" pid=42 ")
            );
        }
    }
}

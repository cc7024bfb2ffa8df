//! A service's stdout and stderr: split into lines (bounded), logged as tracing events tagged
//! with the service id, matched against a `log_line` readiness check, and optionally appended
//! to a per-service log file that a writer thread rotates by size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

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
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

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
        let done = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            loop {
                match pipe.try_read(&mut buf) {
                    Ok(0) => return Ok(true),
                    Ok(n) => splitter.push(&buf[..n], &mut line),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })?;
        if done {
            splitter.finish(&mut line);
            return Ok(());
        }
    }
}

/// Lines waiting for the log-file writer; beyond this they are dropped and counted.
const LOG_QUEUE: usize = 8192;

struct Record {
    file: Arc<LogFileSpec>,
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
                    writer.write(&record.file, &record.line);
                }
            },
        )?;
        Ok(LogFiles {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `line` for `file`; never blocks.
    pub(crate) fn write(&self, file: &Arc<LogFileSpec>, line: &[u8]) {
        let record = Record {
            file: file.clone(),
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

#[derive(Default)]
struct Writer {
    open: HashMap<PathBuf, (File, u64)>,
    failed: HashMap<PathBuf, String>,
}

impl Writer {
    fn write(&mut self, spec: &LogFileSpec, line: &[u8]) {
        let needed = line.len() as u64 + 1;
        let size = self.open.get(&spec.path).map(|(_, size)| *size);
        if size.is_some_and(|size| size > 0 && size + needed > spec.max_bytes) {
            self.open.remove(&spec.path);
            if let Err(e) = rotate(spec) {
                tracing::warn!(file = %spec.path.display(), error = %e, "cannot rotate log file");
            }
        }
        if !self.open.contains_key(&spec.path) {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&spec.path)
            {
                Ok(file) => {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.failed.remove(&spec.path);
                    self.open.insert(spec.path.clone(), (file, size));
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.failed.get(&spec.path) != Some(&e) {
                        tracing::warn!(file = %spec.path.display(), error = %e, "cannot open log file");
                        self.failed.insert(spec.path.clone(), e);
                    }
                    return;
                }
            }
            // A file reopened at or over its limit is rotated before the write.
            if self.open[&spec.path].1 + needed > spec.max_bytes && self.open[&spec.path].1 > 0 {
                return self.write_after_rotation(spec, line);
            }
        }
        if let Some((file, size)) = self.open.get_mut(&spec.path) {
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line);
            buf.push(b'\n');
            match file.write_all(&buf) {
                Ok(()) => *size += needed,
                Err(e) => {
                    tracing::warn!(file = %spec.path.display(), error = %e, "cannot write log file");
                    self.open.remove(&spec.path);
                }
            }
        }
    }

    fn write_after_rotation(&mut self, spec: &LogFileSpec, line: &[u8]) {
        self.open.remove(&spec.path);
        if let Err(e) = rotate(spec) {
            tracing::warn!(file = %spec.path.display(), error = %e, "cannot rotate log file");
            return;
        }
        self.write(spec, line);
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

    #[test]
    fn log_files_rotate_by_size_keeping_backups() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LogFileSpec {
            path: dir.path().join("svc.log"),
            max_bytes: 20,
            backups: 2,
        };
        let mut w = Writer::default();
        for i in 0..12 {
            w.write(&spec, format!("line-{i:02}").as_bytes()); // 8 bytes + newline
        }
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&spec.path), "line-10\nline-11\n");
        assert_eq!(read(&dir.path().join("svc.log.1")), "line-08\nline-09\n");
        assert_eq!(read(&dir.path().join("svc.log.2")), "line-06\nline-07\n");
        assert!(!dir.path().join("svc.log.3").exists());
    }

    #[test]
    fn without_backups_the_file_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LogFileSpec {
            path: dir.path().join("svc.log"),
            max_bytes: 10,
            backups: 0,
        };
        let mut w = Writer::default();
        for line in ["aaaa", "bbbb", "cccc"] {
            w.write(&spec, line.as_bytes());
        }
        assert_eq!(std::fs::read_to_string(&spec.path).unwrap(), "cccc\n");
    }
}

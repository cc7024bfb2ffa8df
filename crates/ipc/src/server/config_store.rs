//! Services' `config.json` files, read and written on a thread of their own so that file
//! I/O (and `fsync`) never runs on the hub's arbiter. Jobs run one at a time in the order
//! submitted, so a read always sees the last acknowledged write.
//!
//! A write is atomic: the new config goes to a temporary file in the same folder, is synced,
//! then renamed over `config.json`, and the folder is synced; a crash leaves the old config
//! or the new one, never a mix.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;
use tokio::sync::oneshot;

/// Most jobs waiting; more are refused at once.
const QUEUE: usize = 256;

enum Job {
    Write {
        path: PathBuf,
        config: Bytes,
        done: oneshot::Sender<Result<(), String>>,
    },
    Read {
        path: PathBuf,
        limit: usize,
        done: oneshot::Sender<Result<Vec<u8>, String>>,
    },
}

/// Handle on the config thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct ConfigStore {
    jobs: mpsc::SyncSender<Job>,
}

impl ConfigStore {
    /// Starts the thread, in the role's span.
    pub(crate) fn start(span: tracing::Span) -> io::Result<ConfigStore> {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        troupe_core::span::spawn_role_thread("ipc-config", span, "ipc", move || run(queue))?;
        Ok(ConfigStore { jobs })
    }

    /// Writes `config` to `path` atomically.
    pub(crate) async fn write(&self, path: PathBuf, config: Bytes) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.submit(Job::Write { path, config, done })?;
        result
            .await
            .unwrap_or_else(|_| Err("the config thread stopped".into()))
    }

    /// The contents of `path`, empty if it does not exist; an error if over `limit` bytes.
    pub(crate) async fn read(&self, path: PathBuf, limit: usize) -> Result<Vec<u8>, String> {
        let (done, result) = oneshot::channel();
        self.submit(Job::Read { path, limit, done })?;
        result
            .await
            .unwrap_or_else(|_| Err("the config thread stopped".into()))
    }

    fn submit(&self, job: Job) -> Result<(), String> {
        self.jobs.try_send(job).map_err(|err| match err {
            mpsc::TrySendError::Full(_) => {
                format!("{QUEUE} config reads and writes are already waiting; try again")
            }
            mpsc::TrySendError::Disconnected(_) => "the config thread stopped".into(),
        })
    }
}

fn run(queue: mpsc::Receiver<Job>) {
    for job in queue {
        match job {
            Job::Write { path, config, done } => {
                let result = write_atomically(&path, &config)
                    .map_err(|err| format!("writing {}: {err}", path.display()));
                match &result {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), bytes = config.len(), "service config persisted")
                    }
                    Err(why) => tracing::error!("{why}"),
                }
                let _ = done.send(result);
            }
            Job::Read { path, limit, done } => {
                let result = read_limited(&path, limit)
                    .map_err(|err| format!("reading {}: {err}", path.display()));
                let _ = done.send(result);
            }
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename (the node's one helper,
/// [`troupe_core::atomic_file::write_atomically`]), creating the folder first.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(folder)?;
    }
    troupe_core::atomic_file::write_atomically(path, data)
}

fn read_limited(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut data = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut data)?;
    if data.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file is larger than the {limit} bytes a reply can carry"),
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc").join("config.json");
        write_atomically(&path, b"{\"v\":1}").unwrap();
        write_atomically(&path, b"{\"v\":2}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"v\":2}");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
    }

    #[test]
    fn reads_are_empty_when_missing_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(read_limited(&path, 10).unwrap(), b"");
        fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_limited(&path, 10).unwrap(), b"0123456789");
        let err = read_limited(&path, 9).unwrap_err();
        assert!(err.to_string().contains("larger than the 9 bytes"), "{err}");
    }
}

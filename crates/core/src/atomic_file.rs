//! Replacing a file atomically: readers (and a crash) see either the old contents or the new
//! ones, never a mix, and two writers of the same file at once never share a temporary file.
//!
//! [`write_atomically`] blocks on the file system; call it from a blocking thread
//! (`tokio::task::spawn_blocking`), never on an arbiter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces the file at `path` with `bytes`, atomically and durably.
///
/// The bytes go to a temporary file in the same folder, named after `path` with this
/// process's id, a per-process counter and a random part (so concurrent writers of the same
/// path, in this process or another, never collide); it is fsynced, renamed over `path`, and
/// the folder is fsynced so that the rename survives a crash. On error the temporary file is
/// removed and `path` is left as it was. When several writers race, the last rename wins and
/// each one leaves `path` holding one writer's complete bytes.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = temporary_name(dir, path);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

fn temporary_name(dir: &Path, path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = random_u64();
    dir.join(format!(
        ".{name}.{}.{count}.{random:016x}.tmp",
        std::process::id()
    ))
}

/// A random value from the standard library's randomly keyed hasher (no extra dependency).
fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.load(Ordering::Relaxed));
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_files() {
        let dir = std::env::temp_dir().join(format!("troupe-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_path_never_mix_or_fail() {
        let dir = std::env::temp_dir().join(format!("troupe-atomic-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snapshot.json");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write_atomically(&path, &[b'a' + i; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]), "mixed contents");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let err = write_atomically(Path::new("/nonexistent/troupe/x.json"), b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}

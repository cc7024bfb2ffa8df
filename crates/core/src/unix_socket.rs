//! A node's Unix socket files (the ipc hub's, the control API's): claimed safely, never stolen
//! from a live node, removed on stop.
//!
//! Claiming `PATH`:
//! 1. lock `PATH.lock` (`flock`, held for the owner's life): two nodes starting at once on the
//!    same path cannot both proceed;
//! 2. if `PATH` exists it must be a socket, and nothing may answer on it: a live node's
//!    socket is refused, a socket nobody listens on (a dead node's) is stale and replaced;
//! 3. bind a temporary name in the same folder, set its mode (0600, or 0660 with a group),
//!    then rename it over `PATH`, so the socket never exists with looser permissions.
//!
//! Removal deletes `PATH` only while it is still the file this node bound.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks that `path` can be a Unix socket address.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "\"{}\" is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            path.display()
        ));
    }
    if path.file_name().is_none() {
        return Err(format!("\"{}\" does not name a file", path.display()));
    }
    Ok(())
}

/// The default path of node `node`'s socket with extension `ext`:
/// `$XDG_RUNTIME_DIR/troupe-NODE.EXT`, else `/tmp/troupe-NODE.EXT`.
pub fn runtime_socket_path(node: &str, ext: &str) -> PathBuf {
    let file = format!("troupe-{}.{ext}", file_safe(node));
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() && PathBuf::from(&dir).is_dir() => {
            PathBuf::from(dir).join(file)
        }
        _ => PathBuf::from("/tmp").join(file),
    }
}

/// `name` with every character that is not alphanumeric, `.`, `_` or `-` replaced by `_`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How long the liveness probe waits for an existing socket to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the socket could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The path cannot be a socket address.
    #[error("{0}")]
    BadPath(String),
    /// Another node holds the lock.
    #[error("{path}: another node is starting or running on it (lock {lock} is held)", path = .path.display(), lock = .lock.display())]
    Locked {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A live node answers on the path.
    #[error("{}: a live node is listening on it; not taking it over", .0.display())]
    Live(PathBuf),
    /// The path exists and is not a socket.
    #[error("{}: the path exists and is not a socket; not replacing it", .0.display())]
    NotASocket(PathBuf),
    /// The group does not exist.
    #[error("socket_group \"{0}\": no such group")]
    NoSuchGroup(String),
    /// A system call failed.
    #[error("{path}: {what}: {source}", path = .path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The claimed socket file and its lock; see the module doc.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
    lock_path: PathBuf,
    lock: Option<Flock<File>>,
}

/// The group given access, by name or number.
pub fn resolve_group(group: &str) -> Result<Option<u32>, SocketError> {
    if group.is_empty() {
        return Ok(None);
    }
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Some(gid));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
        _ => Err(SocketError::NoSuchGroup(group.to_string())),
    }
}

/// Claims `path` and returns the listening socket; see the module doc.
pub async fn claim(
    path: &Path,
    group: Option<u32>,
) -> Result<(UnixListener, SocketFile), SocketError> {
    check_socket_path(path).map_err(SocketError::BadPath)?;
    let owned = path.to_path_buf();
    let lock = blocking(move || lock(&owned, group)).await?;
    if is_socket(path)? {
        probe(path).await?;
        tracing::info!(socket = %path.display(), "replacing a stale socket file left by a node that is gone");
    }
    let owned = path.to_path_buf();
    let (listener, identity) = blocking(move || bind_in_place(&owned, group)).await?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            identity,
            lock_path: lock_path(path),
            lock: Some(lock),
        },
    ))
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file (if it is still this node's) and the lock. Returns what went
    /// wrong, for the caller to log on the role's thread.
    pub fn remove(mut self) -> Option<String> {
        let problem = match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => fs::remove_file(&self.path)
                .err()
                .map(|err| format!("cannot remove the socket file: {err}")),
            Ok(_) => Some("the socket file was replaced by someone else; leaving it".into()),
            Err(_) => None,
        };
        // Removed while still locked; a node that opened the old lock file sees that it is
        // no longer the file at the path and tries again (see `lock`).
        let _ = fs::remove_file(&self.lock_path);
        drop(self.lock.take());
        problem
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SocketError> + Send + 'static,
) -> Result<T, SocketError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| Err(SocketError::BadPath(format!("setup task failed: {err}"))))
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn lock(path: &Path, group: Option<u32>) -> Result<Flock<File>, SocketError> {
    ensure_parent(path, group)?;
    let lock_path = lock_path(path);
    for _ in 0..5 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(path, "opening the lock file"))?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(SocketError::Locked {
                    path: path.to_path_buf(),
                    lock: lock_path,
                })
            }
            Err((_, errno)) => {
                return Err(SocketError::Io {
                    path: path.to_path_buf(),
                    what: "locking the lock file",
                    source: io::Error::from(errno),
                })
            }
        };
        // The file may have been removed by the node that held it between our open and our
        // lock; then the lock is on a file nobody else will see.
        let held = locked
            .metadata()
            .map_err(io_err(path, "reading the lock file"))?;
        match fs::metadata(&lock_path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(locked),
            _ => continue,
        }
    }
    Err(SocketError::Locked {
        path: path.to_path_buf(),
        lock: lock_path,
    })
}

/// Creates the socket's folder if it is missing: private, or open to the group's members
/// for reaching the socket (mode 0710).
fn ensure_parent(path: &Path, group: Option<u32>) -> Result<(), SocketError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io_err(path, "creating its folder"))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(parent, None, Some(gid))
            .map_err(io_err(path, "giving its folder to the group"))?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o710))
            .map_err(io_err(path, "setting its folder's mode"))?;
    }
    Ok(())
}

fn is_socket(path: &Path) -> Result<bool, SocketError> {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(true),
        Ok(_) => Err(SocketError::NotASocket(path.to_path_buf())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_err(path, "inspecting the existing file")(err)),
    }
}

/// Fails if something answers on the socket at `path`.
async fn probe(path: &Path) -> Result<(), SocketError> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(_)) => Err(SocketError::Live(path.to_path_buf())),
        // Connected-but-unanswered counts as live: a busy node is still a node.
        Err(_) => Err(SocketError::Live(path.to_path_buf())),
        Ok(Err(err))
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            Ok(())
        }
        Ok(Err(err)) => Err(io_err(path, "probing the existing socket")(err)),
    }
}

fn bind_in_place(
    path: &Path,
    group: Option<u32>,
) -> Result<(UnixListener, (u64, u64)), SocketError> {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(name);
    let _ = fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(io_err(path, "binding"))?;
    let setup = (|| {
        if let Some(gid) = group {
            std::os::unix::fs::chown(&temp, None, Some(gid))
                .map_err(io_err(path, "giving the socket to its group"))?;
        }
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode))
            .map_err(io_err(path, "setting the socket's mode"))?;
        fs::rename(&temp, path).map_err(io_err(path, "moving the socket into place"))?;
        let meta = fs::symlink_metadata(path).map_err(io_err(path, "inspecting the socket"))?;
        Ok((meta.dev(), meta.ino()))
    })();
    match setup {
        Ok(identity) => {
            listener
                .set_nonblocking(true)
                .map_err(io_err(path, "setting the socket non-blocking"))?;
            Ok((listener, identity))
        }
        Err(err) => {
            let _ = fs::remove_file(&temp);
            Err(err)
        }
    }
}

//! Containment: nothing a service starts outlives it, or the node.
//!
//! # Mechanisms
//!
//! - **cgroup** (preferred): where the node can create cgroups in the cgroup v2 hierarchy
//!   (the unified one, or the unified part of a hybrid layout such as
//!   `/sys/fs/cgroup/unified`), every service runs in a cgroup of its own,
//!   `<the node's cgroup>/troupe-<node>-<key>/<service>`. A service joins it in the child,
//!   before `execve`, so even its first fork is inside. When the service stops or crashes,
//!   `cgroup.kill` ends every process in it, whatever they did: forks, `setsid`, double forks,
//!   process groups of their own.
//!
//!   The node also starts a **guard**: a tiny process (`troupe __guard`) that holds the read
//!   end of a pipe whose write end only the node holds. When the node dies, even by SIGKILL,
//!   the pipe closes and the guard writes `cgroup.kill` of the node's services folder, so no
//!   service survives its node. Should the guard have been killed too, the next start of the
//!   node with the same name and control socket finds the folder, kills what is left in it
//!   before any service starts, and logs what it found.
//! - **process group** (fallback, weaker): each service leads its own session and process
//!   group, signals for a stop go to the group, and `PR_SET_PDEATHSIG` kills the service's
//!   main process when the node dies. A process that leaves the group (`setsid`, a double
//!   fork) escapes; the node says so at start.
//!
//! In both, the node is a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphans of its services
//! are re-parented to it and reaped ([`reap_orphans`]) rather than left as zombies, and
//! services get only descriptors 0 to 2 (see `exec.rs`).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How the node's services are contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// A cgroup v2 per service, with `cgroup.kill`, and the guard for the node's death.
    Cgroup,
    /// The process group and the parent-death signal (a process that leaves the group
    /// escapes).
    ProcessGroup,
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mechanism::Cgroup => "cgroup",
            Mechanism::ProcessGroup => "process group",
        })
    }
}

/// The node's containment, set up once by [`setup`].
#[derive(Debug)]
pub struct Containment {
    /// The mechanism services get.
    pub mechanism: Mechanism,
    /// The node's services folder in the cgroup hierarchy (with [`Mechanism::Cgroup`]).
    pub services_dir: Option<PathBuf>,
    /// Why the cgroup mechanism is not available, when it is not.
    pub why_not: Option<String>,
    /// The services folder as `/proc/<pid>/cgroup` names it (`/troupe-…`).
    cgroup_path: Option<String>,
}

static CONTAINMENT: OnceLock<Containment> = OnceLock::new();

/// The node's containment: what [`setup`] chose, or the process group when it did not run.
pub fn current() -> &'static Containment {
    CONTAINMENT.get_or_init(|| Containment {
        mechanism: Mechanism::ProcessGroup,
        services_dir: None,
        why_not: Some("containment was not set up".into()),
        cgroup_path: None,
    })
}

/// How service `id`'s processes are contained, for operators: `cgroup <path>` or
/// `process group`.
pub fn describe(id: &str) -> String {
    match &current().services_dir {
        Some(dir) => format!("cgroup {}", dir.join(id).display()),
        None => current().mechanism.to_string(),
    }
}

/// What a start found left over from an earlier run of the same node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Services whose cgroups still held processes, with how many.
    pub services: Vec<(String, usize)>,
}

/// Chooses the mechanism for node `node` (whose instance on this machine `key` names, e.g.
/// its control socket's path), kills what an earlier run of it left behind, and makes the
/// node a child subreaper. Blocking (file system); call it once, off an arbiter, before any
/// service starts.
pub fn setup(node: &str, key: &str) -> (&'static Containment, Leftovers) {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot become a child subreaper; orphans of services go to init");
    }
    let (containment, leftovers) = match cgroup_services_dir(node, key) {
        Ok((dir, cgroup_path)) => {
            let leftovers = sweep(&dir);
            (
                Containment {
                    mechanism: Mechanism::Cgroup,
                    services_dir: Some(dir),
                    why_not: None,
                    cgroup_path: Some(cgroup_path),
                },
                leftovers,
            )
        }
        Err(why) => (
            Containment {
                mechanism: Mechanism::ProcessGroup,
                services_dir: None,
                why_not: Some(why),
                cgroup_path: None,
            },
            Leftovers::default(),
        ),
    };
    let _ = CONTAINMENT.set(containment);
    (current(), leftovers)
}

/// Sets up containment for the node's supervisor (see [`setup`]), logs the mechanism and what
/// an earlier run left, starts the guard, and reaps adopted orphans on every SIGCHLD for as
/// long as the calling arbiter runs. Called once, by the `supervisor` role as it starts.
pub async fn start_for_node(node: String, key: String) -> &'static Containment {
    let setup = tokio::task::spawn_blocking(move || setup(&node, &key)).await;
    let (containment, leftovers) = match setup {
        Ok(done) => done,
        Err(_) => (current(), Leftovers::default()),
    };
    match (containment.mechanism, &containment.why_not) {
        (Mechanism::Cgroup, _) => tracing::info!(
            mechanism = %containment.mechanism,
            cgroup = %containment.services_dir.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            "services are contained in cgroups: everything a service starts is killed with it, and with the node"
        ),
        (Mechanism::ProcessGroup, why) => tracing::warn!(
            mechanism = %containment.mechanism,
            why = why.as_deref().unwrap_or_default(),
            "services are contained by process group only (weaker: a process that leaves its group, such as a double-forked daemon, escapes)"
        ),
    }
    for (service, processes) in &leftovers.services {
        tracing::warn!(
            service,
            processes,
            "killed processes left by a service of an earlier run of this node"
        );
    }
    if let Some(dir) = containment.services_dir.clone() {
        let started = tokio::task::spawn_blocking(move || crate::process::start_guard(&dir)).await;
        match started {
            Ok(Ok(pid)) => {
                let _ = GUARD.set(pid);
                tracing::debug!(pid, "guard started: services die with the node")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot start the guard; services outliving a killed node are killed at its next start")
            }
            Err(_) => {}
        }
    }
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(mut children) => {
            actix_rt::spawn(async move {
                while children.recv().await.is_some() {
                    let _ = tokio::task::spawn_blocking(reap_orphans).await;
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGCHLD; adopted orphans stay zombies")
        }
    }
    containment
}

/// `troupe __guard DIR`: waits until its stdin (a pipe only the node holds open) closes,
/// then kills every process under the cgroup folder `DIR` and removes the emptied cgroups.
/// Returns the exit code.
pub fn run_guard(dir: &Path) -> i32 {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: read(2) into a buffer we own.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            break;
        }
    }
    let code = match fs::write(dir.join("cgroup.kill"), "1") {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(_) => 1,
    };
    // The node is gone: leave no empty cgroups behind either.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            remove_when_empty(&entry.path(), Duration::from_secs(1));
        }
    }
    let _ = fs::remove_dir(dir);
    code
}

/// Removes the node's services folder and its service cgroups once empty (at a clean stop;
/// blocking, at most half a second per cgroup still emptying).
pub fn remove_services_dir() {
    let Some(dir) = &current().services_dir else {
        return;
    };
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            // The last processes may take a moment to be reaped once killed.
            remove_when_empty(&entry.path(), Duration::from_millis(500));
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The cgroup v2 mount point in `mountinfo` (`/proc/self/mountinfo`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// This process's cgroup v2 path in `cgroup` (`/proc/self/cgroup`): the `0::` line.
fn own_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim().to_string())
}

/// The folder name for node `node` whose instance `key` names: readable, and distinct for
/// two nodes of the same name on one machine.
fn folder_name(node: &str, key: &str) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("troupe-{safe}-{:08x}", crc32fast::hash(key.as_bytes()))
}

/// Creates (or finds) the node's services folder in the cgroup v2 hierarchy, returning its
/// path and its name within the hierarchy; the error says why the cgroup mechanism cannot be
/// used.
fn cgroup_services_dir(node: &str, key: &str) -> Result<(PathBuf, String), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
    let cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own_cgroup(&cgroup).ok_or("this process is in no cgroup v2")?;
    let parent = mount.join(own.trim_start_matches('/'));
    let folder = folder_name(node, key);
    let dir = parent.join(&folder);
    let cgroup_path = format!("{}/{folder}", own.trim_end_matches('/'));
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create cgroup {}: {e} (the node needs write access to its cgroup, e.g. root or systemd's Delegate=yes)",
                dir.display()
            ))
        }
    }
    if !dir.join("cgroup.kill").exists() {
        let _ = fs::remove_dir(&dir);
        return Err(format!(
            "cgroup {} has no cgroup.kill (Linux 5.14 or later is needed)",
            dir.display()
        ));
    }
    Ok((dir, cgroup_path))
}

/// Kills whatever an earlier run left in `dir` and removes its empty service cgroups.
fn sweep(dir: &Path) -> Leftovers {
    let mut leftovers = Leftovers::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return leftovers;
    };
    let children: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    for child in &children {
        let count = count_procs(child);
        if count > 0 {
            let name = child
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            leftovers.services.push((name, count));
        }
    }
    if !leftovers.services.is_empty() {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
    for child in &children {
        remove_when_empty(child, Duration::from_secs(1));
    }
    leftovers
}

fn count_procs(dir: &Path) -> usize {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

/// Removes cgroup `dir` once its processes are gone, waiting at most `within`.
fn remove_when_empty(dir: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return false,
        }
    }
}

/// A service's cgroup.
#[derive(Debug)]
pub(crate) struct ServiceCgroup {
    dir: PathBuf,
}

impl ServiceCgroup {
    /// The cgroup of service `id`, created if needed; `None` without the cgroup mechanism.
    pub(crate) fn for_service(id: &str) -> io::Result<Option<ServiceCgroup>> {
        let Some(services) = &current().services_dir else {
            return Ok(None);
        };
        let dir = services.join(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(Some(ServiceCgroup { dir }))
    }

    /// Its `cgroup.procs`, open for the child to join it.
    pub(crate) fn procs(&self) -> io::Result<OwnedFd> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .map(OwnedFd::from)
    }

    /// Kills every process in it. Gone already is fine.
    pub(crate) fn kill(&self) {
        match fs::write(self.dir.join("cgroup.kill"), "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot kill the service's cgroup")
            }
        }
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

/// Kills every process of every service of this node, whatever state the supervisor is in
/// (a role that did not stop in time), and removes the emptied cgroups (waiting up to a
/// second each). Returns whether a kill was sent. Blocking.
pub fn kill_everything() -> bool {
    match &current().services_dir {
        Some(dir) => {
            let killed = fs::write(dir.join("cgroup.kill"), "1").is_ok();
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                    remove_when_empty(&entry.path(), Duration::from_secs(1));
                }
            }
            let _ = fs::remove_dir(dir);
            killed
        }
        None => {
            for pid in own_children() {
                // SAFETY: killpg(2) with integers; a group already gone is not an error.
                unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
            }
            true
        }
    }
}

/// Children the node started itself (services, probes), which their watchers reap; any
/// other child of the node is an orphan it adopted as subreaper.
static OWN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
/// Held (shared) by spawners from `clone` until the child is in [`OWN`]; taken (exclusive)
/// by [`reap_orphans`], so that it never reaps a child whose watcher is being set up.
pub(crate) static SPAWNING: RwLock<()> = RwLock::new(());

/// The guard's pid: reaped like an orphan should it die before the node.
static GUARD: OnceLock<u32> = OnceLock::new();

/// Sessions of the services started most recently (each service leads its own): with the
/// process-group mechanism, an adopted orphan is one of theirs when it is in one of them.
static SERVICE_SESSIONS: Mutex<std::collections::VecDeque<u32>> =
    Mutex::new(std::collections::VecDeque::new());
/// Sessions remembered for that.
const SESSIONS_KEPT: usize = 8192;

/// Records a child the node started itself; its watcher reaps it.
pub(crate) fn adopt(pid: u32) {
    let mut sessions = SERVICE_SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    if sessions.len() == SESSIONS_KEPT {
        sessions.pop_front();
    }
    sessions.push_back(pid);
    drop(sessions);
    OWN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(pid);
}

/// Forgets a child the node reaped itself.
pub(crate) fn forget(pid: u32) {
    if let Some(own) = OWN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        own.remove(&pid);
    }
}

fn own_children() -> Vec<u32> {
    OWN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|own| own.iter().copied().collect())
        .unwrap_or_default()
}

/// The node's children, from `/proc/self/task/*/children`.
fn children() -> Vec<u32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether child `pid` is an orphan of a service that the node adopted as subreaper: in a
/// service's cgroup, or (process groups) in a service's session. Children the program
/// embedding the node started otherwise are left to it.
fn adopted_from_a_service(pid: u32) -> bool {
    match &current().cgroup_path {
        Some(services) => fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| own_cgroup(&text))
            .is_some_and(|path| {
                path.strip_prefix(services.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            }),
        None => {
            let session = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| session_of(&stat));
            let sessions = SERVICE_SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
            session.is_some_and(|sid| sessions.contains(&sid))
        }
    }
}

/// The session id in a `/proc/<pid>/stat` line (the sixth field; the name, second, may hold
/// spaces and parentheses).
fn session_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(3)?.parse().ok()
}

/// Reaps every exited orphan of a service that the node adopted (see
/// [`adopted_from_a_service`]); the node's own children are reaped by their watchers. Returns
/// how many. Blocking (reads /proc); run it off the arbiter on SIGCHLD.
pub(crate) fn reap_orphans() -> usize {
    let _quiet = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
    let own: HashSet<u32> = own_children().into_iter().collect();
    let mut reaped = 0;
    for pid in children().into_iter().filter(|pid| {
        !own.contains(pid) && (GUARD.get() == Some(pid) || adopted_from_a_service(*pid))
    }) {
        // SAFETY: an all-zero siginfo_t is valid; waitid(2) on one pid writes into this
        // local, and WNOHANG never blocks.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is valid to read after a successful waitid (0 when nothing exited).
        if rc == 0 && unsafe { info.si_pid() } != 0 {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_own_cgroup_are_read_from_proc() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      30 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      31 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 24 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let cgroup = "4:memory:/x\n1:cpu:/\n0::/system.slice/troupe.service\n";
        assert_eq!(
            own_cgroup(cgroup).as_deref(),
            Some("/system.slice/troupe.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn the_session_is_read_past_a_name_with_spaces() {
        let stat = "4242 (my (odd) name) S 1 4240 4241 0 -1 4194560 100";
        assert_eq!(session_of(stat), Some(4241));
        assert_eq!(session_of("garbage"), None);
    }

    #[test]
    fn folder_names_are_safe_and_distinct_per_instance() {
        let a = folder_name("edge 1/x", "/run/a.ctl");
        let b = folder_name("edge 1/x", "/run/b.ctl");
        assert!(a.starts_with("troupe-edge_1_x-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, folder_name("edge 1/x", "/run/a.ctl"));
    }
}

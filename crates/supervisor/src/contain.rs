//! Containment: nothing a service starts outlives it, or the node.
//!
//! # Mechanisms
//!
//! - **cgroup** (preferred): where the node can create cgroups in the cgroup v2 hierarchy
//!   (the unified one, or the unified part of a hybrid layout such as
//!   `/sys/fs/cgroup/unified`), every service runs in a cgroup of its own,
//!   `<the node's cgroup>/troupe-<node>-<key>/<service>`, fresh for each run. The service is
//!   started right inside it (`clone3` with `CLONE_INTO_CGROUP`, see `exec.rs`; on older
//!   kernels it joins it in the child before `execve`), so even its first fork is inside. When the service stops or crashes,
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
//!
//! # Limits
//!
//! A service's `memory_max`, `cpu_max` and `pids_max` are written to its cgroup's
//! `memory.max`, `cpu.max` and `pids.max` before the service joins it. Those files exist only
//! where the controller (`memory`, `cpu`, `pids`) is enabled for the service cgroups, so the
//! first service that asks for one enables it: `+<controller>` in `cgroup.subtree_control` of
//! the node's cgroup (when its children do not have it yet) and of the services folder. The
//! kernel enables a controller for the children of a cgroup only while that cgroup holds no
//! process itself (the root cgroup excepted); when the node's cgroup holds only the node, its
//! guard and its children, they first move into a leaf cgroup of their own, the services
//! folder's name followed by `-node`. Where the controller cannot be had (no cgroup mechanism,
//! the controller absent from the cgroup v2 hierarchy, for instance bound to cgroup v1, not
//! delegated to the node's cgroup, or the node's cgroup shared with other processes) the
//! service does not start, and the error names the key and says why. With the memory controller, an exit by SIGKILL
//! while the cgroup's `memory.events` `oom_kill` count grew is reported as an OOM kill.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::limits::CpuMax;

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
    /// Where the cgroup v2 hierarchy is mounted (with [`Mechanism::Cgroup`]).
    hierarchy: Option<PathBuf>,
}

static CONTAINMENT: OnceLock<Containment> = OnceLock::new();

/// The node's containment: what [`setup`] chose, or the process group when it did not run.
pub fn current() -> &'static Containment {
    CONTAINMENT.get_or_init(|| Containment {
        mechanism: Mechanism::ProcessGroup,
        services_dir: None,
        why_not: Some("containment was not set up".into()),
        cgroup_path: None,
        hierarchy: None,
    })
}

/// How the processes of the service whose cgroup is `name` are contained, for operators:
/// `cgroup <path>` or `process group`.
pub fn describe(name: &str) -> String {
    match &current().services_dir {
        Some(dir) => format!("cgroup {}", dir.join(name).display()),
        None => current().mechanism.to_string(),
    }
}

/// Names the cgroups of one supervisor's services: the first supervisor of the process (the
/// node's) names them by service id; every other one (nested supervisors, more supervisors
/// in a program embedding several) prefixes them with its own number, so that two
/// supervisors' services never share a cgroup (and so a `cgroup.kill`).
#[derive(Debug, Clone)]
pub(crate) struct CgroupScope(Option<u64>);

impl CgroupScope {
    /// The scope of a new supervisor.
    pub(crate) fn claim() -> CgroupScope {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        match NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => CgroupScope(None),
            n => CgroupScope(Some(n)),
        }
    }

    /// The cgroup name of service `id`.
    pub(crate) fn name(&self, id: &str) -> String {
        match self.0 {
            None => id.to_string(),
            Some(n) => format!("supervisor-{n}.{id}"),
        }
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
    if let Some(done) = CONTAINMENT.get() {
        // Set up already (a program running more than one supervisor role): never sweep
        // the services of a supervisor that runs.
        return (done, Leftovers::default());
    }
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot become a child subreaper; orphans of services go to init");
    }
    let (containment, leftovers) = match cgroup_services_dir(node, key) {
        Ok((dir, cgroup_path, hierarchy)) => {
            let leftovers = sweep(&dir);
            (
                Containment {
                    mechanism: Mechanism::Cgroup,
                    services_dir: Some(dir),
                    why_not: None,
                    cgroup_path: Some(cgroup_path),
                    hierarchy: Some(hierarchy),
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
                hierarchy: None,
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
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STARTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return current();
    }
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
/// path, its name within the hierarchy and the hierarchy's mount point; the error says why the
/// cgroup mechanism cannot be used.
fn cgroup_services_dir(node: &str, key: &str) -> Result<(PathBuf, String, PathBuf), String> {
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
    // The leaf an earlier run of the node moved into (see `make_room`), empty once it is gone.
    let _ = fs::remove_dir(parent.join(format!("{folder}-node")));
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
    Ok((dir, cgroup_path, mount))
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

/// What a service's cgroup limits: its `memory_max`, `cpu_max` and `pids_max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    /// `memory.max`, in bytes.
    pub(crate) memory_max: Option<u64>,
    /// `cpu.max`.
    pub(crate) cpu_max: Option<CpuMax>,
    /// `pids.max`.
    pub(crate) pids_max: Option<u64>,
}

/// One limit: its key in a service entry, its controller, its file and the value to write
/// (`None`: not asked for).
struct Setting {
    key: &'static str,
    controller: &'static str,
    file: &'static str,
    value: Option<String>,
}

impl CgroupLimits {
    fn settings(&self) -> [Setting; 3] {
        [
            Setting {
                key: "memory_max",
                controller: "memory",
                file: "memory.max",
                value: self.memory_max.map(|b| b.to_string()),
            },
            Setting {
                key: "cpu_max",
                controller: "cpu",
                file: "cpu.max",
                value: self.cpu_max.map(|c| c.cgroup_value()),
            },
            Setting {
                key: "pids_max",
                controller: "pids",
                file: "pids.max",
                value: self.pids_max.map(|n| n.to_string()),
            },
        ]
    }
}

/// A service's cgroup.
#[derive(Debug)]
pub(crate) struct ServiceCgroup {
    dir: PathBuf,
    /// The `memory_max` it was given.
    memory_max: Option<u64>,
    /// The `oom_kill` count of its `memory.events` when the service started (with the memory
    /// controller).
    oom_kills: Option<u64>,
}

impl ServiceCgroup {
    /// The cgroup of service `id`, created if needed, with `limits` written to it (and the
    /// limits it does not ask for reset); `None` without the cgroup mechanism. The error says
    /// what failed; for a limit, it starts with its key (`memory_max: ...`).
    pub(crate) fn for_service(
        id: &str,
        limits: &CgroupLimits,
    ) -> Result<Option<ServiceCgroup>, String> {
        let settings = limits.settings();
        let containment = current();
        let Some(services) = &containment.services_dir else {
            return match settings.iter().find(|s| s.value.is_some()) {
                Some(first) => Err(format!(
                    "{}: it is applied through the service's cgroup, and this node's services get none: {}",
                    first.key,
                    containment.why_not.as_deref().unwrap_or("no cgroup mechanism")
                )),
                None => Ok(None),
            };
        };
        let dir = services.join(id);
        fresh_cgroup(&dir)?;
        for setting in settings.iter().filter(|s| s.value.is_some()) {
            enable_controller(containment, services, setting.controller)
                .map_err(|why| format!("{}: {why}", setting.key))?;
        }
        // The cgroup is new (see `fresh_cgroup`): a limit not asked for is at its default.
        for setting in &settings {
            let file = dir.join(setting.file);
            if let Some(value) = &setting.value {
                fs::write(&file, value).map_err(|e| {
                    format!(
                        "{}: cannot write {value:?} to {}: {e}",
                        setting.key,
                        file.display()
                    )
                })?;
            }
        }
        let oom_kills = oom_kills(&dir);
        Ok(Some(ServiceCgroup {
            dir,
            memory_max: limits.memory_max,
            oom_kills,
        }))
    }

    /// Whether the kernel's OOM killer killed a process of it since the service started.
    pub(crate) fn oom_killed(&self) -> bool {
        match (self.oom_kills, oom_kills(&self.dir)) {
            (Some(before), Some(now)) => now > before,
            _ => false,
        }
    }

    /// The `memory_max` it was given, in bytes.
    pub(crate) fn memory_max(&self) -> Option<u64> {
        self.memory_max
    }

    /// Its folder, open, for a child to be started right inside it (`CLONE_INTO_CGROUP`).
    pub(crate) fn folder(&self) -> io::Result<OwnedFd> {
        fs::File::open(&self.dir).map(OwnedFd::from)
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

/// The `oom_kill` count in cgroup `dir`'s `memory.events` (`None` without the memory
/// controller).
fn oom_kills(dir: &Path) -> Option<u64> {
    let events = fs::read_to_string(dir.join("memory.events")).ok()?;
    events_count(&events, "oom_kill")
}

/// The count of `name` in a `memory.events` text.
fn events_count(events: &str, name: &str) -> Option<u64> {
    events.lines().find_map(|line| {
        let (key, count) = line.split_once(' ')?;
        (key == name).then(|| count.trim().parse().ok()).flatten()
    })
}

/// Whether the space-separated list in `file` (`cgroup.controllers`,
/// `cgroup.subtree_control`) names `controller`.
fn lists(file: &Path, controller: &str) -> bool {
    fs::read_to_string(file)
        .map(|text| text.split_whitespace().any(|c| c == controller))
        .unwrap_or(false)
}

/// Controllers being enabled: one at a time.
static ENABLING: Mutex<()> = Mutex::new(());

/// Makes `controller` available to the service cgroups under `services` (see the module's
/// "Limits"); the error says why it cannot be.
fn enable_controller(
    containment: &Containment,
    services: &Path,
    controller: &str,
) -> Result<(), String> {
    let _one = ENABLING.lock().unwrap_or_else(|e| e.into_inner());
    let services_control = services.join("cgroup.subtree_control");
    if lists(&services_control, controller) {
        return Ok(());
    }
    let parent = services.parent().unwrap_or(services);
    if !lists(&services.join("cgroup.controllers"), controller) {
        if !lists(&parent.join("cgroup.controllers"), controller) {
            return Err(unavailable(containment, parent, controller));
        }
        enable_in(services, parent, controller)?;
    }
    fs::write(&services_control, format!("+{controller}")).map_err(|e| {
        format!(
            "cannot enable the {controller} controller for the services' cgroups: writing \"+{controller}\" to {}: {e}",
            services_control.display()
        )
    })
}

/// Enables `controller` for the children of the node's cgroup `parent`, first moving the node
/// out of it when the kernel refuses because the node is in it.
fn enable_in(services: &Path, parent: &Path, controller: &str) -> Result<(), String> {
    let control = parent.join("cgroup.subtree_control");
    let write = || fs::write(&control, format!("+{controller}"));
    let failed = |e: io::Error| {
        format!(
            "cannot enable the {controller} controller in the node's cgroup: writing \"+{controller}\" to {}: {e}",
            control.display()
        )
    };
    match write() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            make_room(services, parent, controller)?;
            write().map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// The kernel enables controllers for the children of a cgroup only while it holds no
/// process. When the node's cgroup `parent` holds only the node, its guard and children of the
/// node, moves them to the leaf `<services folder>-node`; otherwise says why nothing can be
/// done.
fn make_room(services: &Path, parent: &Path, controller: &str) -> Result<(), String> {
    let procs: Vec<u32> = fs::read_to_string(parent.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    let node = std::process::id();
    // The node, its guard, and its children there: probes, a service not in its cgroup yet.
    let ours = |pid: u32| {
        pid == node
            || GUARD.get() == Some(&pid)
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(node)
    };
    let others: Vec<String> = procs
        .iter()
        .filter(|pid| !ours(**pid))
        .take(8)
        .map(u32::to_string)
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "the {controller} controller cannot be enabled under the node's cgroup {}: it holds processes other than the node (pids {}), and the kernel enables a controller for a cgroup's children only while it holds no process itself; run the node in a cgroup of its own (e.g. a systemd unit with Delegate=yes)",
            parent.display(),
            others.join(", ")
        ));
    }
    let mut leaf = services.as_os_str().to_owned();
    leaf.push("-node");
    let leaf = PathBuf::from(leaf);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "the {controller} controller cannot be enabled under the node's cgroup {} while the node is in it, and the node cannot move to cgroup {}: {e}",
                parent.display(),
                leaf.display()
            ))
        }
    }
    for pid in procs {
        if let Err(e) = fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
            return Err(format!(
                "the {controller} controller cannot be enabled under the node's cgroup {} while the node is in it, and process {pid} cannot move to cgroup {}: {e}",
                parent.display(),
                leaf.display()
            ));
        }
    }
    tracing::info!(
        cgroup = %leaf.display(),
        controller,
        "moved the node to a cgroup of its own, so that its cgroup can enable controllers for its services"
    );
    Ok(())
}

/// Why `controller` is not offered to the node's cgroup `parent`.
fn unavailable(containment: &Containment, parent: &Path, controller: &str) -> String {
    let root = containment.hierarchy.as_deref().unwrap_or(parent);
    if lists(&root.join("cgroup.controllers"), controller) && root != parent {
        return format!(
            "the {controller} controller is not delegated to the node's cgroup {}: its parent does not enable it in cgroup.subtree_control (with systemd, set Delegate=yes on the node's unit)",
            parent.display()
        );
    }
    let why = fs::read_to_string("/proc/cgroups")
        .ok()
        .and_then(|table| v1_state(&table, controller))
        .map(|why| format!(" ({why})"))
        .unwrap_or_default();
    format!(
        "the {controller} controller is not available in the cgroup v2 hierarchy at {}{why}",
        root.display()
    )
}

/// What `/proc/cgroups` says of a controller missing from cgroup v2: bound to a cgroup v1
/// hierarchy, disabled, or unknown to the kernel.
fn v1_state(table: &str, controller: &str) -> Option<&'static str> {
    let line = table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&controller));
    match line.as_deref() {
        None => Some("the kernel has no such controller"),
        Some([_, _, _, "0", ..]) => Some("it is disabled on the kernel's command line"),
        Some([_, hierarchy, ..]) if *hierarchy != "0" => Some("it is bound to cgroup v1"),
        Some(_) => None,
    }
}

/// Makes `dir` a new, empty cgroup for a service's next run. A cgroup that was killed is
/// never reused: the kernel may kill a child started into it with `CLONE_INTO_CGROUP`
/// (it compares the kill count of the parent's cgroup, not the target's), so the old one is
/// removed, or, while its last processes are still dying, renamed aside (and removed with
/// the others when the node stops, or swept at its next start).
fn fresh_cgroup(dir: &Path) -> Result<(), String> {
    /// Cgroups renamed aside, removed as soon as their processes are gone.
    static ASIDE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let cannot = |e: io::Error| format!("cannot create its cgroup {}: {e}", dir.display());
    let mut aside = ASIDE.lock().unwrap_or_else(|e| e.into_inner());
    aside.retain(|old| fs::remove_dir(old).is_err() && old.exists());
    // A first run (the common case at start): one mkdir.
    match fs::create_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        // The services folder too, should a supervisor that stopped have removed it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fs::create_dir_all(dir).map_err(cannot)
        }
        Err(e) => return Err(cannot(e)),
    }
    if fs::remove_dir(dir).is_err() {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".old-{n}"));
        let old = dir.with_file_name(name);
        fs::rename(dir, &old).map_err(cannot)?;
        aside.push(old);
    }
    drop(aside);
    fs::create_dir(dir).map_err(cannot)
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

/// The parent pid in a `/proc/<pid>/stat` line (the fourth field).
fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
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
        assert_eq!(parent_of(stat), Some(1));
        assert_eq!(parent_of("garbage"), None);
        assert_eq!(session_of("garbage"), None);
    }

    #[test]
    fn oom_counts_and_v1_bindings_are_read() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(events_count(events, "oom_kill"), Some(1));
        assert_eq!(events_count(events, "oom"), Some(2));
        assert_eq!(events_count("", "oom_kill"), None);
        let table = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
                     cpu\t1\t1\t1\nmemory\t4\t26\t1\npids\t0\t1\t0\nhugetlb\t0\t1\t1\n";
        assert_eq!(v1_state(table, "memory"), Some("it is bound to cgroup v1"));
        assert_eq!(
            v1_state(table, "pids"),
            Some("it is disabled on the kernel's command line")
        );
        assert_eq!(v1_state(table, "hugetlb"), None);
        assert_eq!(
            v1_state(table, "io"),
            Some("the kernel has no such controller")
        );
    }

    #[test]
    fn limits_without_a_cgroup_are_refused_naming_the_key() {
        // No `setup` in unit tests: the process-group mechanism.
        let err = ServiceCgroup::for_service(
            "x",
            &CgroupLimits {
                pids_max: Some(10),
                ..CgroupLimits::default()
            },
        )
        .unwrap_err();
        assert!(
            err.starts_with("pids_max: it is applied through the service's cgroup, and this node's services get none: "),
            "{err}"
        );
        assert!(ServiceCgroup::for_service("x", &CgroupLimits::default())
            .unwrap()
            .is_none());
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

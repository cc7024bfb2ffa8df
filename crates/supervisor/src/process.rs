//! OS process plumbing: start a service in its own session with a parent-death signal, learn
//! of its exit through a pidfd, reap it, and signal its whole process group.
//!
//! # Where processes are started
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not when the
//! process does. Actors run on arbiter threads, and actor children get a fresh arbiter per
//! start, so forking from an arbiter could kill a healthy service when an unrelated arbiter is
//! replaced. Every fork therefore happens on a small fixed set of spawner threads that are
//! started once and never exit: the parent-death signal then means exactly "the node process
//! is gone". The spawners also keep the wait for the child's `execve` (the spawning thread is
//! suspended until then, see `exec.rs`) off the arbiters.
//!
//! # Exit and reaping
//!
//! Right after the child's `execve`, the spawner opens a pidfd for the child (Linux 5.3 or later). The
//! actor waits for it to become readable, which happens when the child has exited but is not
//! yet reaped; at that moment its pid still pins its process group id, so the group's remaining
//! members (grandchildren) are killed race-free before `waitid` reaps the child and reads its
//! status; with a cgroup (`contain.rs`), so is every process that left the group. Every child
//! is reaped this way, and orphans the node adopts are reaped by `contain::reap_orphans`: no
//! zombies.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rustix::process::{pidfd_open, waitid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

use crate::contain::{self, CgroupLimits, ServiceCgroup};
use crate::exec::{self, ExecPlan};
use crate::limits::{read_env_file, resolve_identity, IdOrName, Resource, Rlimit, Umask};
use crate::plan::ExitReason;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// Program (already expanded).
    pub(crate) program: String,
    /// Arguments (already expanded).
    pub(crate) args: Vec<String>,
    /// Variables set on top of the inherited environment (or alone).
    pub(crate) env: Vec<(String, String)>,
    /// Whether the node's environment is passed on.
    pub(crate) inherit_env: bool,
    /// Working directory.
    pub(crate) cwd: Option<PathBuf>,
    /// Pipe stdout and stderr back (else both go to /dev/null).
    pub(crate) capture_output: bool,
    /// A directory to create first (the service's state folder); failure is not fatal.
    pub(crate) make_dir: Option<PathBuf>,
    /// The service whose cgroup the process joins before `execve`, when the node contains
    /// services with cgroups (see `contain.rs`).
    pub(crate) cgroup: Option<String>,
    /// What a service asks for beyond its command (none for a readiness probe).
    pub(crate) setup: ServiceSetup,
}

/// A service's identity, limits and environment file, applied at each start.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceSetup {
    /// Run as this user.
    pub(crate) user: Option<IdOrName>,
    /// With this primary group.
    pub(crate) group: Option<IdOrName>,
    /// `setrlimit` limits.
    pub(crate) rlimits: std::collections::BTreeMap<Resource, Rlimit>,
    /// Limits of its cgroup (which it needs then).
    pub(crate) cgroup_limits: CgroupLimits,
    /// `KEY=VALUE` lines read now, under `env`.
    pub(crate) env_file: Option<PathBuf>,
    /// File mode creation mask.
    pub(crate) umask: Option<Umask>,
}

/// A started process.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// Its pid, also its process group and session id.
    pub(crate) pid: u32,
    /// Becomes readable when it exits.
    pub(crate) pidfd: OwnedFd,
    /// Read end of its stdout, when captured.
    pub(crate) stdout: Option<OwnedFd>,
    /// Read end of its stderr, when captured.
    pub(crate) stderr: Option<OwnedFd>,
    /// Its cgroup, when it has one.
    pub(crate) cgroup: Option<Arc<ServiceCgroup>>,
}

struct Job {
    launch: Launch,
    reply: oneshot::Sender<Result<Spawned, String>>,
}

/// Spawner threads. Each start waits for the child's `exec` to succeed; a few threads keep
/// several of those waits in flight, so starting many services is not one long sequence.
const SPAWNERS: usize = 4;

static SPAWNER: OnceLock<Vec<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
static NEXT_SPAWNER: AtomicUsize = AtomicUsize::new(0);

/// The node's open-file limit before [`raise_fd_limit`], given back to every service.
static SERVICE_NOFILE: OnceLock<Option<(u64, u64)>> = OnceLock::new();

/// Each service costs the node three descriptors (pidfd, stdout, stderr), so a thousand
/// services exceed the common soft limit of 1024. The soft limit is raised to the hard limit
/// for the node; services get the original limit back, as a service manager would give them.
fn raise_fd_limit() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return None;
    };
    let target = hard.unwrap_or(u64::MAX).min(1 << 20);
    if target <= soft {
        return None;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: hard,
        },
    ) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = target,
                "raised the open-file limit for supervising many services"
            );
            Some((soft, hard.unwrap_or(libc::RLIM_INFINITY)))
        }
        Err(e) => {
            tracing::warn!(soft, error = %e, "cannot raise the open-file limit");
            None
        }
    }
}

fn spawner() -> Result<mpsc::Sender<Job>, String> {
    let threads = SPAWNER.get_or_init(|| {
        SERVICE_NOFILE.get_or_init(raise_fd_limit);
        (0..SPAWNERS)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Job>();
                let started = troupe_core::span::spawn_role_thread(
                    &format!("troupe-spawn-{i}"),
                    tracing::Span::current(),
                    "supervisor",
                    move || {
                        for job in rx {
                            let _ = job.reply.send(launch_now(&job.launch));
                        }
                    },
                );
                if let Err(e) = started {
                    tracing::error!(error = %e, "cannot start a process spawner thread");
                }
                Mutex::new(tx)
            })
            .collect()
    });
    let pick = NEXT_SPAWNER.fetch_add(1, Ordering::Relaxed) % threads.len();
    Ok(threads[pick]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone())
}

/// Starts `launch` on a spawner thread.
pub(crate) async fn spawn(launch: Launch) -> Result<Spawned, String> {
    let (reply, answer) = oneshot::channel();
    spawner()?
        .send(Job { launch, reply })
        .map_err(|_| "the process spawner thread has stopped".to_string())?;
    answer
        .await
        .map_err(|_| "the process spawner thread has stopped".to_string())?
}

fn launch_now(launch: &Launch) -> Result<Spawned, String> {
    if let Some(dir) = &launch.make_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the service's state folder");
        }
    }
    let nofile = SERVICE_NOFILE.get().copied().flatten();
    let cannot_run = |e: io::Error| {
        let cwd = launch
            .cwd
            .as_ref()
            .map(|d| format!(" in {}", d.display()))
            .unwrap_or_default();
        format!("cannot run {}{cwd}: {e}", launch.program)
    };
    let refused = |e: String| format!("cannot run {}: {e}", launch.program);
    let setup = &launch.setup;
    let identity = resolve_identity(setup.user.as_ref(), setup.group.as_ref()).map_err(refused)?;
    // Lowest first: the user's account, then the env_file, then the service's own `env`.
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some((name, home)) = identity.as_ref().and_then(|i| i.account.clone()) {
        env.push(("USER".into(), name.clone()));
        env.push(("LOGNAME".into(), name));
        env.push(("HOME".into(), home));
    }
    if let Some(file) = &setup.env_file {
        env.extend(read_env_file(file).map_err(refused)?);
    }
    env.extend(launch.env.iter().cloned());
    let plan = ExecPlan::new(
        &launch.program,
        &launch.args,
        &env,
        launch.inherit_env,
        launch.cwd.as_deref(),
        launch.capture_output,
        nofile,
    )
    .map_err(cannot_run)?
    .with_rlimits(&setup.rlimits)
    .with_identity(identity)
    .with_umask(setup.umask);
    let cgroup = match &launch.cgroup {
        Some(service) => ServiceCgroup::for_service(service, &setup.cgroup_limits)
            .map_err(refused)?
            .map(Arc::new),
        None if setup.cgroup_limits != CgroupLimits::default() => {
            return Err(refused(
                "cgroup limits need the service's own cgroup".to_string(),
            ))
        }
        None => None,
    };
    let plan = match &cgroup {
        Some(cgroup) => {
            let cannot_join = |e: io::Error| {
                format!(
                    "cannot run {}: cannot join cgroup {}: {e}",
                    launch.program,
                    cgroup.path().display()
                )
            };
            plan.join_cgroup(
                cgroup.folder().map_err(cannot_join)?,
                cgroup.procs().map_err(cannot_join)?,
            )
        }
        None => plan,
    };
    // Until the child is known as the node's own, the orphan reaper keeps off it.
    let spawning = contain::SPAWNING.read().unwrap_or_else(|e| e.into_inner());
    let child = exec::start(&plan).map_err(cannot_run)?;
    let pid = child.pid;
    contain::adopt(pid);
    drop(spawning);
    let raw = rustix::process::Pid::from_raw(pid as i32).ok_or("the kernel returned pid 0")?;
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd the child cannot be watched: do not leave it running.
            signal_group(pid, Signal::SIGKILL);
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child, writing into a local.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            contain::forget(pid);
            return Err(format!(
                "cannot watch process {pid} (pidfd_open: {e}; Linux 5.3 or later is needed)"
            ));
        }
    };
    Ok(Spawned {
        pid,
        pidfd,
        stdout: child.stdout,
        stderr: child.stderr,
        cgroup,
    })
}

/// Starts the node's guard, `troupe __guard DIR` (see `contain.rs`), outside the services'
/// cgroups and without a parent-death signal. Its stdin is the read end of a pipe whose write
/// end the node keeps, open until the node's process ends. Blocking.
pub(crate) fn start_guard(services_dir: &std::path::Path) -> io::Result<u32> {
    let exe = std::env::current_exe()?;
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let plan = ExecPlan::new(
        &exe.to_string_lossy(),
        &[
            "__guard".to_string(),
            services_dir.to_string_lossy().into_owned(),
        ],
        &[],
        false,
        None,
        false,
        None,
    )?
    .without_parent_death()
    .with_stdin(read);
    let child = exec::start(&plan)?;
    // Kept open for the node's life (close-on-exec, so no service holds it): its closing is
    // the guard's signal.
    std::mem::forget(write);
    Ok(child.pid)
}

/// Sends `signal` to the process group led by `pid`. A group already gone is not an error.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    match killpg(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, %signal, error = %e, "cannot signal process group"),
    }
}

/// Waits (without blocking the thread) until process `pid` exits, kills what is left of its
/// group, reaps it and returns how it ended. Must run on the arbiter that owns the process.
pub(crate) async fn wait_exit(
    pid: u32,
    pidfd: Arc<OwnedFd>,
    cgroup: Option<Arc<ServiceCgroup>>,
) -> ExitReason {
    let reason = wait_and_reap(pid, pidfd, cgroup).await;
    contain::forget(pid);
    reason
}

async fn wait_and_reap(
    pid: u32,
    pidfd: Arc<OwnedFd>,
    cgroup: Option<Arc<ServiceCgroup>>,
) -> ExitReason {
    // SAFETY: `register_with_interest` needs the descriptor to stay open and the same for the
    // AsyncFd's whole life. An `OwnedFd` is closed only when dropped and its descriptor never
    // changes; the `Arc` keeps it alive at least as long as this AsyncFd holds a clone.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            // Cannot be watched here: kill it so that it does not run unsupervised, and reap
            // it on the blocking pool.
            let (pidfd, e) = e.into_parts();
            tracing::error!(pid, error = %e, "cannot watch process; killing it");
            signal_group(pid, Signal::SIGKILL);
            let _ = tokio::task::spawn_blocking(move || {
                waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
            })
            .await;
            return ExitReason::StartFailed(format!("cannot watch process {pid}: {e}"));
        }
    };
    loop {
        let mut ready = match fd.readable().await {
            Ok(ready) => ready,
            Err(e) => return ExitReason::StartFailed(format!("watching process {pid}: {e}")),
        };
        // The leader has exited and is not reaped: its pid still names its group. Its cgroup
        // holds whatever left the group.
        signal_group(pid, Signal::SIGKILL);
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
        match waitid(
            WaitId::PidFd(fd.get_ref().as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => {
                if let Some(code) = status.exit_status().filter(|_| status.exited()) {
                    return ExitReason::Exited(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    // A SIGKILL while the cgroup's OOM kill count grew: the kernel's doing.
                    if let Some(cgroup) = cgroup
                        .as_ref()
                        .filter(|c| signal == libc::SIGKILL && c.oom_killed())
                    {
                        return ExitReason::OomKilled(cgroup.memory_max());
                    }
                    return ExitReason::Signaled(signal);
                }
                return ExitReason::Exited(status.raw_signo());
            }
            Ok(None) => ready.clear_ready(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return ExitReason::StartFailed(format!("reaping process {pid}: {e}")),
        }
    }
}

/// Expands `${TROUPE_EXE}` in `text` to the running executable's path.
pub(crate) fn expand_exe(text: &str) -> String {
    if !text.contains(crate::config::TROUPE_EXE) {
        return text.to_string();
    }
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "troupe".to_string());
    text.replace(crate::config::TROUPE_EXE, &exe)
}

//! Starting a service process the way `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)`
//! followed by `execve`, with the setup a service needs done in the child in between.
//!
//! A plain `fork` copies the node's page tables and the `exec` right after throws the copy
//! away; with many services that copying is most of the cost of starting them. With
//! `CLONE_VM` the child borrows the node's memory until it calls `execve`, and `CLONE_VFORK`
//! suspends the calling (spawner) thread until then, so nothing the child reads can change
//! under it. The price is that the child may only make system calls: no allocation, no locks,
//! no Rust runtime. Everything it needs is prepared beforehand in an [`ExecPlan`].
//!
//! The child, before `execve`, in this order:
//! - puts every signal with a handler (and SIGPIPE, which Rust ignores) back to its default
//!   action, so that no handler of the node ever runs in the service;
//! - joins its cgroup, when it has one (`contain.rs`) and was not started in it already
//!   (`clone3` with `CLONE_INTO_CGROUP`, on x86-64 with Linux 5.7 or later, starts it there
//!   and spares the migration, which can take milliseconds), so that even its first fork is
//!   inside (while still privileged enough to write `cgroup.procs`);
//! - `setsid()`: the service gets its own session and process group (its pid), so a stop can
//!   signal the whole group, grandchildren included, and a terminal's signals never reach it;
//! - wires stdin to /dev/null (or a given descriptor) and stdout/stderr to pipes (or
//!   /dev/null), and closes every other descriptor (`close_range`: descriptors the node
//!   inherited without close-on-exec are not passed on);
//! - restores the open-file limit the node had before raising its own, then sets the
//!   service's `rlimits` (after the descriptors are down to three, so a small `nofile` does
//!   not get in the way; before the identity change, so a hard limit may still be raised);
//! - takes the service's identity: `setgroups`, `setgid`, `setuid`, in that order (raw system
//!   calls: the C library's wrappers would try to signal every thread of the node);
//! - sets the service's `umask`;
//! - `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills the service when the thread that started it
//!   exits; spawner threads live as long as the node (see `process.rs`), so this fires only
//!   when the node is gone, even by SIGKILL (the node's guard is started without it). It comes
//!   after the identity change, which would clear it;
//! - checks that its parent is still the node: if the node died between `clone` and `prctl`
//!   the signal would never come, so the child gives up instead of running unsupervised;
//! - changes directory (as the service's user), and restores the signal mask the spawner
//!   thread had.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::limits::{Identity, Resource, Rlimit, Umask};

/// Everything the child needs, as C strings prepared in the parent.
pub(crate) struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    capture_output: bool,
    nofile: Option<(u64, u64)>,
    /// The service's `cgroup.procs`, which the child joins.
    cgroup: Option<OwnedFd>,
    /// The service's cgroup folder, which the child is started in where the kernel can.
    cgroup_folder: Option<OwnedFd>,
    /// Kill the child when the node dies (every service; not the guard).
    parent_death: bool,
    /// The child's stdin instead of /dev/null.
    stdin: Option<OwnedFd>,
    /// The service's resource limits.
    rlimits: Vec<(Resource, KernelRlimit)>,
    /// The service's user and groups, resolved.
    identity: Option<Identity>,
    /// The service's file mode creation mask.
    umask: Option<Umask>,
}

/// A limit as `prlimit64(2)` takes it, whatever the C library's `rlim_t`.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelRlimit {
    cur: u64,
    max: u64,
}

/// One limit for the child.
#[repr(C)]
#[derive(Clone, Copy)]
struct ChildRlimit {
    resource: libc::c_int,
    limit: KernelRlimit,
}

/// A started child.
pub(crate) struct Started {
    pub(crate) pid: u32,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

fn c_string(text: impl Into<Vec<u8>>, what: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

impl ExecPlan {
    /// Resolves `program` (on the service's `PATH` when it has no `/`) and prepares the
    /// argument and environment arrays.
    pub(crate) fn new(
        program: &str,
        args: &[String],
        env: &[(String, String)],
        inherit_env: bool,
        cwd: Option<&Path>,
        capture_output: bool,
        nofile: Option<(u64, u64)>,
    ) -> io::Result<ExecPlan> {
        let mut vars: Vec<(OsString, OsString)> = if inherit_env {
            std::env::vars_os().collect()
        } else {
            Vec::new()
        };
        for (key, value) in env {
            vars.retain(|(k, _)| k.as_os_str() != OsStr::new(key));
            vars.push((key.into(), value.into()));
        }
        let search_path = vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let path = resolve(program, &search_path)?;
        let envp = vars
            .into_iter()
            .map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend(v.into_vec());
                c_string(entry, "an environment variable")
            })
            .collect::<io::Result<_>>()?;
        let argv = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .map(|a| c_string(a, "an argument"))
            .collect::<io::Result<_>>()?;
        Ok(ExecPlan {
            path: c_string(path.into_os_string().into_vec(), "the command")?,
            argv,
            envp,
            cwd: cwd
                .map(|d| c_string(d.as_os_str().as_bytes(), "the working directory"))
                .transpose()?,
            capture_output,
            nofile,
            cgroup: None,
            cgroup_folder: None,
            parent_death: true,
            stdin: None,
            rlimits: Vec::new(),
            identity: None,
            umask: None,
        })
    }

    /// The child sets these limits (soft and hard) before `execve`.
    pub(crate) fn with_rlimits<'a>(
        mut self,
        rlimits: impl IntoIterator<Item = (&'a Resource, &'a Rlimit)>,
    ) -> Self {
        self.rlimits = rlimits
            .into_iter()
            .map(|(resource, limit)| {
                (
                    *resource,
                    KernelRlimit {
                        cur: limit.soft.raw(),
                        max: limit.hard.raw(),
                    },
                )
            })
            .collect();
        self
    }

    /// The child takes this identity (supplementary groups, group, user) before `execve`.
    pub(crate) fn with_identity(mut self, identity: Option<Identity>) -> Self {
        self.identity = identity;
        self
    }

    /// The child sets this file mode creation mask before `execve`.
    pub(crate) fn with_umask(mut self, umask: Option<Umask>) -> Self {
        self.umask = umask;
        self
    }

    /// The child starts in the cgroup whose folder is `folder` (`clone3` with
    /// `CLONE_INTO_CGROUP`), or, where the kernel cannot, joins it through `procs` (its
    /// `cgroup.procs`) before anything else.
    pub(crate) fn join_cgroup(mut self, folder: OwnedFd, procs: OwnedFd) -> Self {
        self.cgroup_folder = Some(folder);
        self.cgroup = Some(procs);
        self
    }

    /// The child outlives the node (the guard): no parent-death signal.
    pub(crate) fn without_parent_death(mut self) -> Self {
        self.parent_death = false;
        self
    }

    /// The child reads `stdin` instead of /dev/null.
    pub(crate) fn with_stdin(mut self, stdin: OwnedFd) -> Self {
        self.stdin = Some(stdin);
        self
    }
}

/// The executable `program` names: itself when it holds a `/` (relative ones resolved by the
/// child after its `chdir`), else the first executable file of that name on `search_path`.
fn resolve(program: &str, search_path: &OsStr) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    for dir in std::env::split_paths(search_path) {
        let candidate = dir.join(program);
        let Ok(c) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: access(2) reads the NUL-terminated path we own.
        let executable = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
        if executable && candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Where the child failed, written by the child into the parent's memory (shared by CLONE_VM).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Stage {
    None = 0,
    Cgroup,
    Session,
    ParentDeath,
    ParentGone,
    FileLimit,
    Rlimit,
    Groups,
    Gid,
    Uid,
    Stdio,
    Chdir,
    Exec,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::None => "",
            Stage::Cgroup => "joining the service's cgroup",
            Stage::Session => "setsid",
            Stage::ParentDeath => "prctl(PR_SET_PDEATHSIG)",
            Stage::ParentGone => "the node exited while starting it",
            Stage::FileLimit => "setrlimit(RLIMIT_NOFILE)",
            Stage::Rlimit => "setrlimit",
            Stage::Groups => "user: setgroups",
            Stage::Gid => "group: setgid",
            Stage::Uid => "user: setuid",
            Stage::Stdio => "redirecting stdin/stdout/stderr",
            Stage::Chdir => "changing to the working directory",
            Stage::Exec => "",
        }
    }
}

#[repr(C)]
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: [libc::c_int; 3],
    cgroup: libc::c_int,
    parent_death: bool,
    parent: libc::pid_t,
    nofile: Option<KernelRlimit>,
    rlimits: *const ChildRlimit,
    rlimit_count: usize,
    /// Set the supplementary groups to `groups[..group_count]`.
    set_groups: bool,
    groups: *const libc::gid_t,
    group_count: usize,
    gid: Option<libc::gid_t>,
    uid: Option<libc::uid_t>,
    umask: Option<libc::mode_t>,
    mask: libc::sigset_t,
    failed_stage: Stage,
    failed_errno: libc::c_int,
    /// With [`Stage::Rlimit`]: the resource.
    failed_resource: libc::c_int,
}

/// The child's stack: it runs only the setup below, which needs little.
const CHILD_STACK: usize = 64 * 1024;

/// Starts `plan` and returns the child once it has called `execve` successfully.
pub(crate) fn start(plan: &ExecPlan) -> io::Result<Started> {
    let null_stdin = match plan.stdin {
        Some(_) => None,
        None => Some(open_dev_null(libc::O_RDONLY)?),
    };
    let stdin = plan
        .stdin
        .as_ref()
        .or(null_stdin.as_ref())
        .map(|fd| fd.as_raw_fd())
        .unwrap_or(-1);
    let (stdout, stderr, out_read, err_read) = if plan.capture_output {
        let (r1, w1) = pipe()?;
        let (r2, w2) = pipe()?;
        (w1, w2, Some(r1), Some(r2))
    } else {
        (
            open_dev_null(libc::O_WRONLY)?,
            open_dev_null(libc::O_WRONLY)?,
            None,
            None,
        )
    };
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let rlimits: Vec<ChildRlimit> = plan
        .rlimits
        .iter()
        .map(|(resource, limit)| ChildRlimit {
            resource: resource.raw(),
            limit: *limit,
        })
        .collect();
    let groups: &[libc::gid_t] = plan
        .identity
        .as_ref()
        .map_or(&[], |identity| identity.groups.as_slice());
    let mut stack = vec![0u8; CHILD_STACK];
    let (pid, stage, errno, resource) = clone_and_exec(
        ChildArgs {
            path: plan.path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: plan.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            stdio: [stdin, stdout.as_raw_fd(), stderr.as_raw_fd()],
            cgroup: plan.cgroup.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            parent_death: plan.parent_death,
            parent: std::process::id() as libc::pid_t,
            nofile: plan.nofile.map(|(soft, hard)| KernelRlimit {
                cur: soft,
                max: hard,
            }),
            rlimits: rlimits.as_ptr(),
            rlimit_count: rlimits.len(),
            set_groups: plan.identity.is_some(),
            groups: groups.as_ptr(),
            group_count: groups.len(),
            gid: plan.identity.as_ref().map(|i| i.gid),
            uid: plan.identity.as_ref().and_then(|i| i.uid),
            umask: plan.umask.map(|u| u.0 as libc::mode_t),
            // SAFETY: an all-zero sigset_t is a valid (empty) set; clone_and_exec fills it in.
            mask: unsafe { std::mem::zeroed() },
            failed_stage: Stage::None,
            failed_errno: 0,
            failed_resource: -1,
        },
        &mut stack,
        plan.cgroup_folder.as_ref().map(|fd| fd.as_raw_fd()),
    )?;
    drop((null_stdin, stdout, stderr));
    if stage != Stage::None {
        let error = io::Error::from_raw_os_error(errno);
        if stage == Stage::Rlimit {
            let (name, limit) = plan
                .rlimits
                .iter()
                .find(|(r, _)| r.raw() == resource)
                .map(|(r, l)| (r.name(), *l))
                .unwrap_or(("?", KernelRlimit { cur: 0, max: 0 }));
            let shown = |n: u64| match n {
                u64::MAX => "infinity".to_string(),
                n => n.to_string(),
            };
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "rlimits.{name}: setrlimit to {} (soft), {} (hard): {error}",
                    shown(limit.cur),
                    shown(limit.max)
                ),
            ));
        }
        return Err(match stage.describe() {
            "" => error,
            step => io::Error::new(error.kind(), format!("{step}: {error}")),
        });
    }
    Ok(Started {
        pid: pid as u32,
        stdout: out_read,
        stderr: err_read,
    })
}

/// The `unsafe` core: clones a child sharing our memory, lets it run [`child_main`] until its
/// `execve` (or its exit on failure), and reaps it when it failed. Returns the pid and, on
/// failure, the stage, errno and (for a limit) resource the child recorded.
fn clone_and_exec(
    mut args: ChildArgs,
    stack: &mut [u8],
    cgroup_folder: Option<libc::c_int>,
) -> io::Result<(libc::pid_t, Stage, libc::c_int, libc::c_int)> {
    // SAFETY:
    // - All signals are blocked around the clone, so no signal handler of the node can run in
    //   the child while it shares our memory; the child resets handlers before unblocking.
    // - CLONE_VFORK suspends this thread until the child has exec'd or exited, so `args`,
    //   `stack` and everything they point to (owned by the caller) stay valid and unchanged
    //   for as long as the child uses them; other threads never see them.
    // - The stack pointer passed is the 16-byte-aligned top of a buffer we own and keep alive
    //   across the call.
    // - The child only makes system calls (see `child_main`) and leaves by execve or _exit.
    // - `read_volatile` reads what the child wrote into `args` after clone returns.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.mask);
        let top = stack.as_mut_ptr().add(stack.len());
        let top = (top as usize & !15) as *mut libc::c_void;
        // Started right inside its cgroup, the child has nothing to join: joining (a write
        // to cgroup.procs) costs a migration that can take milliseconds.
        let mut pid = -1;
        if let Some(folder) = cgroup_folder {
            let procs = std::mem::replace(&mut args.cgroup, -1);
            pid = clone_into_cgroup(folder, stack, (&mut args as *mut ChildArgs).cast());
            if pid == -1 {
                args.cgroup = procs;
            }
        }
        if pid == -1 {
            pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut args as *mut ChildArgs).cast(),
            );
        }
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
        if pid == -1 {
            return Err(clone_error);
        }
        let stage = std::ptr::read_volatile(&args.failed_stage);
        let errno = std::ptr::read_volatile(&args.failed_errno);
        let resource = std::ptr::read_volatile(&args.failed_resource);
        if stage != Stage::None {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        Ok((pid, stage, errno, resource))
    }
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: like the `clone` above, but the child
/// starts in the cgroup whose folder `folder` is. Returns the child's pid, or -1 when the
/// kernel cannot (before Linux 5.7, or a cgroup it refuses), for the caller to fall back.
///
/// # Safety
///
/// As for `clone` in [`clone_and_exec`]: all signals blocked, `stack` and `arg` alive and
/// untouched until the child has exec'd or exited (CLONE_VFORK suspends this thread until
/// then), and [`child_main`] only makes system calls.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_into_cgroup(
    folder: libc::c_int,
    stack: &mut [u8],
    arg: *mut libc::c_void,
) -> libc::pid_t {
    /// `struct clone_args` of `linux/sched.h`, up to `cgroup` (version 2, 88 bytes).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let base = ((stack.as_mut_ptr() as usize + 15) & !15) as u64;
    let size = (stack.as_ptr() as u64 + stack.len() as u64 - base) & !15;
    let clone_args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: base,
        stack_size: size,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: folder as u64,
    };
    let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    let ret: i64;
    // The kernel returns twice: in this thread with the child's pid (or -errno), and in the
    // child with 0, on the child's stack (16-byte aligned at its top, as a call needs) and with
    // the other registers as they were, so r12 and r13 still hold the entry and its argument.
    // The child calls the entry, which leaves by execve or _exit; the exit below is a
    // safeguard that is never reached.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r13",
        "call r12",
        "mov edi, eax",
        "mov eax, 60",
        "syscall",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") &clone_args as *const CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") entry,
        in("r13") arg,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    if ret < 0 {
        -1
    } else {
        ret as libc::pid_t
    }
}

/// Other architectures join the cgroup through `cgroup.procs`.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone_into_cgroup(
    _folder: libc::c_int,
    _stack: &mut [u8],
    _arg: *mut libc::c_void,
) -> libc::pid_t {
    -1
}

/// Runs in the child, on the borrowed memory, until `execve`. System calls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` clone_and_exec passed, alive and not touched by anyone
    // else until we exec or exit (CLONE_VFORK). Every call below is a system call wrapper that
    // neither allocates nor takes locks.
    unsafe {
        let args = &mut *(arg as *mut ChildArgs);
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && (current.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
                && current.sa_sigaction != libc::SIG_DFL
            {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        // "0" moves the writing process (cgroup v2).
        if args.cgroup >= 0 && libc::write(args.cgroup, c"0".as_ptr().cast(), 1) != 1 {
            fail(args, Stage::Cgroup);
        }
        if libc::setsid() == -1 {
            fail(args, Stage::Session);
        }
        // Move the three descriptors above 2 first, so that none is overwritten by another's
        // dup2 whatever numbers they had; the copies are close-on-exec.
        let stdio = args.stdio;
        let mut high = [0; 3];
        for (i, fd) in stdio.iter().enumerate() {
            high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
            if high[i] == -1 {
                fail(args, Stage::Stdio);
            }
        }
        for (target, fd) in high.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) == -1 {
                fail(args, Stage::Stdio);
            }
        }
        // Only 0 to 2 go on: whatever else is open (descriptors the node inherited without
        // close-on-exec, the copies above, the cgroup's) is closed. Without close_range
        // (Linux before 5.9) the close-on-exec flags are all there is.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        if let Some(limit) = args.nofile {
            if set_rlimit(libc::RLIMIT_NOFILE as libc::c_int, &limit) == -1 {
                fail(args, Stage::FileLimit);
            }
        }
        for i in 0..args.rlimit_count {
            let rlimit = *args.rlimits.add(i);
            if set_rlimit(rlimit.resource, &rlimit.limit) == -1 {
                args.failed_resource = rlimit.resource;
                fail(args, Stage::Rlimit);
            }
        }
        if args.set_groups
            && libc::syscall(
                libc::SYS_setgroups,
                args.group_count as libc::c_long,
                args.groups,
            ) == -1
        {
            fail(args, Stage::Groups);
        }
        if let Some(gid) = args.gid {
            let gid = gid as libc::c_long;
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) == -1 {
                fail(args, Stage::Gid);
            }
        }
        if let Some(uid) = args.uid {
            let uid = uid as libc::c_long;
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) == -1 {
                fail(args, Stage::Uid);
            }
        }
        if let Some(mask) = args.umask {
            libc::umask(mask);
        }
        if args.parent_death
            && libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
        {
            fail(args, Stage::ParentDeath);
        }
        if libc::getppid() != args.parent {
            *libc::__errno_location() = libc::ESRCH;
            fail(args, Stage::ParentGone);
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) == -1 {
            fail(args, Stage::Chdir);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
        libc::execve(args.path, args.argv, args.envp);
        fail(args, Stage::Exec)
    }
}

/// `prlimit64(2)` on the calling process: the raw system call, with 64-bit limits whatever
/// the C library's `rlim_t`. Child side: no allocation.
unsafe fn set_rlimit(resource: libc::c_int, limit: &KernelRlimit) -> libc::c_long {
    libc::syscall(
        libc::SYS_prlimit64,
        0 as libc::c_long,
        resource as libc::c_long,
        limit as *const KernelRlimit,
        std::ptr::null_mut::<KernelRlimit>(),
    )
}

/// Records where and why the child failed, then ends it. Child side only.
unsafe fn fail(args: &mut ChildArgs, stage: Stage) -> ! {
    args.failed_errno = *libc::__errno_location();
    args.failed_stage = stage;
    libc::_exit(127)
}

fn open_dev_null(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open(2) with a static NUL-terminated path; the descriptor is owned from here.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), flags | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

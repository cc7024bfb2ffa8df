//! What the kernel says of the node's own process (`/proc/self`) and of each service's cgroup
//! (`memory.current`, `cpu.stat`). Blocking file reads: run off the event loop.

use std::path::Path;

/// The node process, as the `process_*` series show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessSample {
    /// User and system CPU time.
    pub(crate) cpu_seconds: f64,
    /// Resident set size.
    pub(crate) resident_bytes: u64,
    /// Virtual memory size.
    pub(crate) virtual_bytes: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// The soft limit on file descriptors.
    pub(crate) max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub(crate) start_time_seconds: f64,
}

/// One service's cgroup; a file that is not there (no such controller) leaves its field empty.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CgroupSample {
    /// `memory.current`.
    pub(crate) memory_bytes: Option<u64>,
    /// `cpu.stat` `usage_usec`, in seconds.
    pub(crate) cpu_seconds: Option<f64>,
}

/// Reads `/proc/self/stat`, `/proc/stat` and `/proc/self/fd`; `None` when they cannot be read.
pub(crate) fn read_self() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_time = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    // SAFETY: sysconf(3) and getrlimit(2) only write into the struct given.
    let (ticks, page, max_fds) = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        let max_fds = (libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur != libc::RLIM_INFINITY)
            .then_some(limit.rlim_cur);
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
            max_fds,
        )
    };
    let fields = parse_stat(&stat, ticks.max(1) as u64, page.max(1) as u64, boot_time)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(ProcessSample {
        open_fds,
        max_fds,
        ..fields
    })
}

/// The fields of a `/proc/<pid>/stat` line (`open_fds` and `max_fds` left empty).
fn parse_stat(stat: &str, ticks: u64, page: u64, boot_time: u64) -> Option<ProcessSample> {
    // The command name, in parentheses, may hold spaces and parentheses: split after the last.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields are numbered from 1 in proc(5); `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    let (start, vsize, rss) = (field(22)?, field(23)?, field(24)?);
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
        resident_bytes: rss * page,
        virtual_bytes: vsize,
        open_fds: 0,
        max_fds: None,
        start_time_seconds: boot_time as f64 + start as f64 / ticks as f64,
    })
}

/// Reads the cgroup folder `dir` of a service.
pub(crate) fn read_cgroup(dir: &Path) -> CgroupSample {
    let memory_bytes = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let cpu_seconds = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|text| usage_usec(&text))
        .map(|usec| usec as f64 / 1e6);
    CgroupSample {
        memory_bytes,
        cpu_seconds,
    }
}

/// `usage_usec` of a `cpu.stat` file.
fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_cpu_memory_and_start_time() {
        // Fields 1..=24 of proc(5), with a command name holding spaces and a parenthesis.
        let line = "4242 (troupe (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 9 0 12345 104857600 2560 18446744073709551615";
        let sample = parse_stat(line, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(sample.cpu_seconds, 4.0);
        assert_eq!(sample.resident_bytes, 2560 * 4096);
        assert_eq!(sample.virtual_bytes, 104_857_600);
        assert!((sample.start_time_seconds - 1_700_000_123.45).abs() < 1e-6);
        assert!(parse_stat("4242 (short) S 1 2", 100, 4096, 0).is_none());
    }

    #[test]
    fn the_node_reads_itself() {
        let sample = read_self().expect("/proc/self is readable");
        assert!(sample.resident_bytes > 0 && sample.open_fds > 0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(sample.start_time_seconds <= now + 1.0);
        assert!(sample.start_time_seconds > now - 3600.0 * 24.0 * 365.0);
    }

    #[test]
    fn cgroup_files_are_read_and_missing_ones_left_out() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cgroup(dir.path()), CgroupSample::default());
        std::fs::write(dir.path().join("memory.current"), "8192\n").unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        )
        .unwrap();
        assert_eq!(
            read_cgroup(dir.path()),
            CgroupSample {
                memory_bytes: Some(8192),
                cpu_seconds: Some(2.5),
            }
        );
    }
}

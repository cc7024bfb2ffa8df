//! Resource limits and identity of a service process: the values of a service entry's `user`,
//! `group`, `rlimits`, `memory_max`, `cpu_max`, `pids_max`, `umask` and `env_file` keys, how
//! they are checked, how user and group names become ids, and how an `env_file` is read.
//!
//! Where each applies (see `exec.rs` and `contain.rs`):
//! - `user`, `group`, `rlimits`, `umask` are set by the child between `clone` and `execve`;
//!   names are resolved to ids (and the user's supplementary groups) by the node beforehand.
//! - `memory_max`, `cpu_max`, `pids_max` are written to the service's cgroup (`memory.max`,
//!   `cpu.max`, `pids.max`) before the child joins it.
//! - `env_file` is read at every start of the service.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A user or a group, by name or by number (`"nobody"`, `65534`, `"65534"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    /// A numeric id.
    Id(u32),
    /// A name, looked up in the user (or group) database.
    Name(String),
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(name) => write!(f, "\"{name}\""),
        }
    }
}

impl FromStr for IdOrName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err("must not be empty: write a name or a number".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return id_from(text.parse::<u64>().unwrap_or(u64::MAX));
        }
        if text.contains(['\0', ':', '/']) || text.chars().any(char::is_whitespace) {
            return Err(format!("\"{text}\" is not a valid name"));
        }
        Ok(IdOrName::Name(text.to_string()))
    }
}

/// `u32::MAX` is `-1`, "no change" to `setresuid`: not an id.
fn id_from(n: u64) -> Result<IdOrName, String> {
    match u32::try_from(n) {
        Ok(id) if id != u32::MAX => Ok(IdOrName::Id(id)),
        _ => Err(format!("{n} is not a valid id (at most {})", u32::MAX - 1)),
    }
}

impl Serialize for IdOrName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IdOrName::Id(id) => serializer.serialize_u32(*id),
            IdOrName::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for IdOrName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IdOrName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a number, like \"nobody\" or 65534")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<IdOrName, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<IdOrName, E> {
                id_from(n).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<IdOrName, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("{n} is not a valid id"))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The ids a service runs with, resolved from `user` and `group` by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user id (`None`: the node's).
    pub(crate) uid: Option<u32>,
    /// The primary group id.
    pub(crate) gid: u32,
    /// Supplementary groups: the user's in the group database, none with only `group`.
    pub(crate) groups: Vec<u32>,
    /// Name and home folder of the user, for `USER`, `LOGNAME` and `HOME`.
    pub(crate) account: Option<(String, String)>,
}

/// Resolves `user` and `group` to ids. `None` when neither is set. Errors start with the key
/// (`user: no user "x" on this machine`).
pub(crate) fn resolve_identity(
    user: Option<&IdOrName>,
    group: Option<&IdOrName>,
) -> Result<Option<Identity>, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let gid = match group {
        None => None,
        Some(IdOrName::Id(gid)) => Some(*gid),
        Some(IdOrName::Name(name)) => match Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => return Err(format!("group: no group \"{name}\" on this machine")),
            Err(e) => return Err(format!("group: cannot look up \"{name}\": {e}")),
        },
    };
    let Some(user) = user else {
        return Ok(gid.map(|gid| Identity {
            uid: None,
            gid,
            groups: Vec::new(),
            account: None,
        }));
    };
    let found = match user {
        IdOrName::Id(uid) => User::from_uid(Uid::from_raw(*uid))
            .map_err(|e| format!("user: cannot look up uid {uid}: {e}"))?,
        IdOrName::Name(name) => match User::from_name(name) {
            Ok(Some(found)) => Some(found),
            Ok(None) => return Err(format!("user: no user \"{name}\" on this machine")),
            Err(e) => return Err(format!("user: cannot look up \"{name}\": {e}")),
        },
    };
    match (found, user) {
        (Some(found), _) => {
            let gid = gid.unwrap_or_else(|| found.gid.as_raw());
            let name = CString::new(found.name.as_bytes())
                .map_err(|_| format!("user: {user} has a name with a NUL byte"))?;
            let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map_err(|e| format!("user: cannot list the groups of {user}: {e}"))?
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            Ok(Some(Identity {
                uid: Some(found.uid.as_raw()),
                gid,
                groups,
                account: Some((found.name, found.dir.to_string_lossy().into_owned())),
            }))
        }
        (None, IdOrName::Id(uid)) => match gid {
            Some(gid) => Ok(Some(Identity {
                uid: Some(*uid),
                gid,
                groups: Vec::new(),
                account: None,
            })),
            None => Err(format!(
                "user: uid {uid} is not in the user database, so it has no group: set `group` too"
            )),
        },
        (None, IdOrName::Name(name)) => Err(format!("user: no user \"{name}\" on this machine")),
    }
}

/// Checks `user` and `group` as configuration: only a node running as root (effective uid
/// `euid` 0) may use them, and they must exist. The error starts with the key.
pub fn check_identity(
    user: Option<&IdOrName>,
    group: Option<&IdOrName>,
    euid: u32,
) -> Result<(), String> {
    let key = match (user, group) {
        (None, None) => return Ok(()),
        (Some(_), _) => "user",
        (None, Some(_)) => "group",
    };
    if euid != 0 {
        return Err(format!(
            "{key}: the node runs as uid {euid}, not root; only root can start a service as another user or group"
        ));
    }
    resolve_identity(user, group).map(|_| ())
}

pub use troupe_core::settings::ByteSize;

/// Smallest `memory_max` (below it a service cannot even start).
pub const MIN_MEMORY_MAX: u64 = 1 << 20;

/// The `cpu.max` period, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A CPU bandwidth limit: `"50%"` (of one CPU), `"250%"`, or a number of CPUs (`0.5`,
/// `"2"`). Applied as `cpu.max` = `"<quota> 100000"` (microseconds per 100 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// CPU time allowed per [`CPU_PERIOD_US`], in microseconds (at least 1000: 1%).
    pub quota_us: u64,
}

impl CpuMax {
    /// The `cpu.max` line.
    pub fn cgroup_value(&self) -> String {
        format!("{} {CPU_PERIOD_US}", self.quota_us)
    }

    fn from_cpus(cpus: f64, text: &str) -> Result<CpuMax, String> {
        let quota = (cpus * CPU_PERIOD_US as f64).round();
        if !(1000.0..=1e12).contains(&quota) {
            return Err(format!(
                "invalid CPU limit {text}: write a share of one CPU from \"1%\" (\"250%\" is two and a half CPUs), or a number of CPUs like 0.5"
            ));
        }
        Ok(CpuMax {
            quota_us: quota as u64,
        })
    }
}

impl FromStr for CpuMax {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let bad = || {
            format!(
                "invalid CPU limit \"{text}\"; write a share of one CPU, like \"50%\", or a number of CPUs, like \"0.5\""
            )
        };
        let (number, scale) = match trimmed.strip_suffix('%') {
            Some(percent) => (percent.trim(), 0.01),
            None => (trimmed, 1.0),
        };
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        CpuMax::from_cpus(value * scale, &format!("\"{text}\""))
    }
}

impl fmt::Display for CpuMax {
    /// As a percentage of one CPU: `"50%"`, `"12.5%"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, rest) = (self.quota_us / 1000, self.quota_us % 1000);
        if rest == 0 {
            write!(f, "{whole}%")
        } else {
            let fraction = format!("{rest:03}");
            write!(f, "{whole}.{}%", fraction.trim_end_matches('0'))
        }
    }
}

impl Serialize for CpuMax {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuMax {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CpuMax;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU limit, like \"50%\" or 0.5 (CPUs)")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<CpuMax, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<CpuMax, E> {
                CpuMax::from_cpus(n, &n.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<CpuMax, E> {
                self.visit_f64(n as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<CpuMax, E> {
                self.visit_f64(n as f64)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A file mode creation mask, written as an octal string: `"0027"`, `"077"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Umask(pub u32);

impl FromStr for Umask {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.trim();
        let valid = !digits.is_empty()
            && digits.len() <= 4
            && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match u32::from_str_radix(digits, 8) {
            Ok(mask) if valid && mask <= 0o777 => Ok(Umask(mask)),
            _ => Err(format!(
                "invalid umask \"{text}\"; write octal digits, from \"0000\" to \"0777\", like \"0027\""
            )),
        }
    }
}

impl fmt::Display for Umask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Umask {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Umask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Umask;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal string, like \"0027\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Umask, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Umask, E> {
                Err(E::custom(format!(
                    "a umask is written as an octal string, like \"0027\" (the number {n} is ambiguous)"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Umask, E> {
                Err(E::custom(format!(
                    "a umask is written as an octal string, like \"0027\" (the number {n} is ambiguous)"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A resource `setrlimit(2)` limits, by its name in `rlimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `as`: address space, bytes.
    As,
    /// `core`: core file size, bytes.
    Core,
    /// `cpu`: CPU time, seconds.
    Cpu,
    /// `data`: data segment, bytes.
    Data,
    /// `fsize`: size of files written, bytes.
    Fsize,
    /// `locks`: file locks.
    Locks,
    /// `memlock`: locked memory, bytes.
    Memlock,
    /// `msgqueue`: POSIX message queues, bytes.
    Msgqueue,
    /// `nice`: ceiling of the nice value (20 - nice).
    Nice,
    /// `nofile`: open file descriptors.
    Nofile,
    /// `nproc`: processes (threads) of the user.
    Nproc,
    /// `rss`: resident set size, bytes (ignored by Linux).
    Rss,
    /// `rtprio`: real-time priority.
    Rtprio,
    /// `rttime`: real-time CPU time, microseconds.
    Rttime,
    /// `sigpending`: queued signals.
    Sigpending,
    /// `stack`: stack size, bytes.
    Stack,
}

impl Resource {
    /// Every resource, in name order.
    pub const ALL: [Resource; 16] = [
        Resource::As,
        Resource::Core,
        Resource::Cpu,
        Resource::Data,
        Resource::Fsize,
        Resource::Locks,
        Resource::Memlock,
        Resource::Msgqueue,
        Resource::Nice,
        Resource::Nofile,
        Resource::Nproc,
        Resource::Rss,
        Resource::Rtprio,
        Resource::Rttime,
        Resource::Sigpending,
        Resource::Stack,
    ];

    /// Its name in `rlimits` (`nofile`).
    pub fn name(self) -> &'static str {
        match self {
            Resource::As => "as",
            Resource::Core => "core",
            Resource::Cpu => "cpu",
            Resource::Data => "data",
            Resource::Fsize => "fsize",
            Resource::Locks => "locks",
            Resource::Memlock => "memlock",
            Resource::Msgqueue => "msgqueue",
            Resource::Nice => "nice",
            Resource::Nofile => "nofile",
            Resource::Nproc => "nproc",
            Resource::Rss => "rss",
            Resource::Rtprio => "rtprio",
            Resource::Rttime => "rttime",
            Resource::Sigpending => "sigpending",
            Resource::Stack => "stack",
        }
    }

    /// The resource called `name`; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Resource, String> {
        Resource::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Resource::ALL.iter().map(|r| r.name()).collect();
                format!(
                    "unknown resource limit \"{name}\"; valid ones are {}",
                    names.join(", ")
                )
            })
    }

    /// Whether it is an amount of memory (so a size with a unit is accepted).
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Resource::As
                | Resource::Core
                | Resource::Data
                | Resource::Fsize
                | Resource::Memlock
                | Resource::Msgqueue
                | Resource::Rss
                | Resource::Stack
        )
    }

    /// The `RLIMIT_*` number.
    pub(crate) fn raw(self) -> libc::c_int {
        (match self {
            Resource::As => libc::RLIMIT_AS,
            Resource::Core => libc::RLIMIT_CORE,
            Resource::Cpu => libc::RLIMIT_CPU,
            Resource::Data => libc::RLIMIT_DATA,
            Resource::Fsize => libc::RLIMIT_FSIZE,
            Resource::Locks => libc::RLIMIT_LOCKS,
            Resource::Memlock => libc::RLIMIT_MEMLOCK,
            Resource::Msgqueue => libc::RLIMIT_MSGQUEUE,
            Resource::Nice => libc::RLIMIT_NICE,
            Resource::Nofile => libc::RLIMIT_NOFILE,
            Resource::Nproc => libc::RLIMIT_NPROC,
            Resource::Rss => libc::RLIMIT_RSS,
            Resource::Rtprio => libc::RLIMIT_RTPRIO,
            Resource::Rttime => libc::RLIMIT_RTTIME,
            Resource::Sigpending => libc::RLIMIT_SIGPENDING,
            Resource::Stack => libc::RLIMIT_STACK,
        }) as libc::c_int
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One side of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitValue {
    /// This many (bytes, seconds, files, ... as the resource counts).
    Finite(u64),
    /// No limit (`RLIM_INFINITY`).
    Infinity,
}

impl LimitValue {
    /// As `setrlimit` takes it.
    pub(crate) fn raw(self) -> u64 {
        match self {
            // RLIM_INFINITY of prlimit64(2), whatever the C library's rlim_t.
            LimitValue::Infinity => u64::MAX,
            LimitValue::Finite(n) => n,
        }
    }

    /// In the config's words for `resource`: `"infinity"`, `"2GiB"` (bytes), or a number.
    fn config(self, resource: Resource) -> RlimitAmount {
        match self {
            LimitValue::Infinity => RlimitAmount::Text("infinity".into()),
            LimitValue::Finite(n) if resource.is_bytes() && n >= 1024 && n.is_multiple_of(1024) => {
                RlimitAmount::Text(ByteSize(n).to_string())
            }
            LimitValue::Finite(n) => RlimitAmount::Number(n),
        }
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Finite(n) => write!(f, "{n}"),
            LimitValue::Infinity => f.write_str("infinity"),
        }
    }
}

/// A soft and a hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// What the process gets; it may raise it up to `hard`.
    pub soft: LimitValue,
    /// The ceiling (raising it needs privilege).
    pub hard: LimitValue,
}

/// A number or a text (`"infinity"`, `"2GiB"`) in `rlimits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RlimitAmount {
    /// A plain number.
    Number(u64),
    /// `"infinity"`, a number, or (for amounts of memory) a size with a unit.
    Text(String),
}

impl RlimitAmount {
    fn value(&self, resource: Resource) -> Result<LimitValue, String> {
        let text = match self {
            RlimitAmount::Number(n) => return Ok(LimitValue::Finite(*n)),
            RlimitAmount::Text(text) => text.trim(),
        };
        if text == "infinity" {
            return Ok(LimitValue::Infinity);
        }
        if let Ok(n) = text.parse::<u64>() {
            return Ok(LimitValue::Finite(n));
        }
        if resource.is_bytes() {
            return text.parse::<ByteSize>().map(|b| LimitValue::Finite(b.0));
        }
        Err(format!(
            "invalid limit \"{text}\"; write a number or \"infinity\""
        ))
    }
}

impl Serialize for RlimitAmount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RlimitAmount::Number(n) => serializer.serialize_u64(*n),
            RlimitAmount::Text(text) => serializer.serialize_str(text),
        }
    }
}

/// One entry of `rlimits`, as written: a value for both limits, or `[soft, hard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RlimitSetting {
    /// Soft and hard limit alike.
    Both(RlimitAmount),
    /// `[soft, hard]`.
    SoftHard(RlimitAmount, RlimitAmount),
}

impl RlimitSetting {
    /// The limit for `resource`; the error says what is wrong with the value.
    pub fn limit(&self, resource: Resource) -> Result<Rlimit, String> {
        let (soft, hard) = match self {
            RlimitSetting::Both(both) => {
                let value = both.value(resource)?;
                (value, value)
            }
            RlimitSetting::SoftHard(soft, hard) => (soft.value(resource)?, hard.value(resource)?),
        };
        if soft > hard {
            return Err(format!(
                "the soft limit ({soft}) is above the hard limit ({hard})"
            ));
        }
        Ok(Rlimit { soft, hard })
    }

    /// The entry for `limit` of `resource`, in the config's words.
    pub fn of(resource: Resource, limit: Rlimit) -> RlimitSetting {
        if limit.soft == limit.hard {
            RlimitSetting::Both(limit.soft.config(resource))
        } else {
            RlimitSetting::SoftHard(limit.soft.config(resource), limit.hard.config(resource))
        }
    }
}

impl Serialize for RlimitSetting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RlimitSetting::Both(value) => value.serialize(serializer),
            RlimitSetting::SoftHard(soft, hard) => [soft, hard].serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RlimitSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str =
            "a limit: a number, \"infinity\", a size like \"2GiB\", or [soft, hard]";
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RlimitSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RlimitSetting, E> {
                Ok(RlimitSetting::Both(RlimitAmount::Text(text.to_string())))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RlimitSetting, E> {
                Ok(RlimitSetting::Both(RlimitAmount::Number(n)))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RlimitSetting, E> {
                u64::try_from(n)
                    .map(|n| RlimitSetting::Both(RlimitAmount::Number(n)))
                    .map_err(|_| {
                        E::custom(format!("invalid limit {n}: a limit cannot be negative"))
                    })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RlimitSetting, A::Error> {
                let mut amounts = Vec::with_capacity(2);
                while let Some(value) = seq.next_element::<serde_json::Value>()? {
                    let amount = match value {
                        serde_json::Value::String(text) => RlimitAmount::Text(text),
                        serde_json::Value::Number(n) if n.as_u64().is_some() => {
                            RlimitAmount::Number(n.as_u64().unwrap_or_default())
                        }
                        other => {
                            return Err(A::Error::custom(format!(
                                "invalid limit {other}; expected {EXPECTED}"
                            )))
                        }
                    };
                    amounts.push(amount);
                    if amounts.len() > 2 {
                        break;
                    }
                }
                match <[RlimitAmount; 2]>::try_from(amounts) {
                    Ok([soft, hard]) => Ok(RlimitSetting::SoftHard(soft, hard)),
                    Err(_) => Err(A::Error::custom(
                        "a [soft, hard] pair has exactly two values",
                    )),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The limits of an `rlimits` table; the error starts with its key (`rlimits.nofile: ...`).
pub fn parse_rlimits(
    table: &BTreeMap<String, RlimitSetting>,
) -> Result<BTreeMap<Resource, Rlimit>, String> {
    table
        .iter()
        .map(|(name, setting)| {
            let resource = Resource::from_name(name).map_err(|e| format!("rlimits.{name}: {e}"))?;
            let limit = setting
                .limit(resource)
                .map_err(|e| format!("rlimits.{name}: {e}"))?;
            Ok((resource, limit))
        })
        .collect()
}

/// Largest `env_file` read.
pub const MAX_ENV_FILE_BYTES: u64 = 1 << 20;

/// Reads the environment file `path` (see [`parse_env_file`]). The error names the file (and
/// the line).
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("env_file {shown}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("env_file {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(format!(
            "env_file {shown}: larger than {MAX_ENV_FILE_BYTES} bytes"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        format!("env_file {shown}, line {line}: not UTF-8 text")
    })?;
    parse_env_file(&text).map_err(|(line, why)| format!("env_file {shown}, line {line}: {why}"))
}

/// The variables of an environment file, in order: `KEY=VALUE` lines; blank lines and lines
/// starting with `#` are skipped; a line may start with `export `; a value may be in double
/// quotes (with `\"`, `\\`, `\n`, `\t` and `\$` escapes) or single quotes (taken as is), and a
/// quoted value may be followed by a `# comment`; an unquoted value is the rest of the line,
/// without surrounding spaces. No expansion of `$VARIABLES`. The error is the line number (from
/// 1) and what is wrong; it never repeats a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => line,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err((
                number,
                "expected KEY=VALUE (the line has no \"=\")".to_string(),
            ));
        };
        let key = key.trim_end();
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            let shown: String = key.chars().take(64).collect();
            return Err((
                number,
                format!(
                    "\"{shown}\" is not a valid variable name (letters, digits and _, not starting with a digit)"
                ),
            ));
        }
        let value = env_value(value.trim()).map_err(|why| (number, format!("{key}: {why}")))?;
        vars.push((key.to_string(), value));
    }
    Ok(vars)
}

fn env_value(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let (value, rest) = match chars.next() {
        Some('"') => {
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err("the value's opening \" is not closed on its line".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(c @ ('"' | '\\' | '$' | '`')) => value.push(c),
                        Some(c) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => {
                            return Err("the value's opening \" is not closed on its line".into())
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
            (value, chars.as_str())
        }
        Some('\'') => {
            let rest = chars.as_str();
            let Some(end) = rest.find('\'') else {
                return Err("the value's opening ' is not closed on its line".into());
            };
            (rest[..end].to_string(), &rest[end + 1..])
        }
        _ => return no_nul(text.to_string()),
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("unexpected text after the closing quote".into());
    }
    no_nul(value)
}

fn no_nul(value: String) -> Result<String, String> {
    if value.contains('\0') {
        return Err("the value contains a NUL character".into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_parse() {
        assert_eq!(
            "nobody".parse::<IdOrName>(),
            Ok(IdOrName::Name("nobody".into()))
        );
        assert_eq!("65534".parse::<IdOrName>(), Ok(IdOrName::Id(65534)));
        assert!("".parse::<IdOrName>().is_err());
        assert!("a b".parse::<IdOrName>().is_err());
        assert!("4294967295".parse::<IdOrName>().is_err());
        let json: IdOrName = serde_json::from_str("0").unwrap();
        assert_eq!(json, IdOrName::Id(0));
        assert!(serde_json::from_str::<IdOrName>("-1").is_err());
        assert_eq!(serde_json::to_string(&IdOrName::Id(7)).unwrap(), "7");
        assert_eq!(
            serde_json::to_string(&IdOrName::Name("x".into())).unwrap(),
            "\"x\""
        );
    }

    #[test]
    fn identity_needs_root_and_existing_names() {
        let nobody = IdOrName::Name("nobody".into());
        let err = check_identity(Some(&nobody), None, 1000).unwrap_err();
        assert!(
            err.starts_with("user: the node runs as uid 1000, not root"),
            "{err}"
        );
        let err = check_identity(None, Some(&IdOrName::Id(5)), 1000).unwrap_err();
        assert!(err.starts_with("group: "), "{err}");
        assert_eq!(check_identity(None, None, 1000), Ok(()));
        let ghost = IdOrName::Name("no-such-user-troupe".into());
        let err = check_identity(Some(&ghost), None, 0).unwrap_err();
        assert_eq!(err, "user: no user \"no-such-user-troupe\" on this machine");
        let err = check_identity(None, Some(&ghost), 0).unwrap_err();
        assert_eq!(
            err,
            "group: no group \"no-such-user-troupe\" on this machine"
        );
        // A uid outside the database needs its group named.
        let err = check_identity(Some(&IdOrName::Id(4_000_000)), None, 0).unwrap_err();
        assert!(err.contains("set `group` too"), "{err}");
        assert_eq!(
            check_identity(
                Some(&IdOrName::Id(4_000_000)),
                Some(&IdOrName::Id(4_000_000)),
                0
            ),
            Ok(())
        );
        // root exists everywhere, with gid 0 among its groups.
        let root = resolve_identity(Some(&IdOrName::Name("root".into())), None)
            .unwrap()
            .unwrap();
        assert_eq!((root.uid, root.gid), (Some(0), 0));
        assert!(root.groups.contains(&0));
        assert_eq!(root.account.as_ref().map(|a| a.0.as_str()), Some("root"));
        let only_group = resolve_identity(None, Some(&IdOrName::Id(5)))
            .unwrap()
            .unwrap();
        assert_eq!((only_group.uid, only_group.gid), (None, 5));
        assert!(only_group.groups.is_empty());
    }

    #[test]
    fn sizes_cpu_limits_and_umasks_parse() {
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("2 GiB".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
        assert_eq!("1kb".parse::<ByteSize>(), Ok(ByteSize(1000)));
        assert!("1.5GiB".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");

        assert_eq!("50%".parse::<CpuMax>(), Ok(CpuMax { quota_us: 50_000 }));
        assert_eq!("0.5".parse::<CpuMax>(), Ok(CpuMax { quota_us: 50_000 }));
        assert_eq!("2".parse::<CpuMax>(), Ok(CpuMax { quota_us: 200_000 }));
        assert_eq!("12.5%".parse::<CpuMax>().unwrap().to_string(), "12.5%");
        assert_eq!(CpuMax { quota_us: 50_000 }.cgroup_value(), "50000 100000");
        assert_eq!(CpuMax { quota_us: 250_000 }.to_string(), "250%");
        for bad in ["0%", "0.5%", "-1", "lots", "%", "1e3", ""] {
            assert!(bad.parse::<CpuMax>().is_err(), "{bad}");
        }
        let from_number: CpuMax = serde_json::from_str("1.5").unwrap();
        assert_eq!(from_number.quota_us, 150_000);

        assert_eq!("0027".parse::<Umask>(), Ok(Umask(0o027)));
        assert_eq!("77".parse::<Umask>(), Ok(Umask(0o077)));
        assert_eq!(Umask(0o027).to_string(), "0027");
        for bad in ["", "0800", "12345", "1777", "abc", "-1"] {
            assert!(bad.parse::<Umask>().is_err(), "{bad}");
        }
        let err = serde_json::from_str::<Umask>("27").unwrap_err().to_string();
        assert!(err.contains("octal string"), "{err}");
    }

    fn table(json: serde_json::Value) -> Result<BTreeMap<Resource, Rlimit>, String> {
        let table: BTreeMap<String, RlimitSetting> =
            serde_json::from_value(json).map_err(|e| e.to_string())?;
        parse_rlimits(&table)
    }

    #[test]
    fn rlimits_parse_with_units_infinity_and_pairs() {
        let limits = table(serde_json::json!({
            "nofile": 4096, "nproc": [256, "512"], "core": 0, "as": "2GiB",
            "stack": ["8MiB", "infinity"], "cpu": "infinity"
        }))
        .unwrap();
        let same = |n| Rlimit {
            soft: LimitValue::Finite(n),
            hard: LimitValue::Finite(n),
        };
        assert_eq!(limits[&Resource::Nofile], same(4096));
        assert_eq!(limits[&Resource::Core], same(0));
        assert_eq!(limits[&Resource::As], same(2 << 30));
        assert_eq!(
            limits[&Resource::Nproc],
            Rlimit {
                soft: LimitValue::Finite(256),
                hard: LimitValue::Finite(512)
            }
        );
        assert_eq!(limits[&Resource::Stack].hard, LimitValue::Infinity);
        assert_eq!(limits[&Resource::Cpu].soft, LimitValue::Infinity);
        // Back to the config's words, and again to the same limits.
        let words: BTreeMap<String, RlimitSetting> = limits
            .iter()
            .map(|(r, l)| (r.name().to_string(), RlimitSetting::of(*r, *l)))
            .collect();
        let json = serde_json::to_value(&words).unwrap();
        assert_eq!(json["as"], "2GiB");
        assert_eq!(json["nproc"], serde_json::json!([256, 512]));
        assert_eq!(json["cpu"], "infinity");
        assert_eq!(table(json).unwrap(), limits);

        let err = table(serde_json::json!({"files": 10})).unwrap_err();
        assert!(
            err.starts_with("rlimits.files: unknown resource limit"),
            "{err}"
        );
        assert!(
            err.contains("as, core, cpu,") && err.contains("nofile"),
            "{err}"
        );
        let err = table(serde_json::json!({"nofile": "4KiB"})).unwrap_err();
        assert!(err.starts_with("rlimits.nofile: invalid limit"), "{err}");
        let err = table(serde_json::json!({"nofile": [2048, 1024]})).unwrap_err();
        assert!(
            err.contains("soft limit (2048) is above the hard limit (1024)"),
            "{err}"
        );
        assert!(table(serde_json::json!({"nofile": -1})).is_err());
        assert!(table(serde_json::json!({"nofile": [1, 2, 3]})).is_err());
        assert!(table(serde_json::json!({"nofile": true})).is_err());
    }

    #[test]
    fn env_files_parse_and_errors_give_the_line() {
        let text = "# settings\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\" # comment\nD='single $x'\nE=\"esc \\\"q\\\" \\n\"\nF=\nexport_G=g\r\n";
        let vars = parse_env_file(text).unwrap();
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("quoted # not a comment"));
        assert_eq!(get("D"), Some("single $x"));
        assert_eq!(get("E"), Some("esc \"q\" \n"));
        assert_eq!(get("F"), Some(""));
        assert_eq!(get("export_G"), Some("g"));
        for (bad, line, needle) in [
            ("A=1\nnot a pair\n", 2, "expected KEY=VALUE"),
            ("1A=x", 1, "not a valid variable name"),
            ("\n\nA=\"open", 3, "not closed"),
            ("A='x' y", 1, "after the closing quote"),
            ("=x", 1, "not a valid variable name"),
        ] {
            let (at, why) = parse_env_file(bad).unwrap_err();
            assert_eq!(at, line, "{bad}: {why}");
            assert!(why.contains(needle), "{bad}: {why}");
        }
    }

    #[test]
    fn env_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        std::fs::write(&path, "A=1\nB\n").unwrap();
        let err = read_env_file(&path).unwrap_err();
        assert_eq!(
            err,
            format!(
                "env_file {}, line 2: expected KEY=VALUE (the line has no \"=\")",
                path.display()
            )
        );
        let err = read_env_file(&dir.path().join("missing.env")).unwrap_err();
        assert!(
            err.starts_with("env_file ") && err.contains("missing.env"),
            "{err}"
        );
    }
}

//! Machines for multi-machine tests: each [`Machine`] is a network namespace of its own with one
//! address on a private subnet, wired to the other machines of its [`Lab`] through a bridge
//! that lives in a "switch" namespace (so the host's own network is never touched).
//!
//! Creating namespaces needs root (CI runs as root), `ip` from iproute2 and `nsenter` from
//! util-linux; [`Lab::new`]
//! panics with a message saying which is missing rather than skipping. Everything a lab creates
//! is removed when it is dropped, also when a test fails, and a new lab first removes what
//! labs of dead test processes left behind.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace a lab creates: `tl<pid>x<lab>-<machine>`.
const PREFIX: &str = "tl";

/// One set of machines on one subnet.
pub struct Lab {
    id: String,
    subnet: u8,
    switch: String,
    machines: Vec<String>,
}

/// A machine of a lab: a network namespace with one address.
#[derive(Clone)]
pub struct Machine {
    /// The namespace's name.
    pub netns: String,
    /// The machine's address on the lab's subnet.
    pub ip: String,
    /// The switch-side end of its link (set down to cut the machine off).
    link: String,
    switch: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run `ip` (install iproute2): {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(err) = ip(args) {
        panic!(
            "cannot build the test network ({err}); these tests need root and iproute2 (`apt-get install iproute2`)"
        );
    }
}

/// Namespaces left by lab processes that are no longer alive.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Lab {
    /// A new lab with an empty switch.
    pub fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}x{n}", std::process::id());
        // A subnet per lab of this process, so that labs running at once never share one.
        let subnet = 10 + (n % 200) as u8;
        let switch = format!("{id}-sw");
        must(&["netns", "add", &switch]);
        let lab = Lab {
            id,
            subnet,
            switch,
            machines: Vec::new(),
        };
        must(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &lab.switch, "link", "set", "br0", "up"]);
        lab
    }

    /// Adds a machine called `name` (a few letters) at `10.<lab>.0.<host>`.
    pub fn machine(&mut self, name: &str, host: u8) -> Machine {
        let netns = format!("{}-{name}", self.id);
        let ip_addr = format!("10.99.{}.{host}", self.subnet);
        // Interface names are at most 15 bytes; they live in their own namespaces, so short
        // fixed names do not collide between labs.
        let inside = "eth0";
        let outside = format!("p{host}");
        must(&["netns", "add", &netns]);
        self.machines.push(netns.clone());
        must(&["-n", &netns, "link", "set", "lo", "up"]);
        must(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            inside,
            "netns",
            &netns,
        ]);
        must(&["-n", &self.switch, "link", "set", &outside, "master", "br0"]);
        must(&["-n", &self.switch, "link", "set", &outside, "up"]);
        must(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            inside,
        ]);
        must(&["-n", &netns, "link", "set", inside, "up"]);
        Machine {
            netns,
            ip: ip_addr,
            link: outside,
            switch: self.switch.clone(),
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for netns in self.machines.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", netns]);
        }
    }
}

impl Machine {
    /// `program` run inside this machine's network namespace. `nsenter` replaces itself with
    /// the program, so the child's pid is the program's; unlike `ip netns exec` it enters only
    /// the network namespace and leaves `/sys` (and the cgroup file system under it) as the
    /// host has it, so supervised services are contained as on a real machine.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Turns `cmd` (built for the host) into the same command run on this machine, keeping
    /// its environment.
    pub fn wrap(&self, cmd: Command) -> Command {
        let mut wrapped = self.command(cmd.get_program());
        wrapped.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Cuts the machine off the network (its link goes down at the switch).
    pub fn cut(&self) {
        must(&["-n", &self.switch, "link", "set", &self.link, "down"]);
    }

    /// Brings the machine's link back.
    pub fn heal(&self) {
        must(&["-n", &self.switch, "link", "set", &self.link, "up"]);
    }
}

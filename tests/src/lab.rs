//! Network labs for the network guard's tests: namespaces, veth and a bridge the test makes
//! (nothing of the host's own network is touched), a cgroup of its own that the guard is
//! attached to, and an agent watching it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    agent::{start_agent_via, RunningAgent},
    harness::{is_root, timeguard, wait_for},
};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Where the cgroup v2 hierarchy is mounted on this host (the root, or `unified` when the
/// host runs a hybrid hierarchy).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("cgroup2"))?;
    line.split(' ').nth(1).map(PathBuf::from)
}

/// Network namespaces this test makes, and a cgroup of its own: the network guard is
/// attached there, so nothing of the host's own traffic is touched.
///
/// Two shapes: `pair` (namespaces `a` and `b` joined by one veth pair: A has 10.231.0.1 and
/// .4 and fd00:231::1, B has .2, .3 and fd00:231::2), and `bridged` (one namespace per role
/// on a bridge in a namespace of its own, role i at 10.232.0.(i+1), each with an interface
/// named by `interface`).
pub struct NetLab {
    pub a: String,
    pub b: String,
    /// A pair lab's interfaces: A's and B's end of the veth pair.
    pub va: String,
    pub vb: String,
    /// Bridged labs: the namespace of each role, in the order given.
    pub roles: Vec<String>,
    pub cgroup: PathBuf,
    tg_clock: PathBuf,
    namespaces: Vec<String>,
}

impl NetLab {
    fn named(cgroup_root: &Path, tag: char, tg_clock: &Path) -> NetLab {
        let id = std::process::id() % 100_000;
        NetLab {
            a: format!("tg-a{tag}-{id}"),
            b: format!("tg-b{tag}-{id}"),
            va: format!("tga{tag}{id}"),
            vb: format!("tgb{tag}{id}"),
            roles: Vec::new(),
            cgroup: cgroup_root.join(format!("tg-net{tag}-{id}")),
            tg_clock: tg_clock.to_path_buf(),
            namespaces: Vec::new(),
        }
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A pair lab named by `tag` (one letter), so that tests running at once have their own.
    pub fn pair(cgroup_root: &Path, tag: char, tg_clock: &Path) -> Result<Self, String> {
        let mut lab = NetLab::named(cgroup_root, tag, tg_clock);
        let (a, b) = (lab.a.clone(), lab.b.clone());
        lab.add_namespace(&a)?;
        lab.add_namespace(&b)?;
        let (va, vb) = (lab.va.clone(), lab.vb.clone());
        for args in [
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", &a],
            vec!["link", "set", &vb, "netns", &b],
            vec!["-n", &a, "addr", "add", "10.231.0.1/24", "dev", &va],
            vec!["-n", &a, "addr", "add", "10.231.0.4/24", "dev", &va],
            vec!["-n", &b, "addr", "add", "10.231.0.2/24", "dev", &vb],
            vec!["-n", &b, "addr", "add", "10.231.0.3/24", "dev", &vb],
            vec!["-n", &a, "link", "set", &va, "up"],
            vec!["-n", &b, "link", "set", &vb, "up"],
            vec![
                "-n",
                &a,
                "addr",
                "add",
                "fd00:231::1/64",
                "dev",
                &va,
                "nodad",
            ],
            vec![
                "-n",
                &b,
                "addr",
                "add",
                "fd00:231::2/64",
                "dev",
                &vb,
                "nodad",
            ],
        ] {
            ip(&args)?;
        }
        lab.make_cgroup()?;
        Ok(lab)
    }

    /// A bridged lab with one namespace per role.
    pub fn bridged(
        cgroup_root: &Path,
        tag: char,
        roles: &[&str],
        tg_clock: &Path,
    ) -> Result<Self, String> {
        let mut lab = NetLab::named(cgroup_root, tag, tg_clock);
        let id = std::process::id() % 100_000;
        let bridge_ns = format!("tg-br{tag}-{id}");
        lab.add_namespace(&bridge_ns)?;
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
        for (i, role) in roles.iter().enumerate() {
            let ns = format!("tg-{role}{tag}-{id}");
            lab.add_namespace(&ns)?;
            let inside = lab.interface(i);
            let port = format!("p{i}");
            let address = format!("10.232.0.{}/24", i + 1);
            for args in [
                vec![
                    "-n", &ns, "link", "add", &inside, "type", "veth", "peer", "name", &port,
                    "netns", &bridge_ns,
                ],
                vec![
                    "-n", &bridge_ns, "link", "set", &port, "master", "br0", "up",
                ],
                vec!["-n", &ns, "addr", "add", &address, "dev", &inside],
                vec!["-n", &ns, "link", "set", &inside, "up"],
            ] {
                ip(&args)?;
            }
            lab.roles.push(ns);
        }
        lab.make_cgroup()?;
        Ok(lab)
    }

    /// The lab interface of role `i` of a bridged lab (the same name in each namespace).
    pub fn interface(&self, i: usize) -> String {
        format!("tgl{i}")
    }

    fn make_cgroup(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.cgroup).map_err(|e| format!("{}: {e}", self.cgroup.display()))
    }

    /// Runs `tg-clock args…` in namespace `ns`, inside the lab's cgroup when `in_cgroup`.
    pub fn tg_clock(&self, ns: &str, in_cgroup: bool, args: &[&str]) -> Command {
        let tool = self.tg_clock.display().to_string();
        self.run_in(ns, in_cgroup, &tool, args)
    }

    /// `tg-clock udp-recv ADDR SECS` in namespace a, in the lab's cgroup: counts the
    /// datagrams reaching ADDR by source, printed as JSON when it ends.
    pub fn udp_receiver(&self, addr: &str, secs: u64) -> std::process::Child {
        self.tg_clock(&self.a, true, &["udp-recv", addr, &secs.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("the receiver at {addr} starts: {e}"))
    }

    /// Runs `program args…` in namespace `ns`, inside the lab's cgroup when `in_cgroup`.
    pub fn run_in(&self, ns: &str, in_cgroup: bool, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        let enter = if in_cgroup {
            format!("echo $$ > '{}/cgroup.procs' && ", self.cgroup.display())
        } else {
            String::new()
        };
        c.arg("-c").arg(format!(
            "{enter}exec ip netns exec {ns} {program} {}",
            args.join(" ")
        ));
        c
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// An agent with `policy` whose network guard watches the lab's cgroup, attached, started
/// through `prefix` (e.g. nsenter into a lab namespace); an error says why it cannot run.
pub fn agent_for(
    lab: &NetLab,
    tag: char,
    policy: &str,
    prefix: &[&str],
) -> Result<RunningAgent, String> {
    let cg = lab.cgroup.display().to_string();
    let running = start_agent_via(
        prefix,
        &format!("net{tag}"),
        Stdio::null(),
        policy,
        &["--network-cgroup", &cg],
    )?;
    let attached = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        running
            .status()
            .filter(|s| !s["network"]["attached"].is_null())
    });
    if attached.is_some() {
        return Ok(running);
    }
    let log = running.stop();
    Err(format!("the network guard never attached:\n{log}"))
}

/// What the network tests need (root, the agent binary, cgroup v2): the cgroup root, or
/// the reason they cannot run here.
pub fn can_run() -> Result<PathBuf, String> {
    if !is_root() {
        return Err("the network tests need root: run them through `cargo xtask test`".into());
    }
    timeguard();
    cgroup2_root().ok_or_else(|| "the network tests need a cgroup v2 hierarchy mounted".into())
}

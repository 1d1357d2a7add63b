//! Several hosts on one machine: each process of a test (node, engine, PostgreSQL, client) in a
//! network namespace of its own, joined by veth pairs to a bridge that lives in one more
//! namespace, the test's hub. Addresses are 10.99.0.0/24 inside that sandbox only: the hub is
//! the test's own, so tests running at once never see each other's networks, and nothing is
//! added to the machine's own network. Partitions are nftables rules inside a host's namespace.
//! Everything is removed when the [`Net`] is dropped.
//!
//! Needs root (network namespaces), `ip` (iproute2) and `nft` (nftables); `scripts/deps.sh`
//! installs the latter two.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The subnet of every sandbox (each in its own hub namespace).
const SUBNET: &str = "10.99.0";

static N_NETS: AtomicUsize = AtomicUsize::new(0);

pub struct Net {
    /// Prefix of this sandbox's namespace names, unique on the machine.
    prefix: String,
    hub: String,
    /// Label → (namespace, address).
    hosts: Mutex<BTreeMap<String, (String, String)>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Net({})", self.prefix)
    }
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{what}: {cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run("ip", Command::new("ip").args(args))
}

impl Net {
    /// Creates the hub namespace and its bridge. Panics, saying what is missing, where network
    /// namespaces cannot be made (not root, no iproute2).
    pub fn create() -> Net {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the multi-host tests make network namespaces: run them as root");
        let prefix = format!("dfs{}n{}", std::process::id(), N_NETS.fetch_add(1, Ordering::Relaxed));
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub]);
        let net = Net { prefix, hub, hosts: Mutex::new(BTreeMap::new()) };
        ip(&["-n", &net.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        net
    }

    /// The address of host `label`, creating the host (its namespace, its link to the bridge)
    /// the first time.
    pub fn host(&self, label: &str) -> String {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, addr)) = hosts.get(label) {
            return addr.clone();
        }
        let n = hosts.len() + 10;
        assert!(n < 250, "too many hosts in one sandbox");
        let ns = format!("{}-{label}", self.prefix);
        let addr = format!("{SUBNET}.{n}");
        let port = format!("p{n}");
        ip(&["netns", "add", &ns]);
        ip(&["-n", &self.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &self.hub, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        hosts.insert(label.to_string(), (ns, addr.clone()));
        addr
    }

    fn namespace_of(&self, label: &str) -> String {
        self.host(label);
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())[label].0.clone()
    }

    /// A command that runs `program` on host `label`.
    pub fn command(&self, label: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace_of(label)]).arg(program);
        cmd
    }

    /// The label of the host with address `addr` (an `IP` or `IP:port`).
    pub fn label_of(&self, addr: &str) -> String {
        let ip = addr.split(':').next().unwrap_or(addr);
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.iter().find(|(_, (_, a))| a == ip).map(|(l, _)| l.clone()).unwrap_or_else(|| panic!("no host at {addr}"))
    }

    /// Cuts host `label` off from the hosts at `addrs` (each `IP` or `IP:port`), both ways:
    /// its packets to them and theirs to it are dropped, as by a partition (no reset, no
    /// answer).
    pub fn cut(&self, label: &str, addrs: &[&str]) {
        let set: Vec<&str> = addrs.iter().map(|a| a.split(':').next().unwrap_or(a)).collect();
        let set = set.join(", ");
        let rules = format!(
            "table inet dfs_cut {{\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        let ns = self.namespace_of(label);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft (nftables) is needed for partitions: scripts/deps.sh installs it");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("write the rules");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Removes the cut of [`Net::cut`].
    pub fn heal(&self, label: &str) {
        let ns = self.namespace_of(label);
        run("nft", Command::new("ip").args(["netns", "exec", &ns, "nft", "delete", "table", "inet", "dfs_cut"]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|e| e.into_inner()));
        for (ns, _) in hosts.values() {
            // Processes still inside are the test's to have killed; deleting the name is enough.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.hub]).output();
    }
}

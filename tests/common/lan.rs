//! A test LAN on the real network stack: N hosts, each a network namespace with an `eth0`
//! (one end of a veth pair) on one bridge, in a subnet of this test's own. Multicast (mDNS)
//! crosses the bridge like on a home LAN; nothing leaves it. The test process reaches the
//! hosts through the bridge's own address. Everything is removed on drop, the processes
//! inside the namespaces included, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Lan {
    id: String,
    subnet: String,
    hosts: usize,
    root: tempfile::TempDir,
    /// Processes of the test's own that live on the LAN (an avahi-daemon, its bus).
    helpers: Vec<Child>,
    avahi: bool,
}

/// Whether a test LAN can be built here (root, iproute2, iptables, avahi, dbus). Under
/// `CI=true` their absence fails the test; elsewhere the test says so and is skipped.
pub fn lan_tools_present() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let missing: Vec<&str> = [
        "ip",
        "iptables",
        "avahi-daemon",
        "avahi-browse",
        "dbus-daemon",
    ]
    .into_iter()
    .filter(|t| !run(&["sh", "-c", &format!("command -v {t}")]))
    .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = format!("a test LAN needs root (root={root}) and {missing:?} (run scripts/test.sh)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// Builds a LAN of `hosts` hosts.
    pub fn new(hosts: usize) -> Lan {
        assert!(hosts < 200);
        let pid = std::process::id();
        // names of at most 15 characters, unique per test process
        let id = format!("{:05x}", pid & 0xfffff);
        let subnet = format!("10.{}.{}", 100 + (pid >> 8) % 100, pid % 256);
        let lan = Lan {
            id,
            subnet,
            hosts,
            root: tempfile::tempdir().unwrap(),
            helpers: vec![],
            avahi: false,
        };
        let br = lan.bridge();
        must(&["ip", "link", "add", &br, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", lan.subnet),
            "dev",
            &br,
        ]);
        must(&["ip", "link", "set", &br, "up"]);
        // dockerd turns on br_netfilter with FORWARD DROP: let the bridge forward
        must(&[
            "iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        for i in 0..hosts {
            let ns = lan.netns(i);
            let outside = lan.veth(i);
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["ip", "link", "set", &outside, "master", &br]);
            must(&["ip", "link", "set", &outside, "up"]);
            let inside = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", &ns];
                full.extend_from_slice(args);
                must(&full);
            };
            inside(&["ip", "link", "set", "lo", "up"]);
            inside(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", lan.ip(i)),
                "dev",
                "eth0",
            ]);
            inside(&["ip", "link", "set", "eth0", "up"]);
        }
        lan
    }

    fn bridge(&self) -> String {
        format!("kb{}", self.id)
    }

    fn veth(&self, i: usize) -> String {
        format!("kv{}h{i}", self.id)
    }

    pub fn netns(&self, i: usize) -> String {
        format!("kraken-{}-{i}", self.id)
    }

    /// This machine's own address on the LAN (the bridge's).
    pub fn bridge_address(&self) -> String {
        format!("{}.254", self.subnet)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A command run on host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns(i), program]);
        c
    }

    /// Gives host `i` a new address (a new DHCP lease), returning it.
    pub fn readdress(&self, i: usize, last_octet: u8) -> String {
        let ns = self.netns(i);
        let ip = format!("{}.{last_octet}", self.subnet);
        must(&[
            "ip", "netns", "exec", &ns, "ip", "addr", "flush", "dev", "eth0",
        ]);
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        ip
    }

    /// Cuts host `i` off the LAN (its cable pulled).
    pub fn cut(&self, i: usize) {
        must(&["ip", "link", "set", &self.veth(i), "down"]);
    }

    /// Powers host `i` off: every process in it killed at once (the agent, its RabbitMQ,
    /// epmd), and the job containers its worker ran (on the machine's shared dockerd)
    /// removed, as a power cut would.
    pub fn power_off(&self, i: usize, node: &str) {
        let ns = self.netns(i);
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                run(&["kill", "-9", pid]);
            }
        }
        let label = format!("label=kraken.node={node}");
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                run(&["docker", "rm", "-f", id]);
            }
        }
    }

    /// Plugs host `i` back in.
    pub fn heal(&self, i: usize) {
        must(&["ip", "link", "set", &self.veth(i), "up"]);
    }

    /// Starts an avahi-daemon (a third-party mDNS stack) on host `i`, with a private D-Bus
    /// bus; returns the bus address `avahi-browse` needs.
    pub fn start_avahi(&mut self, i: usize) -> String {
        let dir = self.root.path().join(format!("avahi{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bus = format!("unix:path={}", dir.join("bus").display());
        let dbus = self
            .command(i, "dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--address", &bus])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        self.helpers.push(dbus);
        let conf = dir.join("avahi-daemon.conf");
        std::fs::write(
            &conf,
            "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\nenable-dbus=yes\n\
             [publish]\npublish-addresses=no\npublish-hinfo=no\npublish-workstation=no\n",
        )
        .unwrap();
        // the bus must be up before avahi connects to it
        let socket: PathBuf = dir.join("bus");
        super::wait_until(
            "the test bus is up",
            std::time::Duration::from_secs(10),
            || socket.exists().then_some(()),
        );
        let avahi = self
            .command(i, "avahi-daemon")
            .args([
                "-f",
                &conf.display().to_string(),
                "--no-chroot",
                "--no-drop-root",
                "--no-rlimits",
            ])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("avahi.log")).unwrap())
            .spawn()
            .expect("start avahi-daemon");
        self.helpers.push(avahi);
        self.avahi = true;
        bus
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for mut h in self.helpers.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
        for i in 0..self.hosts {
            let ns = self.netns(i);
            // whatever still runs in the namespace (an agent, its RabbitMQ, epmd)
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    run(&["kill", "-9", pid]);
                }
            }
            run(&["ip", "netns", "del", &ns]);
            run(&["ip", "link", "del", &self.veth(i)]);
        }
        let br = self.bridge();
        run(&[
            "iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        run(&["ip", "link", "del", &br]);
        if self.avahi {
            // the pid file of the daemon this test killed
            let _ = std::fs::remove_file("/run/avahi-daemon/pid");
        }
    }
}

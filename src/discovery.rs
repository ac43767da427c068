//! Discovery over mDNS: this agent advertised as `_kraken._tcp.local.` with TXT `cluster`,
//! `node`, `role`, `term`, `api` and `version`, and a continuous browse that keeps every
//! Kraken device on the LAN in view, joined or not. A device is known by its node id, never
//! by its address: a device that comes back with a new address is the same device.
//!
//! Records that do not parse (forged, truncated, another program's) are ignored with a log
//! line; nothing a packet says can stop the browse.

use crate::config::DiscoveryConfig;
use crate::identity::plain_id;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The DNS-SD service type of Kraken agents.
pub const SERVICE: &str = "_kraken._tcp.local.";

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// What a device is to its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, async_graphql::Enum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not in a cluster yet (looking for one, or waiting for approval).
    Candidate,
    Orchestrator,
    Worker,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Candidate => "candidate",
            Role::Orchestrator => "orchestrator",
            Role::Worker => "worker",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "candidate" => Role::Candidate,
            "orchestrator" => Role::Orchestrator,
            "worker" => Role::Worker,
            _ => return None,
        })
    }
}

/// What one device says about itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advert {
    pub node: String,
    /// Its cluster's id; empty while it has none.
    pub cluster: String,
    pub role: Role,
    /// The leadership term it claims (0 until elections exist).
    pub term: u64,
    pub api_port: u16,
    pub version: String,
}

impl Advert {
    fn txt(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cluster", self.cluster.clone()),
            ("node", self.node.clone()),
            ("role", self.role.as_str().into()),
            ("term", self.term.to_string()),
            ("api", self.api_port.to_string()),
            ("version", self.version.clone()),
        ]
    }

    /// Reads a TXT record, refusing anything our agents would not have written.
    pub fn from_txt(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let field = |k: &str| get(k).ok_or_else(|| format!("no `{k}`"));
        let node = field("node")?;
        if !plain_id(&node, 2) {
            return Err(format!("node `{node}` is not a node id"));
        }
        let cluster = field("cluster")?;
        if !cluster.is_empty() && !plain_id(&cluster, 1) {
            return Err(format!("cluster `{cluster}` is not a cluster id"));
        }
        let role_text = field("role")?;
        let role = Role::parse(&role_text).ok_or_else(|| format!("unknown role `{role_text}`"))?;
        let term = field("term")?
            .parse()
            .map_err(|_| "`term` is not a number".to_string())?;
        let api_port = field("api")?
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| "`api` is not a port".to_string())?;
        let version = field("version")?;
        if version.is_empty() || version.len() > 40 {
            return Err("`version` is empty or too long".into());
        }
        Ok(Self {
            node,
            cluster,
            role,
            term,
            api_port,
            version,
        })
    }
}

/// A device seen on the LAN.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    #[serde(flatten)]
    pub advert: Advert,
    /// Its addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    pub last_seen: i64,
}

impl Device {
    /// The base URL of its API (on its first address).
    pub fn api_url(&self) -> Option<String> {
        // a link-local IPv6 address needs its interface (zone) to be reached, which mDNS
        // does not give: such a device is reached at its IPv4 address, once that is known
        let ip = self
            .addresses
            .iter()
            .find(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))?;
        Some(match ip {
            IpAddr::V4(v4) => format!("http://{v4}:{}", self.advert.api_port),
            IpAddr::V6(v6) => format!("http://[{v6}]:{}", self.advert.api_port),
        })
    }
}

/// The mDNS side of one agent.
pub struct Discovery {
    daemon: ServiceDaemon,
    me: Mutex<Advert>,
    /// Devices by node id; fullnames map to node ids for removals.
    devices: Mutex<(HashMap<String, Device>, HashMap<String, String>)>,
    changed: watch::Sender<u64>,
    /// Orchestrators of other clusters already reported as ignored.
    foreign: Mutex<std::collections::HashSet<String>>,
    /// The apps this node serves, published as `<app>.local` (name → port).
    apps: Mutex<std::collections::BTreeMap<String, u16>>,
}

/// The DNS-SD type apps are announced as.
const HTTP_SERVICE: &str = "_http._tcp.local.";

/// How often the browse starts afresh (its first query goes out at once).
const REBROWSE: std::time::Duration = std::time::Duration::from_secs(20);

impl Discovery {
    /// Advertises `me` and browses until `shutdown`.
    pub fn start(
        config: &DiscoveryConfig,
        me: Advert,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, DiscoveryError> {
        let daemon = ServiceDaemon::new_with_port(config.port)?;
        let kinds = interfaces(&config.interfaces);
        if kinds.is_empty() {
            // every LAN interface, but not loopback nor the bridges and veths of containers:
            // an address there means nothing to another device
            let mut skip = vec![IfKind::LoopbackV4, IfKind::LoopbackV6];
            skip.extend(virtual_interfaces().into_iter().map(IfKind::Name));
            daemon.disable_interface(skip)?;
        } else {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(kinds)?;
        }
        let me = Arc::new(Self {
            daemon,
            me: Mutex::new(me),
            devices: Mutex::new((HashMap::new(), HashMap::new())),
            changed: watch::channel(0).0,
            foreign: Mutex::new(Default::default()),
            apps: Mutex::new(Default::default()),
        });
        me.register()?;
        let mut events = me.daemon.browse(SERVICE)?;
        let this = me.clone();
        tasks.spawn(async move {
            // mDNS queries back off to once an hour; browsing afresh now and then asks again
            // at once, so a device whose link came up late (a cable plugged in, Wi-Fi back)
            // sees the others within REBROWSE, not at the next backed-off query
            let mut rebrowse =
                tokio::time::interval_at(tokio::time::Instant::now() + REBROWSE, REBROWSE);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = rebrowse.tick() => match this.daemon.browse(SERVICE) {
                        Ok(fresh) => events = fresh,
                        Err(error) => tracing::warn!(%error, "cannot browse over mDNS again"),
                    },
                    event = events.recv_async() => match event {
                        Ok(event) => this.apply(event),
                        Err(_) => break,
                    },
                }
            }
            // a goodbye, so the others forget us at once rather than at the TTL
            let mut names = vec![this.fullname()];
            names.extend(
                lock(&this.apps)
                    .keys()
                    .map(|app| format!("{app}.{HTTP_SERVICE}")),
            );
            for fullname in names {
                if let Ok(done) = this.daemon.unregister(&fullname) {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(1), done.recv_async())
                            .await;
                }
            }
            let _ = this.daemon.shutdown();
        });
        Ok(me)
    }

    fn fullname(&self) -> String {
        format!("{}.{SERVICE}", lock(&self.me).node)
    }

    fn register(&self) -> Result<(), DiscoveryError> {
        let me = lock(&self.me).clone();
        let txt = me.txt();
        let props: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let info = ServiceInfo::new(
            SERVICE,
            &me.node,
            &format!("{}.local.", me.node),
            "",
            me.api_port,
            &props[..],
        )?
        .enable_addr_auto();
        self.daemon.register(info)?;
        Ok(())
    }

    /// Changes what this agent advertises (its role, cluster or term).
    pub fn update(&self, change: impl FnOnce(&mut Advert)) {
        let before = lock(&self.me).clone();
        change(&mut lock(&self.me));
        if *lock(&self.me) != before {
            if let Err(error) = self.register() {
                tracing::warn!(%error, "cannot update the mDNS advert");
            }
            for device in self.devices() {
                self.note_foreign(&device.advert);
            }
        }
    }

    /// Publishes exactly `apps` (name → port) as `<name>.local` with an `_http._tcp`
    /// service each, at this node's addresses; apps no longer served are withdrawn.
    pub fn publish_apps(&self, apps: &std::collections::BTreeMap<String, u16>) {
        let mut current = lock(&self.apps);
        for (name, _) in current.iter().filter(|(n, p)| apps.get(*n) != Some(*p)) {
            if let Err(error) = self.daemon.unregister(&format!("{name}.{HTTP_SERVICE}")) {
                tracing::warn!(%error, app = %name, "cannot withdraw the app's mDNS name");
            }
        }
        for (name, port) in apps.iter().filter(|(n, p)| current.get(*n) != Some(*p)) {
            let published = ServiceInfo::new(
                HTTP_SERVICE,
                name,
                &format!("{name}.local."),
                "",
                *port,
                &[("path", "/")][..],
            )
            .map(ServiceInfo::enable_addr_auto)
            .and_then(|info| self.daemon.register(info));
            match published {
                Ok(()) => tracing::info!(app = %name, port, "published {name}.local over mDNS"),
                Err(error) => {
                    tracing::warn!(%error, app = %name, "cannot publish the app over mDNS")
                }
            }
        }
        *current = apps.clone();
    }

    /// What this agent advertises.
    pub fn me(&self) -> Advert {
        lock(&self.me).clone()
    }

    fn apply(&self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(s) => {
                let props = s.get_properties();
                let parsed = Advert::from_txt(|k| props.get_property_val_str(k).map(str::to_owned));
                let advert = match parsed {
                    Ok(a) => a,
                    Err(why) => {
                        tracing::debug!(service = %s.get_fullname(), %why, "ignoring an mDNS record");
                        return;
                    }
                };
                let mut addresses: Vec<IpAddr> =
                    s.get_addresses().iter().map(|a| a.to_ip_addr()).collect();
                addresses.sort_by_key(|a| (a.is_ipv6(), *a));
                if addresses.is_empty() {
                    return;
                }
                self.note_foreign(&advert);
                let node = advert.node.clone();
                let device = Device {
                    advert,
                    addresses,
                    last_seen: crate::now_ms(),
                };
                let mut guard = lock(&self.devices);
                let (devices, names) = &mut *guard;
                names.insert(s.get_fullname().to_owned(), node.clone());
                let changed = devices
                    .get(&node)
                    .is_none_or(|d| d.advert != device.advert || d.addresses != device.addresses);
                devices.insert(node, device);
                drop(guard);
                if changed {
                    self.changed.send_modify(|n| *n += 1);
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let mut guard = lock(&self.devices);
                let (devices, names) = &mut *guard;
                if let Some(node) = names.remove(&fullname) {
                    devices.remove(&node);
                    drop(guard);
                    self.changed.send_modify(|n| *n += 1);
                }
            }
            _ => {}
        }
    }

    /// Says once per device why an orchestrator of another cluster is not followed.
    fn note_foreign(&self, advert: &Advert) {
        let mine = lock(&self.me).cluster.clone();
        if advert.role != Role::Orchestrator || mine.is_empty() || advert.cluster == mine {
            return;
        }
        if lock(&self.foreign).insert(advert.node.clone()) {
            tracing::info!(
                orchestrator = %advert.node,
                cluster = %advert.cluster,
                mine = %mine,
                "ignoring the orchestrator of another cluster: this device belongs to its own"
            );
        }
    }

    /// Every device in view (this one included once its own advert came back), by node id.
    pub fn devices(&self) -> Vec<Device> {
        let mut v: Vec<Device> = lock(&self.devices).0.values().cloned().collect();
        v.sort_by(|a, b| a.advert.node.cmp(&b.advert.node));
        v
    }

    /// The device of node `id`, when in view.
    pub fn device(&self, id: &str) -> Option<Device> {
        lock(&self.devices).0.get(id).cloned()
    }

    /// Orchestrators in view (of `cluster` when given), the highest term first.
    pub fn orchestrators(&self, cluster: Option<&str>) -> Vec<Device> {
        let mut v: Vec<Device> = self
            .devices()
            .into_iter()
            .filter(|d| d.advert.role == Role::Orchestrator)
            .filter(|d| cluster.is_none_or(|c| d.advert.cluster == c))
            .collect();
        v.sort_by_key(|d| std::cmp::Reverse(d.advert.term));
        v
    }

    /// Resolves when the view may have changed.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Prefixes of the names of interfaces made by container runtimes and VMs.
const VIRTUAL_PREFIXES: [&str; 8] = [
    "docker", "br-", "veth", "virbr", "cni", "flannel", "podman", "vnet",
];

/// The address other nodes reach this one at: `advertise` when set, else the address of
/// the interface that routes outwards (no packet is sent), else, on a LAN without a default
/// route, the first LAN address.
pub fn own_address(advertise: &str) -> String {
    if !advertise.is_empty() {
        return advertise.to_owned();
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback())
        .or_else(|| lan_addresses().into_iter().next())
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// This host's addresses on its LAN interfaces (not loopback, not container bridges),
/// IPv4 first.
pub fn lan_addresses() -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter(|i| !is_virtual(&i.name))
        .map(|i| i.ip())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    v.sort_by_key(|a| (a.is_ipv6(), *a));
    v
}

/// Whether an interface was made by a container runtime or a VM.
fn is_virtual(name: &str) -> bool {
    VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// This host's interfaces that only container runtimes or VMs use.
fn virtual_interfaces() -> Vec<String> {
    let mut names: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| is_virtual(n))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The interfaces `discovery.interfaces` names; empty for all of them.
fn interfaces(setting: &str) -> Vec<IfKind> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "all")
        .map(|s| match s {
            "lo" | "loopback" => IfKind::LoopbackV4,
            name => IfKind::Name(name.to_owned()),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn adverts_round_trip_and_forgeries_are_refused() {
        let a = Advert {
            node: "n0123456789".into(),
            cluster: "abcd1234".into(),
            role: Role::Orchestrator,
            term: 3,
            api_port: 8080,
            version: "0.1.0".into(),
        };
        let pairs = a.txt();
        let back = Advert::from_txt(|k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(back, a);
        let good = [
            ("node", "n01"),
            ("cluster", ""),
            ("role", "candidate"),
            ("term", "0"),
            ("api", "8080"),
            ("version", "0.1.0"),
        ];
        assert!(Advert::from_txt(txt(&good)).is_ok());
        for (key, bad, why) in [
            ("node", "N;rm -rf", "not a node id"),
            ("cluster", "../x", "not a cluster id"),
            ("role", "king", "unknown role"),
            ("term", "-1", "not a number"),
            ("api", "0", "not a port"),
            ("api", "99999", "not a port"),
            ("version", "", "empty"),
        ] {
            let mut pairs = good.to_vec();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, bad));
            let err = Advert::from_txt(txt(&pairs)).unwrap_err();
            assert!(err.contains(why), "{key}={bad}: {err}");
        }
        let err = Advert::from_txt(txt(&good[1..])).unwrap_err();
        assert!(err.contains("no `node`"), "{err}");
    }

    #[test]
    fn interface_settings() {
        let shown = |s: &str| format!("{:?}", interfaces(s));
        assert_eq!(shown(""), "[]");
        assert_eq!(shown("all"), "[]");
        assert_eq!(shown("lo"), "[LoopbackV4]");
        assert_eq!(shown("eth0, wlan0"), r#"[Name("eth0"), Name("wlan0")]"#);
    }
}

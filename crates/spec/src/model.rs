//! The spec's types: the one truth for TOML, JSON, the JSON Schema and (later) the
//! Raft log. Maps are `BTreeMap`s so every output is ordered and deterministic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, SpecDuration};

/// The whole desired cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Cluster identity and timings.
    pub cluster: Cluster,
    /// Nodes by name (RFC 1123 host labels).
    pub nodes: BTreeMap<String, NodeSpec>,
    /// Cluster network settings.
    #[serde(default)]
    pub network: Network,
    /// Services by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Replicated storage by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage: BTreeMap<String, StorageSpec>,
    /// A command the leader runs for cluster events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
    /// A Ceph cluster run on the nodes themselves (declared, not merely consumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephSpec>,
}

/// `[ceph]`: a Ceph cluster the nodes run. Monitors, managers, metadata servers and
/// OSDs are placed on nodes; `quorate render` writes every node's `ceph.conf`, the
/// NixOS module wires `services.ceph` from the same data, and `quorate ceph
/// bootstrap` performs the one-time steps (keys, first monitor map, OSD preparation,
/// pools, file systems) idempotently. The fsid and the OSD ids live in the lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CephSpec {
    /// The network Ceph's daemons and clients talk on (CIDR); every monitor's
    /// `storage_address` (else `address`) must be in it.
    #[schemars(with = "String")]
    pub public_network: IpNet,
    /// Monitor nodes (default: the voters). An odd number, 1 to 7.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<String>,
    /// Manager nodes (default: the monitors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// Metadata server nodes for CephFS (default: the first monitor when
    /// `filesystems` is set, else none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata_servers: Vec<String>,
    /// OSDs per node: each a block device (`/dev/…`, given whole to BlueStore) or
    /// `"memstore"` (RAM only, lost on restart: labs and laptops).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub osds: BTreeMap<String, Vec<String>>,
    /// Pools and their application (`rbd`, `cephfs` or `rgw`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, String>,
    /// CephFS file systems (each `ceph fs volume create NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<String>,
    /// Further `[global]` settings of `ceph.conf` (`"osd pool default size" = "3"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// What an OSD entry names when it is not a device.
pub const CEPH_MEMSTORE: &str = "memstore";

impl CephSpec {
    /// The monitor nodes, defaults filled in (`voters`: the spec's voters).
    #[must_use]
    pub fn monitor_nodes(&self, voters: &[String]) -> Vec<String> {
        if self.monitors.is_empty() {
            voters.to_vec()
        } else {
            self.monitors.clone()
        }
    }

    /// The manager nodes, defaults filled in.
    #[must_use]
    pub fn manager_nodes(&self, voters: &[String]) -> Vec<String> {
        if self.managers.is_empty() {
            self.monitor_nodes(voters)
        } else {
            self.managers.clone()
        }
    }

    /// The metadata server nodes, defaults filled in.
    #[must_use]
    pub fn metadata_nodes(&self, voters: &[String]) -> Vec<String> {
        if !self.metadata_servers.is_empty() || self.filesystems.is_empty() {
            self.metadata_servers.clone()
        } else {
            self.monitor_nodes(voters).into_iter().take(1).collect()
        }
    }
}

/// `[alerts]`: a command the leader runs for every cluster event of the chosen kinds,
/// with the event as JSON on stdin and in `QUORATE_EVENT_*` variables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// argv of the command (absolute program).
    pub command: Vec<String>,
    /// Event kinds to alert on (default: all): `failover`, `placement`, `operator`,
    /// `spec`, `node`, `service`, `quorum`, `fence` (the leader ran `fence_command`),
    /// `recovery` (`recover --force-single` and each rejoin after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Time one run may take (default 10s).
    #[serde(default = "Alerts::default_timeout")]
    pub timeout: SpecDuration,
    /// Further tries after a failed run, a second apart and doubling (default 3).
    #[serde(default = "Alerts::default_retries")]
    pub retries: u32,
}

impl Alerts {
    /// The event kinds there are.
    pub const KINDS: [&'static str; 9] = [
        "failover",
        "placement",
        "operator",
        "spec",
        "node",
        "service",
        "quorum",
        "fence",
        "recovery",
    ];

    /// Default time per run.
    #[must_use]
    pub fn default_timeout() -> SpecDuration {
        SpecDuration::from_millis(10_000)
    }

    /// Default retries.
    #[must_use]
    pub fn default_retries() -> u32 {
        3
    }

    /// True when events of `kind` are alerted on.
    #[must_use]
    pub fn wants(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }
}

/// `[cluster]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name (an RFC 1123 label); a data dir or lock of another cluster is refused.
    pub name: String,
    /// Consensus and lease timings.
    #[serde(default)]
    pub timings: Timings,
    /// Power fencing (STONITH): argv the leader runs before it relocates services away
    /// from an unreachable node; `{node}` and `{address}` are replaced. Relocation waits
    /// for it to exit 0. Empty: rely on leases and the fence process alone.
    ///
    /// A `{secret:PATH}` in an argument is replaced by the content of the file PATH
    /// when the command runs (never logged, never in status or events); PATH must be
    /// absolute and outside the Nix store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence_command: Vec<String>,
    /// A file of `KEY=VALUE` lines (systemd EnvironmentFile style) read when the fence
    /// command runs and passed as its environment: the way to hand it a password that
    /// stays out of the process list. Absolute, outside the Nix store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_environment_file: Option<String>,
}

/// `[cluster.timings]` — defaults from DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Raft heartbeat interval (default 100ms).
    #[serde(default = "Timings::default_heartbeat")]
    pub heartbeat: SpecDuration,
    /// Minimum Raft election timeout; the maximum is twice this (default 500ms).
    #[serde(default = "Timings::default_election_timeout")]
    pub election_timeout: SpecDuration,
    /// Lease time-to-live; renewed every TTL/3 (default 1.5s).
    #[serde(default = "Timings::default_lease_ttl")]
    pub lease_ttl: SpecDuration,
    /// Allowance for clock-rate drift between nodes (default 500ms).
    #[serde(default = "Timings::default_drift_margin")]
    pub drift_margin: SpecDuration,
}

impl Timings {
    fn default_heartbeat() -> SpecDuration {
        SpecDuration::from_millis(100)
    }
    fn default_election_timeout() -> SpecDuration {
        SpecDuration::from_millis(500)
    }
    fn default_lease_ttl() -> SpecDuration {
        SpecDuration::from_millis(1500)
    }
    fn default_drift_margin() -> SpecDuration {
        SpecDuration::from_millis(500)
    }
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat: Self::default_heartbeat(),
            election_timeout: Self::default_election_timeout(),
            lease_ttl: Self::default_lease_ttl(),
            drift_margin: Self::default_drift_margin(),
        }
    }
}

/// `[nodes.<name>]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Underlay IP address; the port comes from `network.port`.
    pub address: IpAddr,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whether the node votes in Raft (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub voter: bool,
    /// Whether the node runs services (default true). `false` makes a witness: a
    /// voter that only votes, so that two servers and a small third machine make a
    /// proper quorum.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub workloads: bool,
    /// The node's previous name: the lock keeps its numbers under the new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// `[nodes.<n>.wireguard]`: the node's identity in the WireGuard mesh
    /// (`network.transport = "wireguard"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguard>,
    /// The address the node's storage clients (Ceph) use, when not `address` (a
    /// separate storage network): what the leader blocklists on Ceph before moving a
    /// Ceph-backed service away from this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_address: Option<IpAddr>,
}

/// `[nodes.<n>.wireguard]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeWireguard {
    /// The node's WireGuard public key (base64, what `quorate wg keygen` prints on that
    /// node). The private key never leaves the node's data dir.
    pub public_key: String,
}

/// How nodes reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Straight over the underlay addresses.
    #[default]
    Direct,
    /// Through a WireGuard mesh on the `overlay` network.
    Wireguard,
}

/// `[network]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `direct` (default) or `wireguard`.
    #[serde(default)]
    pub transport: Transport,
    /// Overlay network (CIDR) from which the lock allocates one address per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub overlay: Option<IpNet>,
    /// Cluster RPC port (default 7400).
    #[serde(default = "Network::default_port")]
    pub port: u16,
    /// MTU of the WireGuard interface (default: the underlay's MTU − 80, the size of
    /// WireGuard's encapsulation over IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The HTTP API's port (HTTPS, on each node's address); none: no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_port: Option<u16>,
}

impl Network {
    fn default_port() -> u16 {
        7400
    }
}

impl Default for Network {
    fn default() -> Self {
        Self {
            transport: Transport::Direct,
            overlay: None,
            port: Self::default_port(),
            mtu: None,
            api_port: None,
        }
    }
}

/// What runs a service.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A process started by the agent (tests, sandbox).
    Process,
    /// A systemd unit.
    Systemd,
    /// A systemd-nspawn container (`container@NAME.service`).
    Nspawn,
    /// A MicroVM (`microvm@NAME.service`).
    Microvm,
    /// An LXC container (`lxc@NAME.service`).
    Lxc,
}

impl ServiceKind {
    /// All kinds with their spec names.
    pub const ALL: [(&'static str, Self); 5] = [
        ("process", Self::Process),
        ("systemd", Self::Systemd),
        ("nspawn", Self::Nspawn),
        ("microvm", Self::Microvm),
        ("lxc", Self::Lxc),
    ];
}

/// `[services.<name>]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `process`, `systemd`, `nspawn` or `microvm`.
    pub kind: ServiceKind,
    /// process: argv, first element the program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// process: environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// process: working directory (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// process: signal sent to stop it (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// process: time between the stop signal and SIGKILL (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<SpecDuration>,
    /// systemd: the unit name, e.g. `postgresql.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// nspawn, lxc: the container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// microvm: the VM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Nodes to prefer, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer: Vec<String>,
    /// Nodes never to run on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
    /// Node labels a node must carry, with these values, to run this service
    /// (`require = { disk = "ssd" }`): a hard constraint, like a Pacemaker location
    /// rule or a Nomad constraint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, String>,
    /// Node labels to prefer (`prefer_labels = { zone = "a" }`): among the allowed
    /// nodes not named in `prefer`, the one matching the most of them wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefer_labels: BTreeMap<String, String>,
    /// Services never to share a node with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<String>,
    /// Services that must run before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Storage this service uses; it runs where that storage is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<String>,
    /// Floating address "addr/prefix" that follows the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ip: Option<IpNet>,
    /// Interface for the floating address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Health check (default: the process or unit is alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Restarts allowed on one node before it relocates.
    #[serde(default)]
    pub restart: Restart,
    /// Never run on two nodes at once (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub exclusive: bool,
    /// Stay on the current node unless there is a reason to move (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub sticky: bool,
    /// The service's previous name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
}

/// Kind of health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// The process or unit is running.
    Alive,
    /// An HTTP GET of `url` answers 2xx.
    Http,
    /// A TCP connect to `address` succeeds.
    Tcp,
    /// `command` exits 0.
    Exec,
}

/// `[services.<name>.health]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `alive`, `http`, `tcp` or `exec`.
    pub kind: HealthKind,
    /// http: URL to GET (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// https: the CA certificate (PEM) that signed the service's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// https: accept any certificate (spelled out, never a default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// tcp: "host:port" to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// exec: argv to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Time between checks (default 5s).
    #[serde(default = "Health::default_interval")]
    pub interval: SpecDuration,
    /// Time one check may take (default 2s).
    #[serde(default = "Health::default_timeout")]
    pub timeout: SpecDuration,
    /// Consecutive failed checks that count as one failure (default 3).
    #[serde(default = "Health::default_failures")]
    pub failures: u32,
}

impl Health {
    /// Default check interval.
    #[must_use]
    pub fn default_interval() -> SpecDuration {
        SpecDuration::from_millis(5_000)
    }
    /// Default check timeout.
    #[must_use]
    pub fn default_timeout() -> SpecDuration {
        SpecDuration::from_millis(2_000)
    }
    /// Default consecutive failures.
    #[must_use]
    pub fn default_failures() -> u32 {
        3
    }
}

/// `[services.<name>.restart]` — Pacemaker's migration-threshold, with a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// Restarts in place within `window` before relocating (default 3).
    #[serde(default = "Restart::default_max_restarts")]
    pub max_restarts: u32,
    /// The window (default 5m).
    #[serde(default = "Restart::default_window")]
    pub window: SpecDuration,
}

impl Restart {
    fn default_max_restarts() -> u32 {
        3
    }
    fn default_window() -> SpecDuration {
        SpecDuration::from_millis(300_000)
    }
}

impl Default for Restart {
    fn default() -> Self {
        Self {
            max_restarts: Self::default_max_restarts(),
            window: Self::default_window(),
        }
    }
}

/// Kind of replicated storage.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum StorageKind {
    /// DRBD block device, 2–3 replicas.
    #[serde(rename = "drbd")]
    Drbd,
    /// GlusterFS replicated volume.
    #[serde(rename = "gluster")]
    Gluster,
    /// Ceph RBD image.
    #[serde(rename = "ceph-rbd")]
    CephRbd,
    /// CephFS directory.
    #[serde(rename = "cephfs")]
    Cephfs,
}

impl StorageKind {
    /// All kinds with their spec names.
    pub const ALL: [(&'static str, Self); 4] = [
        ("drbd", Self::Drbd),
        ("gluster", Self::Gluster),
        ("ceph-rbd", Self::CephRbd),
        ("cephfs", Self::Cephfs),
    ];

    /// The spec name.
    #[must_use]
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }
}

/// `[storage.<name>]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// `drbd`, `gluster`, `ceph-rbd` or `cephfs`.
    pub kind: StorageKind,
    /// Replica nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// drbd: backing block device on each replica node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Size (ceph-rbd image size; informational for drbd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Where the service's node mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Filesystem on a block device (default ext4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
    /// gluster: brick directory on each replica node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brick: Option<String>,
    /// gluster: volume name (default: the storage name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// gluster: with 3 nodes, the last one holds only an arbiter brick (metadata, no
    /// data): two full copies plus a tie-breaker for split-brain.
    #[serde(default, skip_serializing_if = "is_false")]
    pub arbiter: bool,
    /// The storage's previous name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// ceph-rbd: the pool (default `rbd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// ceph-rbd: the image (default: the storage name); created on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// cephfs: the directory of the file system to mount (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Ceph: the cluster's config on every node (default `/etc/ceph/ceph.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_config: Option<String>,
    /// Ceph: the client's keyring on every node, outside the Nix store (default
    /// `/etc/ceph/ceph.client.<ceph_client>.keyring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_keyring: Option<String>,
    /// Ceph: the client id (default `quorate`, i.e. `client.quorate`). Its caps:
    /// `mon 'profile rbd, allow command "osd blocklist"'` (blocklisting fenced nodes
    /// and removing them again), `osd
    /// 'profile rbd pool=POOL'`, and for CephFS `mds 'allow rw'` plus the data pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_client: Option<String>,
}

impl StorageSpec {
    /// ceph-rbd: the pool.
    #[must_use]
    pub fn ceph_pool(&self) -> &str {
        self.pool.as_deref().unwrap_or("rbd")
    }

    /// Ceph: the client id.
    #[must_use]
    pub fn ceph_client_id(&self) -> &str {
        self.ceph_client.as_deref().unwrap_or("quorate")
    }

    /// Ceph: the config path.
    #[must_use]
    pub fn ceph_config_path(&self) -> &str {
        self.ceph_config.as_deref().unwrap_or("/etc/ceph/ceph.conf")
    }

    /// Ceph: the keyring path.
    #[must_use]
    pub fn ceph_keyring_path(&self) -> String {
        self.ceph_keyring
            .clone()
            .unwrap_or_else(|| format!("/etc/ceph/ceph.client.{}.keyring", self.ceph_client_id()))
    }
}

#[allow(clippy::unnecessary_wraps)]
fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl ServiceSpec {
    /// The systemd unit that runs this service: `unit` for `systemd`,
    /// `container@NAME.service` for `nspawn` (NixOS declarative containers; for a plain
    /// `systemd-nspawn@NAME.service` use kind `systemd` with that unit),
    /// `microvm@NAME.service` for `microvm` (microvm.nix), `lxc@NAME.service` for
    /// `lxc`; `None` for `process`.
    #[must_use]
    pub fn unit_name(&self) -> Option<String> {
        match self.kind {
            ServiceKind::Process => None,
            ServiceKind::Systemd => self.unit.clone(),
            ServiceKind::Nspawn => Some(format!("container@{}.service", self.container.as_ref()?)),
            ServiceKind::Microvm => Some(format!("microvm@{}.service", self.vm.as_ref()?)),
            ServiceKind::Lxc => Some(format!("lxc@{}.service", self.container.as_ref()?)),
        }
    }
}

impl Spec {
    /// Names of the voting nodes, sorted.
    pub fn voters(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.voter)
            .map(|(name, _)| name.as_str())
    }

    /// The voters' names, owned (the default Ceph monitors).
    #[must_use]
    pub fn voter_names(&self) -> Vec<String> {
        self.voters().map(str::to_owned).collect()
    }
}

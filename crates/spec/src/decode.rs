//! Turns a document tree into the typed [`Spec`], collecting every problem instead of
//! stopping at the first. Each value's span is recorded under its key path in a
//! [`SpanIndex`], so later checks on the typed model can still point at the text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::diagnostic::{Diagnostic, Span};
use crate::model::{
    Alerts, CephSpec, Cluster, Health, HealthKind, Network, NodeSpec, NodeWireguard, Restart,
    ServiceKind, ServiceSpec, Spec, StorageKind, StorageSpec, Timings, Transport,
};
use crate::source::{Entry, Node, Value};
use crate::units::{ByteSize, SpecDuration};

/// Where each key path was written: the value's span and the key's span.
#[derive(Clone, Debug, Default)]
pub struct SpanIndex {
    values: HashMap<String, Span>,
    keys: HashMap<String, Span>,
}

impl SpanIndex {
    /// Span of the value at `path`.
    #[must_use]
    pub fn value(&self, path: &str) -> Option<Span> {
        self.values.get(path).cloned()
    }

    /// Span of the key at `path` (falls back to the value).
    #[must_use]
    pub fn key(&self, path: &str) -> Option<Span> {
        self.keys.get(path).cloned().or_else(|| self.value(path))
    }
}

/// Joins a key to a path, quoting keys that are not bare words.
#[must_use]
pub fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Path of element `i` of the array at `path`.
#[must_use]
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The result of decoding: a spec made of every entry that decoded, the names of
/// entries that exist but could not be decoded (so references to them are not
/// reported as dangling), the problems, and the span index.
#[derive(Debug)]
pub struct Decoded {
    /// The spec, with broken entries left out.
    pub spec: Spec,
    /// Paths like `services.web` of entries left out because they were broken.
    pub broken: BTreeSet<String>,
    /// Problems found.
    pub diagnostics: Vec<Diagnostic>,
    /// Spans by key path.
    pub spans: SpanIndex,
}

struct Decoder {
    diagnostics: Vec<Diagnostic>,
    spans: SpanIndex,
}

/// The keys of one table, handed out one by one; what is left at the end is unknown.
struct Fields<'n> {
    path: String,
    anchor: Span,
    entries: &'n [Entry],
    used: Vec<bool>,
}

impl<'n> Fields<'n> {
    fn get(&mut self, key: &str) -> Option<(&'n Node, String)> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        self.used[i] = true;
        Some((&self.entries[i].node, join(&self.path, key)))
    }

    fn required(
        &mut self,
        d: &mut Decoder,
        key: &str,
        what: &str,
        example: &str,
    ) -> Option<(&'n Node, String)> {
        let found = self.get(key);
        if found.is_none() {
            d.push(
                Diagnostic::error(
                    "spec::missing-key",
                    join(&self.path, key),
                    format!("`{}` needs `{key}`: {what}", self.path),
                )
                .at(Some(self.anchor.clone()))
                .label(format!("`{key}` missing here"))
                .help(format!("add `{key} = {example}`")),
            );
        }
        found
    }

    fn finish(self, d: &mut Decoder, known: &[&str]) {
        for (entry, used) in self.entries.iter().zip(self.used) {
            if used {
                continue;
            }
            let path = join(&self.path, &entry.key);
            let suggestion = known
                .iter()
                .map(|k| (strsim::jaro_winkler(k, &entry.key), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k);
            let help = match suggestion {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("known keys here: {}", known.join(", ")),
            };
            let at = if self.path.is_empty() {
                "the top level".to_string()
            } else {
                format!("`{}`", self.path)
            };
            d.push(
                Diagnostic::error(
                    "spec::unknown-key",
                    path,
                    format!("unknown key `{}` in {at}", entry.key),
                )
                .at(Some(entry.key_span.clone()))
                .label("not a known key")
                .help(help),
            );
        }
    }
}

impl Decoder {
    fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn record(&mut self, path: &str, node: &Node) {
        self.spans
            .values
            .insert(path.to_string(), node.span.clone());
    }

    fn type_error(&mut self, node: &Node, path: &str, expected: &str, example: &str) {
        self.push(
            Diagnostic::error(
                "spec::type",
                path,
                format!(
                    "`{path}` must be {expected}, found {}",
                    node.value.type_name()
                ),
            )
            .at(Some(node.span.clone()))
            .label(format!("expected {expected}"))
            .help(format!("write it like {example}")),
        );
    }

    fn table<'n>(&mut self, node: &'n Node, path: &str, anchor: Span) -> Option<Fields<'n>> {
        self.record(path, node);
        match &node.value {
            Value::Table(entries) => {
                for e in entries {
                    self.spans
                        .keys
                        .insert(join(path, &e.key), e.key_span.clone());
                }
                Some(Fields {
                    path: path.to_string(),
                    anchor,
                    entries,
                    used: vec![false; entries.len()],
                })
            }
            _ => {
                self.type_error(node, path, "a table", &format!("[{path}]"));
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        self.record(path, node);
        if let Value::String(s) = &node.value {
            Some(s.clone())
        } else {
            self.type_error(node, path, "a string", "\"text\"");
            None
        }
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        self.record(path, node);
        if let Value::Bool(b) = node.value {
            Some(b)
        } else {
            self.type_error(node, path, "true or false", "true");
            None
        }
    }

    fn integer<T: TryFrom<i64>>(&mut self, node: &Node, path: &str, range: &str) -> Option<T> {
        self.record(path, node);
        let ok = match node.value {
            Value::Integer(i) => T::try_from(i).ok(),
            _ => {
                self.type_error(node, path, "an integer", "3");
                return None;
            }
        };
        if ok.is_none() {
            self.push(
                Diagnostic::error("spec::range", path, format!("`{path}` is out of range"))
                    .at(Some(node.span.clone()))
                    .label(format!("must be {range}"))
                    .help(format!("use a whole number {range}")),
            );
        }
        ok
    }

    fn parsed<T, E: std::fmt::Display>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        example: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<T> {
        let text = self.string(node, path)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(
                    Diagnostic::error("spec::value", path, format!("`{path}` is not {what}: {e}"))
                        .at(Some(node.span.clone()))
                        .label(format!("not {what}"))
                        .help(format!("write it like {example}")),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<SpecDuration> {
        self.parsed(
            node,
            path,
            "a duration",
            "\"1.5s\" or \"500ms\"",
            str::parse::<SpecDuration>,
        )
    }

    fn size(&mut self, node: &Node, path: &str) -> Option<ByteSize> {
        self.parsed(node, path, "a size", "\"10GiB\"", str::parse::<ByteSize>)
    }

    fn ip(&mut self, node: &Node, path: &str) -> Option<IpAddr> {
        self.parsed(
            node,
            path,
            "an IP address",
            "\"192.168.1.10\" (no port, no prefix)",
            str::parse::<IpAddr>,
        )
    }

    fn ipnet(&mut self, node: &Node, path: &str) -> Option<IpNet> {
        self.parsed(
            node,
            path,
            "an address with a prefix length",
            "\"10.0.0.50/24\"",
            str::parse::<IpNet>,
        )
    }

    /// An array of strings; when `single` is true a lone string counts as a list of one.
    fn strings(&mut self, node: &Node, path: &str, single: bool) -> Option<Vec<String>> {
        self.record(path, node);
        match &node.value {
            Value::String(s) if single => Some(vec![s.clone()]),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.string(item, &index(path, i)) {
                        Some(s) => out.push(s),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.type_error(node, path, "an array of strings", "[\"a\", \"b\"]");
                None
            }
        }
    }

    fn string_map(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        self.record(path, node);
        let Value::Table(entries) = &node.value else {
            self.type_error(node, path, "a table of strings", "{ KEY = \"value\" }");
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for e in entries {
            let p = join(path, &e.key);
            self.spans.keys.insert(p.clone(), e.key_span.clone());
            match self.string(&e.node, &p) {
                Some(s) => {
                    out.insert(e.key.clone(), s);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn choice<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, path)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let close = options
            .iter()
            .map(|(n, _)| (strsim::jaro_winkler(n, &text.to_ascii_lowercase()), *n))
            .filter(|(s, _)| *s > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let help = match close {
            Some((_, n)) => format!("did you mean \"{n}\"?"),
            None => format!("use one of {}", names.join(", ")),
        };
        self.push(
            Diagnostic::error(
                "spec::value",
                path,
                format!(
                    "`{path}` is \"{text}\", which is not one of {}",
                    names.join(", ")
                ),
            )
            .at(Some(node.span.clone()))
            .label("unknown value")
            .help(help),
        );
        None
    }

    /// Iterates a table of named entries (`[nodes.NAME]`), giving each entry's fields.
    fn named<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(String, Fields<'n>)> {
        self.record(path, node);
        let Value::Table(entries) = &node.value else {
            self.type_error(
                node,
                path,
                "a table of named entries",
                &format!("[{path}.NAME]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            self.spans.keys.insert(p.clone(), e.key_span.clone());
            if let Some(fields) = self.table(&e.node, &p, e.key_span.clone()) {
                out.push((e.key.clone(), fields));
            }
        }
        out
    }
}

/// Decodes a document tree into a spec.
#[must_use]
pub fn decode(root: &Node) -> Decoded {
    let mut d = Decoder {
        diagnostics: Vec::new(),
        spans: SpanIndex::default(),
    };
    let mut broken = BTreeSet::new();
    let mut spec = Spec {
        cluster: Cluster {
            name: String::new(),
            timings: Timings::default(),
            fence_command: Vec::new(),
            fence_environment_file: None,
        },
        nodes: BTreeMap::new(),
        network: Network::default(),
        services: BTreeMap::new(),
        storage: BTreeMap::new(),
        alerts: None,
        ceph: None,
    };
    let Some(mut top) = d.table(root, "", 0..0) else {
        return finish(d, spec, broken);
    };

    let cluster_entry = top.required(
        &mut d,
        "cluster",
        "the cluster's name",
        "{ name = \"homelab\" }",
    );
    match cluster_entry.and_then(|(node, path)| cluster(&mut d, node, &path)) {
        Some(c) => spec.cluster = c,
        None => {
            broken.insert("cluster".to_string());
        }
    }
    if let Some((node, path)) = top.required(
        &mut d,
        "nodes",
        "at least three nodes",
        "{ n1 = { address = \"10.0.0.1\" } }",
    ) {
        for (name, fields) in d.named(node, &path) {
            let p = join(&path, &name);
            match node_spec(&mut d, fields) {
                Some(n) => {
                    spec.nodes.insert(name, n);
                }
                None => {
                    broken.insert(p);
                }
            }
        }
    }
    if let Some((node, path)) = top.get("network") {
        if let Some(n) = network(&mut d, node, &path) {
            spec.network = n;
        }
    }
    if let Some((node, path)) = top.get("services") {
        for (name, fields) in d.named(node, &path) {
            let p = join(&path, &name);
            match service(&mut d, fields) {
                Some(s) => {
                    spec.services.insert(name, s);
                }
                None => {
                    broken.insert(p);
                }
            }
        }
    }
    if let Some((node, path)) = top.get("storage") {
        for (name, fields) in d.named(node, &path) {
            let p = join(&path, &name);
            match storage(&mut d, fields) {
                Some(s) => {
                    spec.storage.insert(name, s);
                }
                None => {
                    broken.insert(p);
                }
            }
        }
    }
    if let Some((node, path)) = top.get("alerts") {
        spec.alerts = alerts(&mut d, node, &path);
        if spec.alerts.is_none() {
            broken.insert(path);
        }
    }
    if let Some((node, path)) = top.get("ceph") {
        spec.ceph = ceph(&mut d, node, &path);
        if spec.ceph.is_none() {
            broken.insert(path);
        }
    }
    top.finish(
        &mut d,
        &[
            "cluster", "nodes", "network", "services", "storage", "alerts", "ceph",
        ],
    );
    finish(d, spec, broken)
}

fn finish(d: Decoder, spec: Spec, broken: BTreeSet<String>) -> Decoded {
    Decoded {
        spec,
        broken,
        diagnostics: d.diagnostics,
        spans: d.spans,
    }
}

/// Keys of each table, for unknown-key suggestions (and a test that they match the schema).
pub mod keys {
    /// `[cluster]`
    pub const CLUSTER: &[&str] = &["name", "timings", "fence_command", "fence_environment_file"];
    /// `[cluster.timings]`
    pub const TIMINGS: &[&str] = &["heartbeat", "election_timeout", "lease_ttl", "drift_margin"];
    /// `[nodes.NAME]`
    pub const NODE: &[&str] = &[
        "address",
        "labels",
        "voter",
        "workloads",
        "renamed_from",
        "wireguard",
        "storage_address",
    ];
    /// `[ceph]`
    pub const CEPH: &[&str] = &[
        "public_network",
        "monitors",
        "managers",
        "metadata_servers",
        "osds",
        "pools",
        "filesystems",
        "config",
    ];
    /// `[nodes.<n>.wireguard]`
    pub const NODE_WIREGUARD: &[&str] = &["public_key"];
    /// `[network]`
    pub const NETWORK: &[&str] = &["transport", "overlay", "port", "mtu", "api_port"];
    /// `[services.NAME]`
    pub const SERVICE: &[&str] = &[
        "kind",
        "command",
        "env",
        "cwd",
        "stop_signal",
        "stop_timeout",
        "unit",
        "container",
        "vm",
        "prefer",
        "avoid",
        "require",
        "prefer_labels",
        "anti_affinity",
        "after",
        "storage",
        "ip",
        "interface",
        "health",
        "restart",
        "exclusive",
        "sticky",
        "renamed_from",
    ];
    /// `[services.NAME.health]`
    pub const HEALTH: &[&str] = &[
        "kind", "url", "ca", "insecure", "address", "command", "interval", "timeout", "failures",
    ];
    /// `[services.NAME.restart]`
    pub const RESTART: &[&str] = &["max_restarts", "window"];
    /// `[alerts]`
    pub const ALERTS: &[&str] = &["command", "kinds", "timeout", "retries"];
    /// `[storage.NAME]`
    pub const STORAGE: &[&str] = &[
        "kind",
        "nodes",
        "device",
        "size",
        "mount",
        "fs",
        "brick",
        "volume",
        "arbiter",
        "renamed_from",
        "pool",
        "image",
        "path",
        "ceph_config",
        "ceph_keyring",
        "ceph_client",
    ];
}

fn cluster(d: &mut Decoder, node: &Node, path: &str) -> Option<Cluster> {
    let mut f = d.table(node, path, node.span.clone())?;
    let name = f
        .required(d, "name", "the cluster's name", "\"homelab\"")
        .and_then(|(n, p)| d.string(n, &p));
    let mut timings = Timings::default();
    if let Some((n, p)) = f.get("timings") {
        if let Some(mut t) = d.table(n, &p, n.span.clone()) {
            for (key, slot) in [
                ("heartbeat", &mut timings.heartbeat),
                ("election_timeout", &mut timings.election_timeout),
                ("lease_ttl", &mut timings.lease_ttl),
                ("drift_margin", &mut timings.drift_margin),
            ] {
                if let Some((n, p)) = t.get(key) {
                    if let Some(v) = d.duration(n, &p) {
                        *slot = v;
                    }
                }
            }
            t.finish(d, keys::TIMINGS);
        }
    }
    let fence_command = f
        .get("fence_command")
        .and_then(|(n, p)| d.strings(n, &p, false))
        .unwrap_or_default();
    let fence_environment_file = f
        .get("fence_environment_file")
        .and_then(|(n, p)| d.string(n, &p));
    f.finish(d, keys::CLUSTER);
    Some(Cluster {
        name: name?,
        timings,
        fence_command,
        fence_environment_file,
    })
}

fn node_spec(d: &mut Decoder, mut f: Fields<'_>) -> Option<NodeSpec> {
    let address = f
        .required(d, "address", "the node's IP address", "\"192.168.1.10\"")
        .and_then(|(n, p)| d.ip(n, &p));
    let labels = f
        .get("labels")
        .and_then(|(n, p)| d.string_map(n, &p))
        .unwrap_or_default();
    let voter = f
        .get("voter")
        .and_then(|(n, p)| d.bool(n, &p))
        .unwrap_or(true);
    let workloads = f
        .get("workloads")
        .and_then(|(n, p)| d.bool(n, &p))
        .unwrap_or(true);
    let renamed_from = f.get("renamed_from").and_then(|(n, p)| d.string(n, &p));
    let wireguard = f.get("wireguard").and_then(|(n, p)| {
        let mut t = d.table(n, &p, n.span.clone())?;
        let public_key = t
            .required(
                d,
                "public_key",
                "the node's WireGuard public key",
                "\"<what `quorate wg keygen` printed on this node>\"",
            )
            .and_then(|(n, p)| d.string(n, &p));
        t.finish(d, keys::NODE_WIREGUARD);
        Some(NodeWireguard {
            public_key: public_key?,
        })
    });
    let storage_address = f.get("storage_address").and_then(|(n, p)| d.ip(n, &p));
    f.finish(d, keys::NODE);
    Some(NodeSpec {
        address: address?,
        labels,
        voter,
        workloads,
        renamed_from,
        wireguard,
        storage_address,
    })
}

fn network(d: &mut Decoder, node: &Node, path: &str) -> Option<Network> {
    let mut f = d.table(node, path, node.span.clone())?;
    let mut net = Network::default();
    if let Some((n, p)) = f.get("transport") {
        if let Some(t) = d.choice(
            n,
            &p,
            &[
                ("direct", Transport::Direct),
                ("wireguard", Transport::Wireguard),
            ],
        ) {
            net.transport = t;
        }
    }
    net.overlay = f.get("overlay").and_then(|(n, p)| d.ipnet(n, &p));
    if let Some((n, p)) = f.get("port") {
        if let Some(port) = d.integer::<u16>(n, &p, "from 1 to 65535") {
            net.port = port;
        }
    }
    if let Some((n, p)) = f.get("api_port") {
        net.api_port = d.integer::<u16>(n, &p, "from 1 to 65535");
    }
    if let Some((n, p)) = f.get("mtu") {
        net.mtu = d.integer::<u16>(n, &p, "from 1280 to 9000");
    }
    f.finish(d, keys::NETWORK);
    Some(net)
}

fn service(d: &mut Decoder, mut f: Fields<'_>) -> Option<ServiceSpec> {
    let kind = f
        .required(d, "kind", "what runs it", "\"process\"")
        .and_then(|(n, p)| d.choice(n, &p, &ServiceKind::ALL));
    let strings = |f: &mut Fields<'_>, d: &mut Decoder, key: &str, single: bool| {
        f.get(key)
            .and_then(|(n, p)| d.strings(n, &p, single))
            .unwrap_or_default()
    };
    let command = strings(&mut f, d, "command", false);
    let prefer = strings(&mut f, d, "prefer", true);
    let avoid = strings(&mut f, d, "avoid", true);
    let anti_affinity = strings(&mut f, d, "anti_affinity", true);
    let after = strings(&mut f, d, "after", true);
    let storage = strings(&mut f, d, "storage", true);
    let env = f
        .get("env")
        .and_then(|(n, p)| d.string_map(n, &p))
        .unwrap_or_default();
    let require = f
        .get("require")
        .and_then(|(n, p)| d.string_map(n, &p))
        .unwrap_or_default();
    let prefer_labels = f
        .get("prefer_labels")
        .and_then(|(n, p)| d.string_map(n, &p))
        .unwrap_or_default();
    let opt_string = |f: &mut Fields<'_>, d: &mut Decoder, key: &str| {
        f.get(key).and_then(|(n, p)| d.string(n, &p))
    };
    let cwd = opt_string(&mut f, d, "cwd");
    let stop_signal = opt_string(&mut f, d, "stop_signal");
    let unit = opt_string(&mut f, d, "unit");
    let container = opt_string(&mut f, d, "container");
    let vm = opt_string(&mut f, d, "vm");
    let interface = opt_string(&mut f, d, "interface");
    let renamed_from = opt_string(&mut f, d, "renamed_from");
    let stop_timeout = f.get("stop_timeout").and_then(|(n, p)| d.duration(n, &p));
    let ip = f.get("ip").and_then(|(n, p)| d.ipnet(n, &p));
    let health = f.get("health").and_then(|(n, p)| health(d, n, &p));
    let restart = f
        .get("restart")
        .and_then(|(n, p)| restart(d, n, &p))
        .unwrap_or_default();
    let exclusive = f
        .get("exclusive")
        .and_then(|(n, p)| d.bool(n, &p))
        .unwrap_or(true);
    let sticky = f
        .get("sticky")
        .and_then(|(n, p)| d.bool(n, &p))
        .unwrap_or(true);
    f.finish(d, keys::SERVICE);
    Some(ServiceSpec {
        kind: kind?,
        command,
        env,
        cwd,
        stop_signal,
        stop_timeout,
        unit,
        container,
        vm,
        prefer,
        avoid,
        require,
        prefer_labels,
        anti_affinity,
        after,
        storage,
        ip,
        interface,
        health,
        restart,
        exclusive,
        sticky,
        renamed_from,
    })
}

fn health(d: &mut Decoder, node: &Node, path: &str) -> Option<Health> {
    let mut f = d.table(node, path, node.span.clone())?;
    let kind = f
        .required(d, "kind", "the check to run", "\"http\"")
        .and_then(|(n, p)| {
            d.choice(
                n,
                &p,
                &[
                    ("alive", HealthKind::Alive),
                    ("http", HealthKind::Http),
                    ("tcp", HealthKind::Tcp),
                    ("exec", HealthKind::Exec),
                ],
            )
        });
    let url = f.get("url").and_then(|(n, p)| d.string(n, &p));
    let ca = f.get("ca").and_then(|(n, p)| d.string(n, &p));
    let insecure = f
        .get("insecure")
        .and_then(|(n, p)| d.bool(n, &p))
        .unwrap_or(false);
    let address = f.get("address").and_then(|(n, p)| d.string(n, &p));
    let command = f
        .get("command")
        .and_then(|(n, p)| d.strings(n, &p, false))
        .unwrap_or_default();
    let interval = f
        .get("interval")
        .and_then(|(n, p)| d.duration(n, &p))
        .unwrap_or_else(Health::default_interval);
    let timeout = f
        .get("timeout")
        .and_then(|(n, p)| d.duration(n, &p))
        .unwrap_or_else(Health::default_timeout);
    let failures = f
        .get("failures")
        .and_then(|(n, p)| d.integer::<u32>(n, &p, "from 1 to 4294967295"))
        .unwrap_or_else(Health::default_failures);
    f.finish(d, keys::HEALTH);
    Some(Health {
        kind: kind?,
        url,
        ca,
        insecure,
        address,
        command,
        interval,
        timeout,
        failures,
    })
}

fn alerts(d: &mut Decoder, node: &Node, path: &str) -> Option<Alerts> {
    let mut f = d.table(node, path, node.span.clone())?;
    let command = f
        .required(
            d,
            "command",
            "the alert command",
            "[\"/run/current-system/sw/bin/my-alert\"]",
        )
        .and_then(|(n, p)| d.strings(n, &p, false));
    let kinds = f
        .get("kinds")
        .and_then(|(n, p)| d.strings(n, &p, true))
        .unwrap_or_default();
    let timeout = f
        .get("timeout")
        .and_then(|(n, p)| d.duration(n, &p))
        .unwrap_or_else(Alerts::default_timeout);
    let retries = f
        .get("retries")
        .and_then(|(n, p)| d.integer::<u32>(n, &p, "from 0 to 4294967295"))
        .unwrap_or_else(Alerts::default_retries);
    f.finish(d, keys::ALERTS);
    Some(Alerts {
        command: command?,
        kinds,
        timeout,
        retries,
    })
}

fn ceph(d: &mut Decoder, node: &Node, path: &str) -> Option<CephSpec> {
    let mut f = d.table(node, path, node.span.clone())?;
    let public_network = f
        .required(
            d,
            "public_network",
            "the network Ceph talks on",
            "\"10.0.1.0/24\"",
        )
        .and_then(|(n, p)| d.ipnet(n, &p));
    let list = |f: &mut Fields<'_>, d: &mut Decoder, key: &str| {
        f.get(key)
            .and_then(|(n, p)| d.strings(n, &p, false))
            .unwrap_or_default()
    };
    let monitors = list(&mut f, d, "monitors");
    let managers = list(&mut f, d, "managers");
    let metadata_servers = list(&mut f, d, "metadata_servers");
    let filesystems = list(&mut f, d, "filesystems");
    let mut osds = BTreeMap::new();
    let mut osds_ok = true;
    if let Some((n, p)) = f.get("osds") {
        d.record(&p, n);
        if let Value::Table(entries) = &n.value {
            for e in entries {
                let ep = join(&p, &e.key);
                d.spans.keys.insert(ep.clone(), e.key_span.clone());
                match d.strings(&e.node, &ep, true) {
                    Some(v) => {
                        osds.insert(e.key.clone(), v);
                    }
                    None => osds_ok = false,
                }
            }
        } else {
            d.type_error(n, &p, "a table of nodes", "{ n1 = [\"/dev/vdb\"] }");
            osds_ok = false;
        }
    }
    let pools = f
        .get("pools")
        .and_then(|(n, p)| d.string_map(n, &p))
        .unwrap_or_default();
    let config = f
        .get("config")
        .and_then(|(n, p)| d.string_map(n, &p))
        .unwrap_or_default();
    f.finish(d, keys::CEPH);
    osds_ok.then_some(())?;
    Some(CephSpec {
        public_network: public_network?,
        monitors,
        managers,
        metadata_servers,
        osds,
        pools,
        filesystems,
        config,
    })
}

fn restart(d: &mut Decoder, node: &Node, path: &str) -> Option<Restart> {
    let mut f = d.table(node, path, node.span.clone())?;
    let mut r = Restart::default();
    if let Some((n, p)) = f.get("max_restarts") {
        if let Some(v) = d.integer::<u32>(n, &p, "from 0 to 4294967295") {
            r.max_restarts = v;
        }
    }
    if let Some((n, p)) = f.get("window") {
        if let Some(v) = d.duration(n, &p) {
            r.window = v;
        }
    }
    f.finish(d, keys::RESTART);
    Some(r)
}

fn storage(d: &mut Decoder, mut f: Fields<'_>) -> Option<StorageSpec> {
    let kind = f
        .required(d, "kind", "the storage type", "\"drbd\"")
        .and_then(|(n, p)| d.choice(n, &p, &StorageKind::ALL));
    let nodes = f
        .get("nodes")
        .and_then(|(n, p)| d.strings(n, &p, false))
        .unwrap_or_default();
    let opt_string = |f: &mut Fields<'_>, d: &mut Decoder, key: &str| {
        f.get(key).and_then(|(n, p)| d.string(n, &p))
    };
    let device = opt_string(&mut f, d, "device");
    let mount = opt_string(&mut f, d, "mount");
    let fs = opt_string(&mut f, d, "fs");
    let brick = opt_string(&mut f, d, "brick");
    let volume = opt_string(&mut f, d, "volume");
    let arbiter = f
        .get("arbiter")
        .and_then(|(n, p)| d.bool(n, &p))
        .unwrap_or(false);
    let renamed_from = opt_string(&mut f, d, "renamed_from");
    let size = f.get("size").and_then(|(n, p)| d.size(n, &p));
    let pool = opt_string(&mut f, d, "pool");
    let image = opt_string(&mut f, d, "image");
    let path = opt_string(&mut f, d, "path");
    let ceph_config = opt_string(&mut f, d, "ceph_config");
    let ceph_keyring = opt_string(&mut f, d, "ceph_keyring");
    let ceph_client = opt_string(&mut f, d, "ceph_client");
    f.finish(d, keys::STORAGE);
    Some(StorageSpec {
        kind: kind?,
        nodes,
        device,
        size,
        mount,
        fs,
        brick,
        volume,
        arbiter,
        renamed_from,
        pool,
        image,
        path,
        ceph_config,
        ceph_keyring,
        ceph_client,
    })
}

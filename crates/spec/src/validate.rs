//! Checks on the typed spec that need more than one key: references, cycles,
//! placement feasibility, address clashes, timing sanity. Every finding is reported;
//! nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::decode::{index, join, SpanIndex};
use crate::diagnostic::Diagnostic;
use crate::model::{HealthKind, ServiceKind, ServiceSpec, Spec, StorageKind, Transport};

/// True when `name` is an RFC 1123 host label: 1–63 of `a-z`, `0-9`, `-`, not
/// starting or ending with `-`.
#[must_use]
pub fn is_host_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn label_fix(name: &str) -> String {
    let mut fixed: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    fixed = fixed.trim_matches('-').to_string();
    fixed.truncate(63);
    if fixed.is_empty() {
        "node1".into()
    } else {
        fixed
    }
}

const SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL",
];
const FILESYSTEMS: &[&str] = &["ext4", "xfs", "btrfs"];
const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".target", ".socket", ".mount", ".timer", ".path", ".scope", ".slice",
];

struct Checker<'a> {
    spec: &'a Spec,
    spans: &'a SpanIndex,
    broken: &'a BTreeSet<String>,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn push(
        &mut self,
        d: Diagnostic,
        span: Option<crate::Span>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.out.push(d.at(span).label(label).help(help));
    }

    fn error(
        &mut self,
        code: &'static str,
        path: &str,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(
            Diagnostic::error(code, path, message),
            self.spans.value(path),
            label,
            help,
        );
    }

    fn warning(
        &mut self,
        code: &'static str,
        path: &str,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(
            Diagnostic::warning(code, path, message),
            self.spans.value(path),
            label,
            help,
        );
    }

    /// An error pointing at the key (for names of entries and missing keys).
    fn error_at_key(
        &mut self,
        code: &'static str,
        path: &str,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(
            Diagnostic::error(code, path, message),
            self.spans.key(path),
            label,
            help,
        );
    }

    fn exists(&self, table: &str, name: &str) -> bool {
        let present = match table {
            "nodes" => self.spec.nodes.contains_key(name),
            "services" => self.spec.services.contains_key(name),
            _ => self.spec.storage.contains_key(name),
        };
        present || self.broken.contains(&join(table, name))
    }

    /// Checks that each name in `list` exists in `table`; returns nothing, reports each miss.
    fn references(&mut self, path: &str, list: &[String], table: &str, what: &str) {
        let mut seen = BTreeSet::new();
        for (i, name) in list.iter().enumerate() {
            let p = index(path, i);
            if !seen.insert(name) {
                self.warning(
                    "spec::duplicate-reference",
                    &p,
                    format!("`{name}` is listed twice in `{path}`"),
                    "listed again",
                    "remove the second entry",
                );
                continue;
            }
            if self.exists(table, name) {
                continue;
            }
            // Only a miss pays for the list of candidates.
            let candidates: Vec<&String> = match table {
                "nodes" => self.spec.nodes.keys().collect(),
                "services" => self.spec.services.keys().collect(),
                _ => self.spec.storage.keys().collect(),
            };
            let close = candidates
                .iter()
                .map(|c| (strsim::jaro_winkler(c, name), *c))
                .filter(|(s, _)| *s > 0.75)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let help = match close {
                Some((_, c)) => format!("did you mean `{c}`?"),
                None if candidates.is_empty() => format!("define it under [{table}.{name}]"),
                None if candidates.len() > 20 => format!(
                    "no {what} of that name among the {} defined",
                    candidates.len()
                ),
                None => format!(
                    "known {table}: {}",
                    candidates
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.error(
                "spec::unknown-reference",
                &p,
                format!("`{path}` names {what} `{name}`, which is not defined"),
                format!("no such {what}"),
                help,
            );
        }
    }
}

/// Validates a decoded spec. `broken` names entries that exist but failed to decode.
#[must_use]
pub fn validate(spec: &Spec, spans: &SpanIndex, broken: &BTreeSet<String>) -> Vec<Diagnostic> {
    let mut c = Checker {
        spec,
        spans,
        broken,
        out: Vec::new(),
    };
    names(&mut c);
    fence_command(&mut c);
    alerts(&mut c);
    nodes(&mut c);
    timings(&mut c);
    network(&mut c);
    for (name, svc) in &spec.services {
        service(&mut c, name, svc);
    }
    after_cycles(&mut c);
    floating_ips(&mut c);
    storage(&mut c);
    ceph(&mut c);
    placement(&mut c);
    c.out
}

/// `[ceph]`: roles on nodes of the spec, monitors reachable on the public network,
/// OSD entries that are devices or `memstore`, pools with a known application.
fn ceph(c: &mut Checker<'_>) {
    let Some(ceph) = c.spec.ceph.clone() else {
        return;
    };
    for key in ["monitors", "managers", "metadata_servers"] {
        let list = match key {
            "monitors" => &ceph.monitors,
            "managers" => &ceph.managers,
            _ => &ceph.metadata_servers,
        };
        c.references(&join("ceph", key), list, "nodes", "node");
    }
    let voters = c.spec.voter_names();
    let monitors = ceph.monitor_nodes(&voters);
    if monitors.len() % 2 == 0 || monitors.len() > 7 {
        c.error(
            "spec::ceph-monitors",
            "ceph.monitors",
            format!(
                "Ceph has {} monitor(s); monitors keep their own quorum and need an odd number from 1 to 7",
                monitors.len()
            ),
            "an odd number, 1 to 7",
            "list 1, 3 or 5 nodes in `ceph.monitors` (default: the voters)",
        );
    }
    for (i, node) in monitors.iter().enumerate() {
        let Some(n) = c.spec.nodes.get(node) else {
            continue;
        };
        let address = n.storage_address.unwrap_or(n.address);
        if !ceph.public_network.contains(&address) {
            let path = if ceph.monitors.is_empty() {
                "ceph.public_network".to_owned()
            } else {
                index("ceph.monitors", i)
            };
            c.error(
                "spec::ceph-network",
                &path,
                format!(
                    "monitor `{node}` would listen on {address}, which is not in ceph.public_network {}",
                    ceph.public_network
                ),
                "outside the public network",
                format!("set `nodes.{node}.storage_address` to its address on {}, or fix `ceph.public_network`", ceph.public_network),
            );
        }
    }
    for (node, entries) in &ceph.osds {
        let base = join("ceph.osds", node);
        if !c.exists("nodes", node) {
            c.error_at_key(
                "spec::unknown-reference",
                &base,
                format!("`ceph.osds` names node `{node}`, which is not defined"),
                "no such node",
                format!(
                    "known nodes: {}",
                    c.spec.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let p = index(&base, i);
            if entry != crate::model::CEPH_MEMSTORE && !entry.starts_with("/dev/") {
                c.error(
                    "spec::device",
                    &p,
                    format!("OSD \"{entry}\" on `{node}` is neither a block device under /dev nor \"memstore\""),
                    "not a device",
                    "use a stable device path like /dev/disk/by-id/…, given whole to the OSD (or \"memstore\" for a RAM-only test OSD)",
                );
            } else if entry != crate::model::CEPH_MEMSTORE && !seen.insert(entry) {
                c.error(
                    "spec::device",
                    &p,
                    format!("device {entry} is listed twice for `{node}`"),
                    "listed again",
                    "one OSD per device: remove the second entry",
                );
            }
        }
    }
    for (pool, application) in &ceph.pools {
        let p = join("ceph.pools", pool);
        if !["rbd", "cephfs", "rgw"].contains(&application.as_str()) {
            c.error(
                "spec::value",
                &p,
                format!("pool `{pool}` has application \"{application}\", which is not one of \"rbd\", \"cephfs\", \"rgw\""),
                "unknown application",
                "use \"rbd\" for block images, \"cephfs\" or \"rgw\"",
            );
        }
    }
    if !ceph.filesystems.is_empty() && ceph.metadata_nodes(&voters).is_empty() {
        c.error(
            "spec::ceph-mds",
            "ceph.filesystems",
            "CephFS file systems need a metadata server, and `ceph.metadata_servers` is empty",
            "no metadata server",
            "list a node in `ceph.metadata_servers`, or leave it out (default: the first monitor)",
        );
    }
    let osds: usize = ceph.osds.values().map(Vec::len).sum();
    if osds == 0 && (!ceph.pools.is_empty() || !ceph.filesystems.is_empty()) {
        c.error(
            "spec::ceph-osds",
            "ceph",
            "`ceph` declares pools or file systems but no OSD to store them on",
            "no OSDs",
            "add `osds = { n1 = [\"/dev/vdb\"], … }` to [ceph]",
        );
    }
}

fn names(c: &mut Checker<'_>) {
    let name = c.spec.cluster.name.clone();
    // A cluster table that failed to decode has no name to judge; it was reported.
    if !c.broken.contains("cluster") && !is_host_label(&name) {
        c.error(
            "spec::name",
            "cluster.name",
            format!("cluster name \"{name}\" is not an RFC 1123 label"),
            "lowercase letters, digits and `-` only, at most 63",
            format!("use \"{}\"", label_fix(&name)),
        );
    }
    let tables: [(&str, Vec<String>, &str); 3] = [
        (
            "nodes",
            c.spec.nodes.keys().cloned().collect(),
            "it becomes a host name and DRBD `on` name",
        ),
        (
            "services",
            c.spec.services.keys().cloned().collect(),
            "it becomes part of unit and file names",
        ),
        (
            "storage",
            c.spec.storage.keys().cloned().collect(),
            "it becomes a DRBD resource or volume name",
        ),
    ];
    for (table, list, why) in tables {
        for name in list {
            if !is_host_label(&name) {
                let path = join(table, &name);
                c.error_at_key(
                    "spec::name",
                    &path,
                    format!("name \"{name}\" in [{table}] is not an RFC 1123 label; {why}"),
                    "lowercase letters, digits and `-` only, at most 63",
                    format!("rename it to \"{}\"", label_fix(&name)),
                );
            }
        }
    }
    // renamed_from must not name something that still exists.
    let renames: Vec<(String, String, bool)> = c
        .spec
        .nodes
        .iter()
        .filter_map(|(n, s)| {
            s.renamed_from.clone().map(|old| {
                (
                    join("nodes", n),
                    old.clone(),
                    c.spec.nodes.contains_key(&old),
                )
            })
        })
        .chain(c.spec.services.iter().filter_map(|(n, s)| {
            s.renamed_from.clone().map(|old| {
                (
                    join("services", n),
                    old.clone(),
                    c.spec.services.contains_key(&old),
                )
            })
        }))
        .chain(c.spec.storage.iter().filter_map(|(n, s)| {
            s.renamed_from.clone().map(|old| {
                (
                    join("storage", n),
                    old.clone(),
                    c.spec.storage.contains_key(&old),
                )
            })
        }))
        .collect();
    for (path, old, still_there) in renames {
        if still_there {
            c.error(
                "spec::rename",
                &join(&path, "renamed_from"),
                format!("`{path}` is renamed from `{old}`, but `{old}` is still defined"),
                "the old name still exists",
                format!("remove the old entry `{old}`, or drop `renamed_from`"),
            );
        }
    }
}

fn alerts(c: &mut Checker<'_>) {
    let Some(a) = c.spec.alerts.clone() else {
        return;
    };
    match a.command.first() {
        None => c.error("spec::alerts", "alerts.command", "the alert command is empty", "no program", "give the argv of the command to run, e.g. [\"/run/current-system/sw/bin/curl\", \"-fsS\", \"--data-binary\", \"@-\", \"https://…\"]"),
        Some(p) if !p.starts_with('/') => c.error("spec::alerts", "alerts.command[0]", format!("alert program \"{p}\" is not an absolute path"), "relative program", "give the absolute path of the program"),
        Some(_) => {}
    }
    for (i, kind) in a.kinds.iter().enumerate() {
        if !crate::model::Alerts::KINDS.contains(&kind.as_str()) {
            c.error(
                "spec::alerts",
                &format!("alerts.kinds[{i}]"),
                format!("unknown event kind \"{kind}\""),
                "unknown kind",
                format!("use some of {:?}", crate::model::Alerts::KINDS),
            );
        }
    }
}

/// The `{secret:PATH}` placeholders of one argument, in order.
#[must_use]
pub fn secret_paths(arg: &str) -> Vec<&str> {
    let mut paths = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find("{secret:") {
        let after = &rest[start + "{secret:".len()..];
        let Some(end) = after.find('}') else { break };
        paths.push(&after[..end]);
        rest = &after[end + 1..];
    }
    paths
}

/// Why a secret's path is unfit, if it is: relative, or in the world-readable store.
fn secret_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("is not an absolute path")
    } else if path.starts_with("/nix/store") {
        Some("is in the Nix store, which every user can read")
    } else {
        None
    }
}

fn fence_command(c: &mut Checker<'_>) {
    for (i, arg) in c.spec.cluster.fence_command.clone().iter().enumerate() {
        for path in secret_paths(arg) {
            if let Some(problem) = secret_path_problem(path) {
                c.error("spec::fence-secret", &format!("cluster.fence_command[{i}]"), format!("the secret file \"{path}\" {problem}"), "unfit secret path", "keep secrets in a root-only file outside the Nix store, e.g. \"/run/secrets/ipmi-password\" (sops-nix, agenix)");
            }
        }
    }
    if let Some(path) = c.spec.cluster.fence_environment_file.clone() {
        if let Some(problem) = secret_path_problem(&path) {
            c.error("spec::fence-secret", "cluster.fence_environment_file", format!("the environment file \"{path}\" {problem}"), "unfit secret path", "keep secrets in a root-only file outside the Nix store, e.g. \"/run/secrets/fence.env\" (sops-nix, agenix)");
        }
    }
    if let Some(first) = c.spec.cluster.fence_command.first() {
        if !first.starts_with('/') {
            c.error("spec::fence-command", "cluster.fence_command[0]", format!("fence_command program \"{first}\" is not an absolute path"), "relative program", "give the absolute path of the fence agent, e.g. \"/run/current-system/sw/bin/fence_ipmilan\"");
        }
        if !c
            .spec
            .cluster
            .fence_command
            .iter()
            .any(|a| a.contains("{node}") || a.contains("{address}"))
        {
            c.warning("spec::fence-command", "cluster.fence_command", "fence_command never names the node ({node} or {address}): every run would fence the same machine", "no {node} placeholder", "pass {node} or {address} to the fence agent");
        }
    }
}

fn nodes(c: &mut Checker<'_>) {
    let mut by_address: BTreeMap<IpAddr, String> = BTreeMap::new();
    let list: Vec<(String, IpAddr)> = c
        .spec
        .nodes
        .iter()
        .map(|(n, s)| (n.clone(), s.address))
        .collect();
    for (name, address) in list {
        let path = join(&join("nodes", &name), "address");
        if address.is_unspecified() || address.is_multicast() {
            c.error(
                "spec::address",
                &path,
                format!("node `{name}` has address {address}, which no peer can reach"),
                "not a unicast address",
                "use the address other nodes reach this node at",
            );
        }
        if let Some(first) = by_address.get(&address) {
            let first_path = join(&join("nodes", first), "address");
            let d = Diagnostic::error(
                "spec::duplicate-address",
                &path,
                format!("nodes `{first}` and `{name}` both have address {address}"),
            )
            .at(c.spans.value(&path))
            .label("second use")
            .help("give every node its own address")
            .related(
                first_path.clone(),
                c.spans.value(&first_path),
                "first used here",
            );
            c.out.push(d);
        } else {
            by_address.insert(address, name);
        }
    }
    // Nodes that failed to decode were reported already; count them as voters here
    // so one bad address does not also read as "too few voters".
    let voters =
        c.spec.voters().count() + c.broken.iter().filter(|p| p.starts_with("nodes.")).count();
    for (name, n) in &c.spec.nodes.clone() {
        if !n.workloads && !n.voter {
            c.error(
                "spec::witness",
                &join(&join("nodes", name), "workloads"),
                format!("node `{name}` neither votes nor runs services"),
                "does nothing",
                "keep `voter = true` for a witness, or remove `workloads = false`",
            );
        }
    }
    if !c.spec.services.is_empty() && c.spec.nodes.values().all(|n| !n.workloads) {
        c.error(
            "spec::witness",
            "nodes",
            "every node has `workloads = false`: no node may run a service",
            "no node runs services",
            "set `workloads = false` only on witness nodes",
        );
    }
    if voters < 3 {
        c.error("spec::voters", "nodes", format!("the cluster has {voters} voting node(s); quorum needs at least 3"), "fewer than 3 voters", "add nodes (or set `voter = true` on existing ones) until there are at least 3; a 2-node cluster cannot tell a dead peer from a partition");
    } else if voters.is_multiple_of(2) {
        c.warning("spec::voters", "nodes", format!("the cluster has {voters} voting nodes, an even number"), "even number of voters", format!(
                "{voters} voters tolerate as many failures as {}; set `voter = false` on one node or add one",
                voters - 1
            ));
    }
}

fn timings(c: &mut Checker<'_>) {
    let t = c.spec.cluster.timings;
    let hb = t.heartbeat.as_millis();
    let base = "cluster.timings";
    if hb < 10 {
        c.error(
            "spec::timing",
            &join(base, "heartbeat"),
            format!("heartbeat {} is below 10ms", t.heartbeat),
            "too short",
            "use at least \"10ms\" (default \"100ms\")",
        );
    }
    if t.election_timeout.as_millis() <= 3 * hb {
        c.error(
            "spec::timing",
            &join(base, "election_timeout"),
            format!(
                "election timeout {} must be more than 3 × heartbeat ({})",
                t.election_timeout, t.heartbeat
            ),
            "too short for the heartbeat",
            format!(
                "raise it above {}ms (default \"500ms\" with a 100ms heartbeat)",
                3 * hb
            ),
        );
    }
    if t.lease_ttl.as_millis() <= 2 * hb {
        c.error(
            "spec::timing",
            &join(base, "lease_ttl"),
            format!(
                "lease TTL {} must be more than 2 × heartbeat ({})",
                t.lease_ttl, t.heartbeat
            ),
            "too short for the heartbeat",
            format!("raise it above {}ms (default \"1.5s\")", 2 * hb),
        );
    }
    if t.drift_margin >= t.lease_ttl {
        c.error(
            "spec::timing",
            &join(base, "drift_margin"),
            format!(
                "drift margin {} must be smaller than the lease TTL {}",
                t.drift_margin, t.lease_ttl
            ),
            "not smaller than the lease TTL",
            "use about a third of the lease TTL (default \"500ms\" with \"1.5s\")",
        );
    } else if t.drift_margin.as_millis() == 0 {
        c.warning(
            "spec::timing",
            &join(base, "drift_margin"),
            "drift margin is 0: clock-rate differences between nodes are not allowed for",
            "zero",
            "keep a margin (default \"500ms\") unless every node has a precise clock",
        );
    }
}

fn network(c: &mut Checker<'_>) {
    let net = c.spec.network.clone();
    if net.port == 0 {
        c.error(
            "spec::port",
            "network.port",
            "network.port is 0",
            "not a port",
            "use a free TCP port; the default is 7400",
        );
    }
    if net.transport == Transport::Wireguard {
        if net.overlay.is_none() {
            c.error(
                "spec::overlay",
                "network.transport",
                "transport = \"wireguard\" needs `network.overlay`",
                "no overlay network",
                "add `overlay = \"10.99.0.0/24\"` (a private range not used elsewhere)",
            );
        }
        let without: Vec<String> = c
            .spec
            .nodes
            .iter()
            .filter(|(_, n)| n.wireguard.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in without {
            c.error(
                "spec::wireguard-key",
                &join("nodes", &name),
                format!("transport = \"wireguard\" but node `{name}` has no WireGuard public key"),
                "no public key",
                format!(
                    "run `quorate wg keygen` on {name} and add `[nodes.{name}.wireguard]` with `public_key = \"<the key it printed>\"`"
                ),
            );
        }
    }
    if let Some(api) = net.api_port {
        if api == 0 || api == net.port {
            c.error(
                "spec::port",
                "network.api_port",
                format!("network.api_port {api} is not a free port of its own"),
                if api == 0 {
                    "not a port"
                } else {
                    "same as network.port"
                },
                "pick another TCP port for the HTTP API, e.g. 7443",
            );
        }
    }
    if let Some(mtu) = net.mtu {
        if !(1280..=9000).contains(&mtu) {
            c.error(
                "spec::mtu",
                "network.mtu",
                format!("network.mtu {mtu} is outside 1280..9000"),
                "out of range",
                "leave it out to use the underlay's MTU − 80, or give a value from 1280 (IPv6's minimum) to 9000",
            );
        }
    }
    wireguard_keys(c);
    if let Some(overlay) = net.overlay {
        if overlay.addr() != overlay.network() {
            c.error(
                "spec::overlay",
                "network.overlay",
                format!("overlay {overlay} has host bits set"),
                "not a network address",
                format!("did you mean \"{}\"?", overlay.trunc()),
            );
        }
        let hosts = match overlay {
            ipnet::IpNet::V4(n) => 2u128.pow(32 - u32::from(n.prefix_len())).saturating_sub(2),
            ipnet::IpNet::V6(n) => 2u128
                .checked_pow(128 - u32::from(n.prefix_len()))
                .unwrap_or(u128::MAX)
                .saturating_sub(1),
        };
        let needed = c.spec.nodes.len() as u128;
        if hosts < needed {
            c.error(
                "spec::overlay",
                "network.overlay",
                format!("overlay {overlay} has room for {hosts} nodes, the spec has {needed}"),
                "too small",
                "use a larger network, e.g. a /24",
            );
        }
        let inside: Vec<String> = c
            .spec
            .nodes
            .iter()
            .filter(|(_, n)| overlay.contains(&n.address))
            .map(|(name, _)| name.clone())
            .collect();
        if !inside.is_empty() {
            c.error(
                "spec::overlay",
                "network.overlay",
                format!(
                    "overlay {overlay} contains the underlay address of {}",
                    inside.join(", ")
                ),
                "overlaps the node addresses",
                "pick an overlay range that no node uses as its address",
            );
        }
    }
}

/// Every WireGuard public key is 32 bytes in base64, and no two nodes share one.
fn wireguard_keys(c: &mut Checker<'_>) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let keys: Vec<(String, String)> = c
        .spec
        .nodes
        .iter()
        .filter_map(|(name, n)| Some((name.clone(), n.wireguard.as_ref()?.public_key.clone())))
        .collect();
    for (name, key) in keys {
        let at = join(&join(&join("nodes", &name), "wireguard"), "public_key");
        if !is_wireguard_key(&key) {
            c.error(
                "spec::wireguard-key",
                &at,
                format!("`{key}` is not a WireGuard public key"),
                "not 32 bytes of base64",
                "a public key is 44 characters of base64 ending in `=`, as `quorate wg keygen` (or `wg pubkey`) prints it",
            );
        } else if let Some(other) = seen.get(&key) {
            c.error(
                "spec::wireguard-key",
                &at,
                format!("nodes `{other}` and `{name}` have the same WireGuard public key"),
                "duplicate key",
                format!("each node needs its own key: run `quorate wg keygen` on {name} and use the key it prints"),
            );
        } else {
            seen.insert(key, name);
        }
    }
}

/// A WireGuard key as `wg` writes it: standard base64 of 32 bytes.
#[must_use]
pub fn is_wireguard_key(key: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|bytes| bytes.len() == 32)
}

fn service(c: &mut Checker<'_>, name: &str, s: &ServiceSpec) {
    let base = join("services", name);
    let at = |key: &str| join(&base, key);
    let kind_name = ServiceKind::ALL
        .iter()
        .find(|(_, k)| *k == s.kind)
        .map_or("?", |(n, _)| *n);

    // Kind-specific keys: each required by its kind and refused by the others.
    // `container` serves two kinds: its owner is the service's own kind when that is one.
    let container_owner = if s.kind == ServiceKind::Lxc {
        ServiceKind::Lxc
    } else {
        ServiceKind::Nspawn
    };
    let kind_keys: [(&str, ServiceKind, bool); 6] = [
        ("command", ServiceKind::Process, !s.command.is_empty()),
        ("unit", ServiceKind::Systemd, s.unit.is_some()),
        ("container", container_owner, s.container.is_some()),
        ("vm", ServiceKind::Microvm, s.vm.is_some()),
        ("env", ServiceKind::Process, !s.env.is_empty()),
        ("cwd", ServiceKind::Process, s.cwd.is_some()),
    ];
    for (key, owner, present) in kind_keys {
        let required = matches!(key, "command" | "unit" | "container" | "vm");
        if owner == s.kind && required && !present {
            let example = match key {
                "command" => "[\"/run/current-system/sw/bin/my-daemon\", \"--flag\"]",
                "unit" => "\"postgresql.service\"",
                _ => "\"NAME\"",
            };
            c.error_at_key(
                "spec::missing-key",
                &base,
                format!("service `{name}` of kind \"{kind_name}\" needs `{key}`"),
                format!("`{key}` missing"),
                format!("add `{key} = {example}`"),
            );
        } else if owner != s.kind && present {
            let owner_name = ServiceKind::ALL
                .iter()
                .find(|(_, k)| *k == owner)
                .map_or("?", |(n, _)| *n);
            c.error("spec::wrong-kind", &at(key), format!("`{key}` is for kind = \"{owner_name}\", but service `{name}` is kind = \"{kind_name}\""), "not used by this kind", format!("remove `{key}`, or set `kind = \"{owner_name}\"`"));
        }
    }
    if s.kind != ServiceKind::Process {
        for (key, present) in [
            ("stop_signal", s.stop_signal.is_some()),
            ("stop_timeout", s.stop_timeout.is_some()),
        ] {
            if present {
                c.error(
                    "spec::wrong-kind",
                    &at(key),
                    format!(
                        "`{key}` is for kind = \"process\"; systemd decides how `{name}` stops"
                    ),
                    "not used by this kind",
                    "set it in the unit (KillSignal=, TimeoutStopSec=) instead",
                );
            }
        }
    }
    if let Some(first) = s.command.first() {
        if first.is_empty() {
            c.error(
                "spec::command",
                &index(&at("command"), 0),
                "the program (first element of `command`) is empty",
                "empty program",
                "put the program's path first, then its arguments",
            );
        }
    }
    if let Some(cwd) = &s.cwd {
        if !cwd.starts_with('/') {
            c.error(
                "spec::path",
                &at("cwd"),
                format!("cwd \"{cwd}\" is not an absolute path"),
                "relative path",
                format!("use \"/{}\"", cwd.trim_start_matches("./")),
            );
        }
    }
    if let Some(sig) = &s.stop_signal {
        let normal = if sig.starts_with("SIG") {
            sig.clone()
        } else {
            format!("SIG{sig}")
        };
        if !SIGNALS.contains(&normal.as_str()) {
            c.error(
                "spec::signal",
                &at("stop_signal"),
                format!("stop_signal \"{sig}\" is not a signal quorate sends"),
                "unknown signal",
                format!("use one of {}", SIGNALS.join(", ")),
            );
        }
    }
    for key in s.env.keys() {
        let ok = key
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && key
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ok {
            c.error_at_key(
                "spec::env",
                &join(&at("env"), key),
                format!("environment variable name \"{key}\" is not valid"),
                "letters, digits and `_`, not starting with a digit",
                "rename the variable",
            );
        }
    }
    if let Some(unit) = &s.unit {
        if !UNIT_SUFFIXES.iter().any(|sfx| unit.ends_with(sfx)) || unit.contains('/') {
            c.error(
                "spec::unit",
                &at("unit"),
                format!("\"{unit}\" is not a systemd unit name"),
                "no unit type suffix",
                format!("did you mean \"{}.service\"?", unit.trim_end_matches('.')),
            );
        }
    }
    for (key, value) in [("container", &s.container), ("vm", &s.vm)] {
        if let Some(v) = value {
            if !is_host_label(v) {
                c.error(
                    "spec::name",
                    &at(key),
                    format!("{key} name \"{v}\" is not a valid machine name"),
                    "lowercase letters, digits and `-` only",
                    format!("use \"{}\"", label_fix(v)),
                );
            }
        }
    }

    c.references(&at("prefer"), &s.prefer, "nodes", "node");
    c.references(&at("avoid"), &s.avoid, "nodes", "node");
    c.references(
        &at("anti_affinity"),
        &s.anti_affinity,
        "services",
        "service",
    );
    c.references(&at("after"), &s.after, "services", "service");
    c.references(&at("storage"), &s.storage, "storage", "storage");
    for (i, n) in s.prefer.iter().enumerate() {
        if s.avoid.contains(n) {
            c.error(
                "spec::placement",
                &index(&at("prefer"), i),
                format!("service `{name}` both prefers and avoids `{n}`"),
                "also in `avoid`",
                format!("remove `{n}` from one of the two lists"),
            );
        }
    }
    for (key, list) in [("anti_affinity", &s.anti_affinity), ("after", &s.after)] {
        if let Some(i) = list.iter().position(|x| x == name) {
            c.error(
                "spec::self-reference",
                &index(&at(key), i),
                format!("service `{name}` names itself in `{key}`"),
                "itself",
                format!("remove `{name}` from `{key}`"),
            );
        }
    }
    if s.interface.is_some() && s.ip.is_none() {
        c.error(
            "spec::ip",
            &at("interface"),
            format!("service `{name}` has an `interface` but no floating `ip`"),
            "nothing to put on it",
            "add `ip = \"ADDR/PREFIX\"`, or remove `interface`",
        );
    }
    if !s.exclusive {
        if s.ip.is_some() {
            c.error(
                "spec::exclusive",
                &at("exclusive"),
                format!("service `{name}` has a floating ip, so it must be exclusive"),
                "a floating address cannot live on two nodes",
                "remove `exclusive = false`, or remove `ip`",
            );
        }
        if s.storage.iter().any(|st| {
            c.spec
                .storage
                .get(st)
                .is_some_and(|x| x.kind == StorageKind::Drbd)
        }) {
            c.error(
                "spec::exclusive",
                &at("exclusive"),
                format!("service `{name}` uses DRBD storage, so it must be exclusive"),
                "a DRBD device is primary on one node only",
                "remove `exclusive = false`",
            );
        }
    }
    if let Some(h) = &s.health {
        health(c, &at("health"), h);
    }
    if !s.require.is_empty()
        && !c
            .spec
            .nodes
            .values()
            .any(|n| s.require.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
    {
        let wanted: Vec<String> = s.require.iter().map(|(k, v)| format!("{k}={v}")).collect();
        c.warning(
            "spec::require",
            &at("require"),
            format!(
                "no node carries {}: service `{name}` can never be placed",
                wanted.join(", ")
            ),
            "no matching node",
            "add the labels to a node (`labels = { … }`), or relax `require`",
        );
    }
    if s.restart.max_restarts > 0 && s.restart.window.as_millis() == 0 {
        c.error(
            "spec::restart",
            &join(&at("restart"), "window"),
            "restart window is 0 while max_restarts is above 0",
            "zero window",
            "use a window such as \"5m\"",
        );
    }
}

fn health(c: &mut Checker<'_>, base: &str, h: &crate::model::Health) {
    let at = |key: &str| join(base, key);
    let needs: [(&str, HealthKind, bool); 3] = [
        ("url", HealthKind::Http, h.url.is_some()),
        ("address", HealthKind::Tcp, h.address.is_some()),
        ("command", HealthKind::Exec, !h.command.is_empty()),
    ];
    for (key, owner, present) in needs {
        if owner == h.kind && !present {
            let example = match key {
                "url" => "\"http://127.0.0.1:8080/health\"",
                "address" => "\"127.0.0.1:5432\"",
                _ => "[\"/bin/check\"]",
            };
            c.error_at_key(
                "spec::missing-key",
                base,
                format!("health check of kind {:?} needs `{key}`", owner).to_lowercase(),
                format!("`{key}` missing"),
                format!("add `{key} = {example}`"),
            );
        } else if owner != h.kind && present {
            c.error(
                "spec::wrong-kind",
                &at(key),
                format!("`{key}` is only used by the {owner:?} health check").to_lowercase(),
                "not used by this kind",
                format!("remove `{key}`"),
            );
        }
    }
    if let Some(url) = &h.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            c.error(
                "spec::health",
                &at("url"),
                format!("health url \"{url}\" is not an http(s) URL"),
                "not http:// or https://",
                "write it like \"http://127.0.0.1:8080/health\"",
            );
        }
    }
    let https = h.url.as_deref().is_some_and(|u| u.starts_with("https://"));
    if https && h.ca.is_none() && !h.insecure {
        c.error(
            "spec::health-https",
            &at("url"),
            "an https health check must say which certificate to trust",
            "no `ca` and no `insecure`",
            "add `ca = \"/path/to/ca.pem\"` (the CA that signed the service's certificate), or `insecure = true` to accept any",
        );
    }
    if h.ca.is_some() && h.insecure {
        c.error(
            "spec::health-https",
            &at("insecure"),
            "`ca` and `insecure = true` contradict each other",
            "both given",
            "keep `ca` to check the certificate, or `insecure = true` to accept any",
        );
    }
    for (key, given) in [("ca", h.ca.is_some()), ("insecure", h.insecure)] {
        if given && !https {
            c.error(
                "spec::health-https",
                &at(key),
                format!("`{key}` only applies to an https:// health url"),
                "not an https check",
                format!("remove `{key}`, or use an https:// url"),
            );
        }
    }
    if let Some(ca) = &h.ca {
        if !ca.starts_with('/') {
            c.error(
                "spec::health-https",
                &at("ca"),
                format!("the CA file \"{ca}\" is not an absolute path"),
                "relative path",
                "give the absolute path of the CA certificate (PEM)",
            );
        }
    }
    if let Some(addr) = &h.address {
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            c.error(
                "spec::health",
                &at("address"),
                format!("health address \"{addr}\" is not HOST:PORT"),
                "not HOST:PORT",
                "write it like \"127.0.0.1:5432\"",
            );
        }
    }
    if h.timeout > h.interval {
        c.error(
            "spec::health",
            &at("timeout"),
            format!(
                "health timeout {} is longer than the interval {}",
                h.timeout, h.interval
            ),
            "longer than the interval",
            "make the timeout at most the interval",
        );
    }
    if h.interval.as_millis() < 100 {
        c.error(
            "spec::health",
            &at("interval"),
            format!("health interval {} is below 100ms", h.interval),
            "too often",
            "use at least \"100ms\"",
        );
    }
    if h.failures == 0 {
        c.error(
            "spec::health",
            &at("failures"),
            "health failures is 0",
            "must be at least 1",
            "use 1 to react to the first failed check",
        );
    }
}

fn after_cycles(c: &mut Checker<'_>) {
    // Depth-first search; a back edge closes a cycle, reported once at that edge.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        spec: &Spec,
        name: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
        cycles: &mut Vec<(String, usize, Vec<String>)>,
    ) {
        marks.insert(name.to_string(), Mark::Open);
        stack.push(name.to_string());
        if let Some(s) = spec.services.get(name) {
            for (i, dep) in s.after.iter().enumerate() {
                match marks.get(dep).copied() {
                    Some(Mark::Open) => {
                        let from = stack.iter().position(|x| x == dep).unwrap_or(0);
                        let mut cycle = stack[from..].to_vec();
                        cycle.push(dep.clone());
                        cycles.push((name.to_string(), i, cycle));
                    }
                    Some(Mark::New) => visit(spec, dep, marks, stack, cycles),
                    _ => {}
                }
            }
        }
        stack.pop();
        marks.insert(name.to_string(), Mark::Done);
    }
    let mut marks: BTreeMap<String, Mark> = c
        .spec
        .services
        .keys()
        .map(|k| (k.clone(), Mark::New))
        .collect();
    let mut cycles = Vec::new();
    let names: Vec<String> = c.spec.services.keys().cloned().collect();
    for name in names {
        if marks.get(&name) == Some(&Mark::New) {
            visit(c.spec, &name, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    for (svc, i, cycle) in cycles {
        if cycle.len() <= 2 {
            continue; // a self-reference, reported by the service check
        }
        let path = index(&join(&join("services", &svc), "after"), i);
        c.error(
            "spec::after-cycle",
            &path,
            format!("`after` forms a cycle: {}", cycle.join(" → ")),
            "closes the cycle",
            "remove one `after` entry in the cycle; services in a cycle could never start",
        );
    }
}

fn floating_ips(c: &mut Checker<'_>) {
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    let list: Vec<(String, ipnet::IpNet)> = c
        .spec
        .services
        .iter()
        .filter_map(|(n, s)| s.ip.map(|ip| (n.clone(), ip)))
        .collect();
    for (name, ip) in list {
        let path = join(&join("services", &name), "ip");
        if let Some(node) = c
            .spec
            .nodes
            .iter()
            .find(|(_, n)| n.address == ip.addr())
            .map(|(n, _)| n.clone())
        {
            c.error(
                "spec::duplicate-address",
                &path,
                format!(
                    "floating ip {} of `{name}` is node `{node}`'s address",
                    ip.addr()
                ),
                "already a node address",
                "use an address that no node owns",
            );
        }
        if ip.addr() == ip.network() && ip.prefix_len() < ip.max_prefix_len() {
            c.error(
                "spec::ip",
                &path,
                format!("floating ip {ip} is a network address, not a host address"),
                "network address",
                "use a host address inside the network, e.g. .10",
            );
        }
        if let Some(first) = seen.get(&ip.addr()) {
            let first = first.clone();
            let first_path = join(&join("services", &first), "ip");
            let span = c.spans.value(&first_path);
            let d = Diagnostic::error(
                "spec::duplicate-address",
                &path,
                format!("services `{first}` and `{name}` both float {}", ip.addr()),
            )
            .at(c.spans.value(&path))
            .label("second use")
            .help("give every service its own floating address")
            .related(first_path, span, "first used here");
            c.out.push(d);
        } else {
            seen.insert(ip.addr(), name);
        }
    }
}

fn storage(c: &mut Checker<'_>) {
    let mut mounts: BTreeMap<String, String> = BTreeMap::new();
    let mut volumes: BTreeMap<String, String> = BTreeMap::new();
    let entries: Vec<(String, crate::model::StorageSpec)> = c
        .spec
        .storage
        .iter()
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    for (name, st) in entries {
        let base = join("storage", &name);
        let at = |key: &str| join(&base, key);
        let kind = st.kind.name();
        c.references(&at("nodes"), &st.nodes, "nodes", "node");
        let distinct: BTreeSet<&String> = st.nodes.iter().collect();
        match st.kind {
            StorageKind::Drbd => {
                if !(2..=3).contains(&distinct.len()) {
                    c.error(
                        "spec::replicas",
                        &at("nodes"),
                        format!(
                            "DRBD storage `{name}` has {} replica node(s); DRBD needs 2 or 3",
                            distinct.len()
                        ),
                        "needs 2–3 distinct nodes",
                        "list 2 or 3 different nodes; with 2, quorate adds a diskless tie-breaker",
                    );
                }
                match &st.device {
                    None => {
                        c.error_at_key("spec::missing-key", &base, format!("DRBD storage `{name}` needs `device`, the backing block device"), "`device` missing", "add `device = \"/dev/disk/by-partlabel/NAME\"` (the same path on every replica node)");
                    }
                    Some(dev) if !dev.starts_with("/dev/") => {
                        c.error(
                            "spec::device",
                            &at("device"),
                            format!("device \"{dev}\" is not under /dev"),
                            "not a block device path",
                            "use a stable path like /dev/disk/by-id/… or /dev/vg0/NAME",
                        );
                    }
                    Some(_) => {}
                }
            }
            StorageKind::Gluster => {
                if distinct.len() < 2 {
                    c.error("spec::replicas", &at("nodes"), format!("GlusterFS storage `{name}` has {} replica node(s); it needs at least 2", distinct.len()), "needs 2 or more distinct nodes", "list 3 nodes for a replica-3 volume");
                } else if distinct.len() == 2 {
                    c.warning(
                        "spec::replicas",
                        &at("nodes"),
                        format!("GlusterFS storage `{name}` has 2 replicas, which can split-brain"),
                        "2 replicas",
                        "add a third node",
                    );
                }
                if let Some(brick) = &st.brick {
                    if !brick.starts_with('/') {
                        c.error(
                            "spec::path",
                            &at("brick"),
                            format!("brick \"{brick}\" is not an absolute path"),
                            "relative path",
                            "use e.g. \"/srv/bricks/NAME\"",
                        );
                    }
                }
                let volume = st.volume.clone().unwrap_or_else(|| name.clone());
                let ok = !volume.is_empty()
                    && volume
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    c.error(
                        "spec::name",
                        &at("volume"),
                        format!("volume name \"{volume}\" is not valid for GlusterFS"),
                        "letters, digits, `-`, `_` only",
                        format!("use \"{}\"", label_fix(&volume)),
                    );
                }
                if let Some(first) = volumes.insert(volume.clone(), name.clone()) {
                    c.error(
                        "spec::volume-clash",
                        &at("volume"),
                        format!(
                            "storage `{first}` and `{name}` both use GlusterFS volume \"{volume}\""
                        ),
                        "volume name used twice",
                        "give each storage its own `volume`",
                    );
                }
            }
            StorageKind::CephRbd | StorageKind::Cephfs => {
                if st.kind == StorageKind::CephRbd && st.size.is_none() {
                    c.error_at_key(
                        "spec::missing-key",
                        &base,
                        format!("ceph-rbd storage `{name}` needs `size`"),
                        "`size` missing",
                        "add `size = \"10GiB\"`",
                    );
                }
                if st.mount.is_none() {
                    c.error_at_key(
                        "spec::missing-key",
                        &base,
                        format!("{kind} storage `{name}` needs `mount`: where the service's node mounts it"),
                        "`mount` missing",
                        "add `mount = \"/var/lib/NAME\"`",
                    );
                }
                for (key, value) in [
                    ("ceph_config", st.ceph_config_path().to_owned()),
                    ("ceph_keyring", st.ceph_keyring_path()),
                ] {
                    if !value.starts_with('/') {
                        c.error(
                            "spec::path",
                            &at(key),
                            format!("`{key}` \"{value}\" is not an absolute path"),
                            "not absolute",
                            "give the absolute path on every node",
                        );
                    }
                }
                if let Some(problem) = secret_path_problem(&st.ceph_keyring_path())
                    .filter(|_| st.ceph_keyring_path().starts_with('/'))
                {
                    c.error("spec::ceph-keyring", &at("ceph_keyring"), format!("the Ceph keyring \"{}\" {problem}", st.ceph_keyring_path()), "unfit secret path", "keep the keyring in a root-only file outside the Nix store, e.g. \"/run/secrets/ceph.client.quorate.keyring\" (sops-nix, agenix)");
                }
                for (key, value) in [
                    ("pool", st.pool.clone()),
                    ("image", st.image.clone()),
                    ("ceph_client", st.ceph_client.clone()),
                ] {
                    if let Some(v) = value.filter(|v| {
                        v.is_empty()
                            || !v
                                .chars()
                                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
                    }) {
                        c.error(
                            "spec::ceph-name",
                            &at(key),
                            format!("`{key}` \"{v}\" is not a Ceph name"),
                            "letters, digits, `.`, `_`, `-` only",
                            "use a name like \"rbd\" or \"quorate\"",
                        );
                    }
                }
            }
        }

        if st.arbiter && st.kind == StorageKind::Gluster && distinct.len() != 3 {
            c.error(
                "spec::replicas",
                &at("arbiter"),
                format!(
                    "GlusterFS storage `{name}` has an arbiter but {} node(s); an arbiter volume has exactly 3 (2 data + 1 arbiter)",
                    distinct.len()
                ),
                "needs exactly 3 nodes",
                "list 3 nodes (the last holds the arbiter brick), or remove `arbiter`",
            );
        }
        for (key, owner, present) in [
            ("device", StorageKind::Drbd, st.device.is_some()),
            ("brick", StorageKind::Gluster, st.brick.is_some()),
            ("volume", StorageKind::Gluster, st.volume.is_some()),
            ("arbiter", StorageKind::Gluster, st.arbiter),
            ("pool", StorageKind::CephRbd, st.pool.is_some()),
            ("image", StorageKind::CephRbd, st.image.is_some()),
            ("path", StorageKind::Cephfs, st.path.is_some()),
        ] {
            if present && owner != st.kind {
                c.error(
                    "spec::wrong-kind",
                    &at(key),
                    format!(
                        "`{key}` is for kind = \"{}\", but storage `{name}` is \"{kind}\"",
                        owner.name()
                    ),
                    "not used by this kind",
                    format!("remove `{key}`"),
                );
            }
        }
        if let Some(fs) = &st.fs {
            if !matches!(st.kind, StorageKind::Drbd | StorageKind::CephRbd) {
                c.error(
                    "spec::wrong-kind",
                    &at("fs"),
                    format!(
                        "`fs` is for block storage (drbd, ceph-rbd), but `{name}` is \"{kind}\""
                    ),
                    "not a block device",
                    "remove `fs`",
                );
            } else if !FILESYSTEMS.contains(&fs.as_str()) {
                c.error(
                    "spec::fs",
                    &at("fs"),
                    format!("filesystem \"{fs}\" is not supported"),
                    "unknown filesystem",
                    format!("use one of {}", FILESYSTEMS.join(", ")),
                );
            }
        }
        if let Some(mount) = &st.mount {
            if !mount.starts_with('/') || mount == "/" {
                c.error(
                    "spec::path",
                    &at("mount"),
                    format!("mount point \"{mount}\" must be an absolute path below /"),
                    "not a mount point",
                    format!("use e.g. \"/srv/{name}\""),
                );
            } else if mount == "/nix" || mount.starts_with("/nix/") {
                c.error(
                    "spec::path",
                    &at("mount"),
                    format!("mount point \"{mount}\" is inside /nix, which NixOS owns"),
                    "inside the Nix store",
                    format!("use e.g. \"/srv/{name}\" or \"/var/lib/{name}\""),
                );
            }
            if let Some(first) = mounts.insert(mount.clone(), name.clone()) {
                c.error(
                    "spec::mount-clash",
                    &at("mount"),
                    format!("storage `{first}` and `{name}` both mount at \"{mount}\""),
                    "mount point used twice",
                    "give each storage its own mount point",
                );
            }
        }
        let users: Vec<&String> = c
            .spec
            .services
            .iter()
            .filter(|(_, s)| s.storage.contains(&name))
            .map(|(n, _)| n)
            .collect();
        if users.is_empty() {
            c.warning(
                "spec::unused",
                &base,
                format!("storage `{name}` is not used by any service"),
                "unused",
                "add it to a service's `storage`, or remove it",
            );
        } else if st.kind == StorageKind::Drbd && users.len() > 1 {
            let list: Vec<String> = users.iter().map(|u| format!("`{u}`")).collect();
            c.error("spec::shared-block", &base, format!("DRBD storage `{name}` is used by {}; a DRBD device is primary on one node, for one service", list.join(" and ")), "used by more than one service", "give each service its own DRBD resource, or merge the services");
        }
    }
}

/// Nodes where a service could ever run: all nodes minus `avoid`, or — when it uses
/// DRBD storage — only the replica nodes of every such storage, minus `avoid`.
/// Kept symbolic so 10,000 services on 1,000 nodes do not build 10 million sets.
enum Eligible<'a> {
    AllExcept(BTreeSet<&'a str>),
    Only(BTreeSet<&'a str>),
}

impl<'a> Eligible<'a> {
    fn of(spec: &'a Spec, svc: &'a ServiceSpec) -> Self {
        let avoid: BTreeSet<&str> = svc
            .avoid
            .iter()
            .map(String::as_str)
            .filter(|n| spec.nodes.contains_key(*n))
            .collect();
        let mut only: Option<BTreeSet<&str>> = None;
        for st in &svc.storage {
            if let Some(s) = spec.storage.get(st).filter(|s| s.kind == StorageKind::Drbd) {
                let replicas: BTreeSet<&str> = s
                    .nodes
                    .iter()
                    .map(String::as_str)
                    .filter(|n| spec.nodes.contains_key(*n))
                    .collect();
                only = Some(match only {
                    Some(prev) => prev.intersection(&replicas).copied().collect(),
                    None => replicas,
                });
            }
        }
        match only {
            Some(set) => Self::Only(set.difference(&avoid).copied().collect()),
            None => Self::AllExcept(avoid),
        }
    }

    fn len(&self, total: usize) -> usize {
        match self {
            Self::AllExcept(except) => total - except.len(),
            Self::Only(set) => set.len(),
        }
    }

    fn materialise(&self, spec: &'a Spec) -> BTreeSet<&'a str> {
        match self {
            Self::AllExcept(except) => spec
                .nodes
                .keys()
                .map(String::as_str)
                .filter(|n| !except.contains(n))
                .collect(),
            Self::Only(set) => set.clone(),
        }
    }
}

fn placement(c: &mut Checker<'_>) {
    let spec = c.spec;
    let total = spec.nodes.len();
    let mut eligible: BTreeMap<&str, Eligible<'_>> = BTreeMap::new();
    for (name, svc) in &spec.services {
        let base = join("services", name);
        let nodes = Eligible::of(spec, svc);
        if nodes.len(total) == 0 && total > 0 {
            let mut why = Vec::new();
            if !svc.avoid.is_empty() {
                why.push(format!("avoids {}", svc.avoid.join(", ")));
            }
            for st in &svc.storage {
                if let Some(s) = spec.storage.get(st).filter(|s| s.kind == StorageKind::Drbd) {
                    why.push(format!("DRBD `{st}` lives on {}", s.nodes.join(", ")));
                }
            }
            let key = if svc.storage.is_empty() {
                "avoid"
            } else {
                "storage"
            };
            c.error(
                "spec::unplaceable",
                &join(&base, key),
                format!("service `{name}` can run on no node: {}", why.join("; ")),
                "no node satisfies this",
                "use storage whose replicas share a node, or avoid fewer nodes",
            );
        }
        if let Eligible::Only(set) = &nodes {
            for (i, p) in svc.prefer.iter().enumerate() {
                if spec.nodes.contains_key(p) && !set.contains(p.as_str()) && !svc.avoid.contains(p)
                {
                    c.warning(
                        "spec::placement",
                        &index(&join(&base, "prefer"), i),
                        format!(
                            "service `{name}` prefers `{p}`, where its DRBD storage has no replica"
                        ),
                        "cannot run here",
                        "prefer one of the storage's replica nodes",
                    );
                }
            }
        }
        eligible.insert(name, nodes);
    }
    // Anti-affinity: a group of pairwise anti-affine services needs as many distinct nodes.
    let anti = |a: &str, b: &str| {
        spec.services
            .get(a)
            .is_some_and(|s| s.anti_affinity.iter().any(|x| x == b))
            || spec
                .services
                .get(b)
                .is_some_and(|s| s.anti_affinity.iter().any(|x| x == a))
    };
    let mut reported: BTreeSet<Vec<&str>> = BTreeSet::new();
    for (name, svc) in &spec.services {
        if svc.anti_affinity.is_empty() {
            continue;
        }
        let mut group: Vec<&str> = vec![name];
        for other in &svc.anti_affinity {
            if other != name
                && spec.services.contains_key(other)
                && group.iter().all(|g| anti(g, other))
            {
                group.push(other);
            }
        }
        group.sort_unstable();
        // Cheap bound first: one member alone may already have room for the group.
        if group
            .iter()
            .any(|g| eligible.get(g).is_some_and(|e| e.len(total) >= group.len()))
        {
            continue;
        }
        let room: BTreeSet<&str> = group
            .iter()
            .filter_map(|g| eligible.get(g))
            .flat_map(|e| e.materialise(spec))
            .collect();
        if group.len() > room.len() && reported.insert(group.clone()) {
            c.error(
                "spec::anti-affinity",
                &join(&base_of(name), "anti_affinity"),
                format!(
                "services {} must all run on different nodes, but only {} node(s) can host them",
                group.join(", "),
                room.len()
            ),
                "cannot be satisfied",
                "add nodes, or drop a service from the anti-affinity group",
            );
        }
    }
}

fn base_of(service: &str) -> String {
    join("services", service)
}

//! `quorate` — one binary for the whole tool. This file is thin glue: argument
//! parsing and dispatch; each command lives in its own module.

mod ceph_bootstrap;
mod cluster_commands;
mod deploy;
mod exit;
mod pki_commands;
mod recover;
mod render;
mod sandbox;
mod simulate;
mod spec_commands;
mod wg_commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use quorate_api::ControlRequest;

const ABOUT: &str = "One declarative spec → a cluster that keeps its services running.";

const LONG_ABOUT: &str = "\
quorate turns a versioned cluster description (quorate.toml, or cluster.json from the NixOS \
module) into a quorum-backed cluster that runs services on exactly one healthy node and moves \
them when a node dies.

Start with a spec and check it:
  quorate check examples/minimal/quorate.toml
  quorate plan  examples/minimal/quorate.toml     # what would change, against quorate.lock
  quorate lock  examples/minimal/quorate.toml     # allocate stable numbers into quorate.lock

Run a cluster (on each node, with its own certificate):
  quorate ca init ./ca && quorate ca issue n1 --ca ./ca --out /var/lib/quorate/tls
  quorate agent --spec quorate.toml --node n1 --data-dir /var/lib/quorate
  quorate status                                   # through the local agent
  quorate apply quorate.toml                       # commit a new spec through Raft

Exit codes: 0 ok · 1 invalid input or refused · 2 usage error · 3 destructive change refused \
· 4 no quorum / cluster unreachable.";

#[derive(Debug, Parser)]
#[command(name = "quorate", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the spec and its lock are.
#[derive(Debug, Args)]
pub struct SpecPaths {
    /// The spec: TOML, or JSON when the name ends in .json.
    #[arg(
        value_name = "SPEC",
        default_value = "quorate.toml",
        env = "QUORATE_SPEC"
    )]
    pub spec: PathBuf,
    /// The lock file [default: quorate.lock beside the spec].
    #[arg(long, value_name = "PATH", env = "QUORATE_LOCK")]
    pub lock: Option<PathBuf>,
}

impl SpecPaths {
    /// The lock path: `--lock`, else `quorate.lock` in the spec's directory.
    #[must_use]
    pub fn lock_path(&self) -> PathBuf {
        self.lock.clone().unwrap_or_else(|| {
            self.spec
                .parent()
                .map_or_else(|| PathBuf::from("quorate.lock"), |d| d.join("quorate.lock"))
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a spec and report every problem at once, with file, line, column and a fix.
    ///
    /// Errors make it exit 1; warnings (settings not active yet, an even number of voters, …)
    /// are shown but do not fail it.
    Check {
        #[command(flatten)]
        paths: SpecPaths,
        /// Print diagnostics as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Allocate stable numbers (Raft ids, DRBD minors/ports/node-ids, overlay IPs,
    /// WireGuard ports) into quorate.lock.
    ///
    /// Existing numbers never change; removed entries become tombstones whose numbers are
    /// never reused; a rename keeps its numbers when the spec says `renamed_from`. The file
    /// is written atomically. Commit it next to the spec, like flake.lock.
    Lock {
        #[command(flatten)]
        paths: SpecPaths,
        /// Do not write: exit 1 if the lock is missing or out of date (for CI and Nix builds).
        #[arg(long)]
        check: bool,
        /// Allow destructive changes (removing storage or a data replica, shrinking, losing the voter majority).
        #[arg(long)]
        allow_destructive: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show what applying the spec would change against the lock: added, renamed, changed
    /// and removed nodes, services and storage, with destructive changes marked.
    ///
    /// Exits 3 when a change is destructive, unless --allow-destructive.
    Plan {
        #[command(flatten)]
        paths: SpecPaths,
        /// A previous version of the spec, for field-level changes
        /// (e.g. `git show HEAD:quorate.toml > /tmp/old.toml`).
        #[arg(long, value_name = "OLD_SPEC")]
        against: Option<PathBuf>,
        /// Exit 0 even when the plan is destructive.
        #[arg(long)]
        allow_destructive: bool,
        /// Print the plan as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the spec (for editors and the NixOS module).
    Schema,
    /// The files one node needs, generated from spec + lock: DRBD resources
    /// (etc/drbd.d/<name>.res) and systemd drop-ins for the units quorate manages
    /// (etc/systemd/system/<unit>.d/50-quorate.conf).
    ///
    /// Without --out it lists them; with --out DIR it writes them under DIR mirroring
    /// their target paths (DIR=/ installs them). Same inputs, same bytes. Refuses a
    /// missing or out-of-date lock: every number comes from the lock.
    Render {
        #[command(flatten)]
        paths: SpecPaths,
        /// The node to render for.
        #[arg(long, value_name = "NAME", env = "QUORATE_NODE")]
        node: String,
        /// Write the files under this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print the file list as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// What if nodes fail or drain? Runs the scheduler the leader runs: offline from the
    /// spec (every node up, nothing placed yet), or with --live from the running
    /// cluster's state (its applied spec, node states, placements, pins and recent
    /// failures). Prints where every service would run, which would have nowhere to
    /// go, and the order of stops and starts. Exits 1 when a service would be
    /// unplaceable.
    Simulate {
        /// The spec: TOML, or JSON when the name ends in .json (ignored with --live).
        #[arg(
            value_name = "SPEC",
            default_value = "quorate.toml",
            env = "QUORATE_SPEC"
        )]
        spec: PathBuf,
        /// A node that fails (repeatable).
        #[arg(long, value_name = "NODE")]
        fail: Vec<String>,
        /// A node that is drained (repeatable).
        #[arg(long, value_name = "NODE")]
        drain: Vec<String>,
        /// Start from the live cluster, asked through the local agent.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run this node's agent: join the cluster of the spec's voters, serve peers over
    /// mutual TLS and the local CLI over `<data-dir>/control.sock`.
    ///
    /// Every flag can also come from the environment (for systemd units).
    Agent(AgentArgs),
    /// Show the cluster: leader, term, quorum, spec version, each node's state and last
    /// contact. Exit 4 without quorum or when the local agent is unreachable.
    Status {
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Answer from this node's own view (applied spec, term) without asking the leader.
        #[arg(long)]
        local: bool,
        /// Print the report as JSON on stdout (with --watch: one report per line).
        #[arg(long)]
        json: bool,
        /// Redraw every second until Ctrl-C, like `crm_mon`.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Submit a spec and its lock to the cluster; returns once a majority has committed it.
    /// The same content is a no-op; destructive changes exit 3 unless --allow-destructive;
    /// no quorum exits 4 and changes nothing.
    Apply {
        #[command(flatten)]
        paths: SpecPaths,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Accept destructive changes.
        #[arg(long)]
        allow_destructive: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The per-node fence process (started by the agent; reads lease deadlines and
    /// workload process groups on stdin and kills the groups when a deadline passes).
    /// Internal: hidden from --help, where it read like "fence a node".
    #[command(hide = true)]
    Fence {
        /// The node it fences.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// A watchdog device to pet while nothing is wrong (e.g. /dev/watchdog).
        #[arg(long, value_name = "DEVICE")]
        watchdog: Option<PathBuf>,
    },
    /// A witness workload for the sandbox and tests (journal records, HTTP answer).
    #[command(hide = true)]
    Demo {
        /// Answer HTTP on QUORATE_NODE_ADDRESS:PORT with "<service> on <node>".
        #[arg(long)]
        port: Option<u16>,
        /// Listen on this address instead of QUORATE_NODE_ADDRESS (e.g. 0.0.0.0, to
        /// answer on a floating address too).
        #[arg(long, value_name = "ADDR", requires = "port")]
        bind: Option<String>,
        /// Adversarial: ignore SIGTERM and SIGINT (only SIGKILL ends it).
        #[arg(long)]
        ignore_term: bool,
        /// Adversarial: after SIGTERM, keep running this long before stopping ("3s").
        #[arg(long, value_name = "DURATION")]
        stop_delay: Option<quorate_spec::SpecDuration>,
        /// Adversarial: fork a `setsid` child that keeps writing this workload's
        /// `alive` records until it is killed (escapes its process group).
        #[arg(long)]
        escape: bool,
        /// Write journal records under this service name instead of QUORATE_SERVICE
        /// (a renamed service is still the same workload for the checker).
        #[arg(long, value_name = "NAME")]
        witness_as: Option<String>,
        /// Internal: the escaped child of `--escape`, writing as this pid.
        #[arg(long, value_name = "PID", hide = true)]
        escaped_from: Option<i32>,
    },
    /// A local cluster to watch and break: nodes n1..nN on 127.0.0.1..N, each a real
    /// agent with its own data dir, fence and certificate, running demo services.
    ///
    /// Without an action it starts the sandbox and shows a live view until Ctrl-C (or
    /// returns once everything runs, with --detach). Then break it from another
    /// terminal: kill, pause, resume, restart, partition, heal; `down` stops it all.
    Sandbox(SandboxArgs),
    /// Pin a service to a node — an explicit, visible placement that `status` shows —
    /// or remove the pin with --clear. The service stops on its node, then starts on
    /// the new one.
    Move {
        /// The service.
        service: String,
        /// The node to move it to (omit with --clear).
        #[arg(value_name = "NODE", required_unless_present = "clear")]
        to: Option<String>,
        /// Remove the service's pin; it stays where it is and is placed normally again.
        #[arg(long, conflicts_with = "to")]
        clear: bool,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restart a service where it runs (stop, then start on the same node). Not
    /// counted against its restart budget.
    Restart {
        /// The service.
        service: String,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move every service off a node (for maintenance or removal); waits, showing
    /// progress, until nothing runs there.
    Drain {
        /// The node to drain.
        #[arg(value_name = "NODE")]
        target: String,
        /// Return once the drain is committed, without waiting.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a drained node run services again.
    Undrain {
        /// The node.
        #[arg(value_name = "NODE")]
        target: String,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Maintenance mode for a node (it keeps what it runs and gets nothing new), or with
    /// --cluster for the whole cluster (everything keeps running where it is; nothing
    /// moves or starts: for switch or power work).
    Maintenance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// The node.
        #[arg(
            value_name = "NODE",
            required_unless_present = "cluster",
            conflicts_with = "cluster"
        )]
        target: Option<String>,
        /// The whole cluster instead of one node.
        #[arg(long)]
        cluster: bool,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a service everywhere and keep it stopped, without removing it from the spec.
    Disable {
        /// The service.
        service: String,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a disabled service run again.
    Enable {
        /// The service.
        service: String,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep a service off a node at runtime (it moves away if it runs there).
    Ban {
        /// The service.
        service: String,
        /// The node.
        #[arg(value_name = "NODE")]
        target: String,
        /// For how long ("30m", "2h"); without it, until `unban`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<quorate_spec::SpecDuration>,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban.
    Unban {
        /// The service.
        service: String,
        /// The node.
        #[arg(value_name = "NODE")]
        target: String,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Save the cluster's replicated state (spec, lock, node states, pins, disabled
    /// services, bans, events) to FILE (0600), consistent as of one commit.
    Backup {
        /// Where to write it.
        file: PathBuf,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seed a cluster from a backup: its pins, node states, disabled services, bans and
    /// history. The cluster must run the backup's spec and lock (apply them first).
    Restore {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Losing the majority for good (dead disks, not a power cut): make this node a
    /// cluster of one voter with the last state it had committed. Stop its agent first.
    /// Refuses while any other voter answers and asks for the node's name as
    /// confirmation. Afterwards start the agent here; each left-out node rejoins by
    /// itself once it comes back with an empty data dir (keep its tls/). Changes the
    /// lost majority committed after this node last heard of them are lost: the README
    /// runbook "Losing the majority" explains the risks.
    Recover {
        /// Required: the only recovery there is, named so that nobody runs it by accident.
        #[arg(long, required = true)]
        force_single: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        files: NodeFiles,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a service's recorded failures, so it may return to the nodes where it
    /// spent its restart budget (otherwise only its restart window clears them).
    Cleanup {
        /// The service.
        service: String,
        /// Only its failures on this node.
        #[arg(long = "on", value_name = "NODE")]
        on: Option<String>,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's decision log: what moved where and why.
    Events {
        /// How many of the most recent events.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print them as JSON (with --follow: one event per line).
        #[arg(long)]
        json: bool,
        /// Keep printing new events as they happen, until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Shell completions for bash, zsh or fish, on stdout
    /// (e.g. `quorate completions bash > /etc/bash_completion.d/quorate`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The man page (roff), on stdout: `quorate man | man -l -`.
    Man,
    /// Why a service runs where it runs, and why not on each other node.
    Explain {
        /// The service.
        service: String,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The cluster certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// This node's certificate.
    #[command(subcommand)]
    Cert(CertCommand),
    /// This node's WireGuard key (network.transport = "wireguard").
    #[command(subcommand)]
    Wg(WgCommand),
    /// The WireGuard mesh interface (`quorate0`) on this node.
    #[command(subcommand)]
    Net(NetCommand),
    /// Tokens for the HTTP API (`network.api_port`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The Ceph cluster declared in the spec (`[ceph]`).
    #[command(subcommand)]
    Ceph(CephCommand),
    /// Roll new system generations through the cluster one node at a time (drain,
    /// switch, wait until healthy, undrain; followers first, the leader last).
    ///
    /// Each node's closure is built from --flake (one `nix build` of every
    /// `nixosConfigurations.NODE.config.system.build.toplevel`) or given with
    /// --store-path. First every closure is copied (`nix copy`, --parallel-copy at once);
    /// nothing switches until all copies are done. Then, per node: drain (its services
    /// move away, the drain is acknowledged) → `nix-env -p PROFILE --set PATH` and
    /// `PATH/bin/switch-to-configuration ACTION` → wait until its agent is back →
    /// --check → undrain → wait until every service that ran runs again. A node that
    /// fails any of it is switched back to the generation it had and undrained, and the
    /// rollout stops (exit 1). Each phase is recorded in the state file first, so an
    /// interrupted deploy is continued with --resume or reverted with --abort.
    ///
    /// Nodes are reached with --exec (a command prefix; the scripts go to `sh -s` on
    /// its stdin) and --copy-to (a `nix copy --to` store); `{node}` and `{address}` are
    /// replaced in both. `--dry-run` prints the plan: the order, which services each
    /// drain moves where (the leader's scheduler), each node's closure size. Anything
    /// wrong — a target not in the spec or down or unreachable, a store path that is
    /// not valid, a drain that would leave a service nowhere to run, no quorum — is
    /// refused before anything is copied or switched.
    ///
    /// Example: `quorate deploy --flake . --check 'systemctl is-system-running --wait'`
    Deploy {
        /// A node to deploy (repeatable) [default: every node].
        #[arg(long, value_name = "NODE")]
        on: Vec<String>,
        /// Build each node's closure from this flake
        /// (`REF#nixosConfigurations.NODE.config.system.build.toplevel`, e.g. `.` or
        /// `github:me/infra`).
        #[arg(long, value_name = "REF")]
        flake: Option<String>,
        /// The system closure to switch to: `PATH` for every node, or `NODE=PATH`
        /// (repeatable; overrides what --flake built for that node).
        #[arg(long, value_name = "[NODE=]PATH")]
        store_path: Vec<String>,
        /// The Nix store holding the paths (e.g. `local?root=/tmp/build`) [default: the
        /// local store].
        #[arg(long, value_name = "STORE")]
        from_store: Option<String>,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        /// The command prefix that runs a command on a node ({node}, {address}).
        #[arg(long, value_name = "TEMPLATE", default_value = "ssh root@{address}")]
        exec: String,
        /// Where `nix copy --to` sends a node's closure ({node}, {address}).
        #[arg(long, value_name = "STORE", default_value = "ssh://root@{address}")]
        copy_to: String,
        /// `nix copy --no-check-sigs`: accept unsigned paths (trusted builders only).
        #[arg(long)]
        no_check_sigs: bool,
        /// The nodes' system profile.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/nix/var/nix/profiles/system"
        )]
        profile: String,
        /// `switch-to-configuration` action: `switch`, `test` (not made the boot
        /// default) or `boot` (only the next boot).
        #[arg(long, value_name = "ACTION", default_value = "switch", value_parser = ["switch", "test", "boot"])]
        action: String,
        /// A health check run on each node after its switch (a shell command; exit 0 =
        /// healthy), e.g. `systemctl is-system-running --wait`.
        #[arg(long, value_name = "COMMAND")]
        check: Option<String>,
        /// Seconds a node may take for each phase (drain, rejoin, services back).
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
        /// Switch a node that fails back to its previous generation (false: leave it
        /// drained on the new one for inspection).
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
        auto_rollback: bool,
        /// How many nodes receive their closure at once.
        #[arg(long, value_name = "N", default_value_t = 4)]
        parallel_copy: usize,
        /// Continue the rollout recorded in the state file (after an interruption or a
        /// failure left with --auto-rollback false).
        #[arg(long, conflicts_with_all = ["abort", "dry_run"])]
        resume: bool,
        /// Revert the node the recorded rollout was at (back to its generation,
        /// undrained) and end the rollout; nodes already done stay.
        #[arg(long, conflicts_with = "dry_run")]
        abort: bool,
        /// The rollout's state file [default: <data-dir>/deploy.json].
        #[arg(long, value_name = "FILE")]
        state: Option<std::path::PathBuf>,
        #[command(flatten)]
        agent: cluster_commands::AgentSocket,
        /// The plan as JSON, or (rollout) one JSON event per line on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// On the node: make a token for the HTTP API and print it (once: the node keeps
    /// only its SHA-256, in <DIR>/api-tokens, 0600). Send it as `Authorization: Bearer
    /// TOKEN`. A new token for the same name replaces the old one.
    Create {
        /// `viewer` (reads) or `operator` (reads and operates).
        #[arg(long, value_name = "ROLE")]
        role: quorate_pki::Role,
        /// Who holds it (recorded in events as `api:NAME@NODE`).
        #[arg(long, value_name = "NAME", default_value = "browser")]
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
enum CephCommand {
    /// The one-time steps that make the declared Ceph run: the keys and monitor map
    /// (on the first monitor), every monitor's store, manager and metadata server
    /// keys, OSD preparation (the OSD ids from the lock), pools, file systems and the
    /// `client.quorate` keyring on every node. Each step looks before it acts: a
    /// second run changes nothing, a run after a failure does only what is missing.
    /// Every node's /etc/ceph/ceph.conf must be the one `quorate render` writes (the
    /// NixOS module installs it).
    ///
    /// Example: `quorate ceph bootstrap quorate.toml`
    Bootstrap {
        #[command(flatten)]
        paths: SpecPaths,
        /// Command prefix that runs a command on a node; `{node}` and `{address}`
        /// are replaced. Scripts go to its stdin (`… sh -s`).
        #[arg(long, value_name = "PREFIX", default_value = "ssh root@{address}")]
        exec: String,
        /// Shell command (run on the node through --exec) that starts daemon
        /// `{kind}` (mon, mgr, mds, osd) with id `{id}`; must succeed when it already
        /// runs. The default starts the unit NixOS's services.ceph defines (after a
        /// failed start loop while the daemon had no data yet).
        #[arg(
            long,
            value_name = "COMMAND",
            default_value = "systemctl reset-failed ceph-{kind}-{id} 2>/dev/null || true; systemctl start ceph-{kind}-{id}"
        )]
        start: String,
        /// Seconds to wait for the monitors' quorum and for the OSDs to come up.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
        /// One JSON object per step on stdout, then a summary object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WgCommand {
    /// On the node: create its WireGuard private key in the data dir (0600; it never
    /// leaves the node) and print the public key for `nodes.<n>.wireguard.public_key`.
    /// Keeps an existing key (running it twice changes nothing) unless --force.
    Keygen {
        #[command(flatten)]
        dir: DataDir,
        /// Replace an existing key (the spec must then get the new public key).
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a key rotation: write the next private key (<DIR>/wireguard.key.next) and
    /// print its public key. Put that key into the spec and `quorate apply`: the agents
    /// switch together a moment after the change is applied (if this node missed it,
    /// it tries the next key once it hears from no leader). Running it twice prints the
    /// same pending key.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the public key of the data dir's private key.
    Pubkey {
        #[command(flatten)]
        dir: DataDir,
    },
}

/// The node's state directory, where its WireGuard key lives.
#[derive(Debug, Args)]
struct DataDir {
    /// State directory (the key is <DIR>/wireguard.key).
    #[arg(
        long,
        value_name = "DIR",
        env = "QUORATE_DATA_DIR",
        default_value = "/var/lib/quorate"
    )]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum NetCommand {
    /// Bring the mesh interface up from spec + lock + the data dir's key: kernel
    /// WireGuard when present, wireguard-go otherwise; peers, overlay address and MTU
    /// (the underlay's − 80 unless network.mtu). Idempotent: rerun it after a spec
    /// change to sync the peers (unchanged peers keep their sessions). The NixOS module
    /// uses systemd-networkd instead (`quorate render` writes its files).
    Up {
        #[command(flatten)]
        files: NodeFiles,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the mesh interface.
    Down,
    /// Each peer's latest handshake and traffic (`wg show quorate0 dump`, read for you).
    Show {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `quorate agent` flags.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    files: NodeFiles,
    /// Control socket [default: <data-dir>/control.sock].
    #[arg(long, value_name = "PATH", env = "QUORATE_SOCKET")]
    socket: Option<PathBuf>,
    /// Hardware watchdog the fence process pets (e.g. /dev/watchdog): if fenced
    /// workloads cannot be confirmed dead, it stops petting and the node is reset.
    #[arg(long, value_name = "DEVICE", env = "QUORATE_WATCHDOG")]
    watchdog: Option<PathBuf>,
    /// What to log: a level (error, warn, info, debug, trace) or per-module directives
    /// (`quorate_agent=debug,info`). Under systemd the log goes to journald with
    /// priorities (`journalctl -u quorate -p warning`); elsewhere to stderr.
    #[arg(
        long,
        value_name = "FILTER",
        env = "QUORATE_LOG",
        default_value = "info"
    )]
    log: String,
    /// Sandbox and tests only: let the control socket take the `partition` fault.
    #[arg(long, env = "QUORATE_ALLOW_FAULT_INJECTION", hide = true)]
    allow_fault_injection: bool,
    /// A group (name or number) whose members may run `status`, `events` and `explain`
    /// through the control socket (mode 0660); without it, root and the agent's user only.
    #[arg(long, value_name = "GROUP", env = "QUORATE_READ_ONLY_GROUP")]
    read_only_group: Option<String>,
}

/// A node's files: spec, lock, name, data dir and TLS material.
#[derive(Debug, Args)]
pub struct NodeFiles {
    /// The spec file.
    #[arg(
        long,
        value_name = "FILE",
        env = "QUORATE_SPEC",
        default_value = "quorate.toml"
    )]
    spec: PathBuf,
    /// This node's name in the spec.
    #[arg(long, value_name = "NAME", env = "QUORATE_NODE")]
    node: String,
    /// State directory (Raft log, identity, TLS material under tls/).
    #[arg(
        long,
        value_name = "DIR",
        env = "QUORATE_DATA_DIR",
        default_value = "/var/lib/quorate"
    )]
    data_dir: PathBuf,
    /// The lock file [default: quorate.lock beside the spec].
    #[arg(long, value_name = "PATH", env = "QUORATE_LOCK")]
    lock: Option<PathBuf>,
    /// Cluster CA certificate [default: <data-dir>/tls/ca.pem].
    #[arg(long, value_name = "PATH", env = "QUORATE_CA")]
    ca: Option<PathBuf>,
    /// This node's certificate [default: <data-dir>/tls/node.pem].
    #[arg(long, value_name = "PATH", env = "QUORATE_CERT")]
    cert: Option<PathBuf>,
    /// This node's private key [default: <data-dir>/tls/node.key].
    #[arg(long, value_name = "PATH", env = "QUORATE_KEY")]
    key: Option<PathBuf>,
}

impl NodeFiles {
    /// The agent's configuration for these files, with the other settings at their
    /// defaults.
    fn into_config(self) -> quorate_agent::AgentConfig {
        let tls = quorate_pki::TlsFiles::in_dir(&self.data_dir.join("tls"));
        let lock = self.lock.unwrap_or_else(|| {
            self.spec
                .parent()
                .map_or_else(|| PathBuf::from("quorate.lock"), |d| d.join("quorate.lock"))
        });
        quorate_agent::AgentConfig {
            socket: self.data_dir.join("control.sock"),
            tls: quorate_pki::TlsFiles {
                ca: self.ca.unwrap_or(tls.ca),
                cert: self.cert.unwrap_or(tls.cert),
                key: self.key.unwrap_or(tls.key),
            },
            spec: self.spec,
            lock,
            node: self.node,
            data_dir: self.data_dir,
            watchdog: None,
            allow_fault_injection: false,
            read_only_group: None,
        }
    }
}

impl AgentArgs {
    fn into_config(self) -> quorate_agent::AgentConfig {
        let files = self.files.into_config();
        quorate_agent::AgentConfig {
            socket: self.socket.unwrap_or(files.socket),
            watchdog: self.watchdog,
            allow_fault_injection: self.allow_fault_injection,
            read_only_group: self.read_only_group,
            ..files
        }
    }
}

/// `quorate sandbox` arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SandboxArgs {
    #[command(subcommand)]
    action: Option<SandboxAction>,
    /// Number of nodes (3 to 9).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the sandbox keeps its state.
    #[arg(
        long,
        value_name = "DIR",
        env = "QUORATE_SANDBOX",
        default_value = ".quorate-sandbox",
        global = true
    )]
    dir: PathBuf,
    /// Return once the cluster is up and every service runs (for scripts).
    #[arg(long)]
    detach: bool,
}

#[derive(Debug, Subcommand)]
enum SandboxAction {
    /// Power loss: kill -9 the node's agent, fence and services.
    Kill {
        /// Node name (n1, n2, …).
        node: String,
    },
    /// SIGSTOP the node's agent (a hung agent); its fence acts when the lease runs out.
    Pause {
        /// Node name.
        node: String,
    },
    /// SIGCONT a paused agent.
    Resume {
        /// Node name.
        node: String,
    },
    /// Start the node's agent again (after kill), or kill -9 and start it.
    Restart {
        /// Node name.
        node: String,
    },
    /// Cut all of the node's peer traffic.
    Partition {
        /// Node name.
        node: String,
    },
    /// Restore the node's peer traffic.
    Heal {
        /// Node name.
        node: String,
    },
    /// Stop every node, fence and service of the sandbox.
    Down,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a cluster CA in DIR: ca.pem and ca.key (0600). Run it on your admin
    /// machine, not on a node, and keep the key offline.
    Init {
        /// Directory for the CA.
        dir: PathBuf,
        /// Cluster name, written into the CA's name.
        #[arg(long, default_value = "quorate")]
        cluster: String,
        /// How long the CA is valid, in days.
        #[arg(long, value_name = "DAYS", default_value_t = 3650)]
        days: u32,
    },
    /// Sign a node's request (from `quorate cert request`); the certificate names that
    /// node, and a request for any other node is refused.
    Sign {
        /// The signing request.
        csr: PathBuf,
        /// The node the request must be for.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Where to write the certificate [default: print it].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// How long the certificate is valid, in days (`status` warns 30 days before).
        #[arg(long, value_name = "DAYS", default_value_t = 365)]
        days: u32,
    },
    /// Create a node's key and certificate in one step, for delivery by secret tooling
    /// (sops-nix, agenix).
    Issue {
        /// The node's name (with --role: the person's or tool's name).
        node: String,
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Output directory (node.pem, node.key, ca.pem; with --role client.pem,
        /// client.key, ca.pem).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long the certificate is valid, in days (`status` warns 30 days before).
        #[arg(long, value_name = "DAYS", default_value_t = 365)]
        days: u32,
        /// A client certificate for the HTTP API instead of a node's: `viewer` reads,
        /// `operator` also operates. It names no node, so nodes never accept it as one.
        #[arg(long, value_name = "ROLE")]
        role: Option<quorate_pki::Role>,
    },
    /// Start a rolling CA change: create the new CA (if NEW has none) and the bundle
    /// of old + new CA that every node trusts during the change; prints the steps.
    Rotate {
        /// The current CA directory.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The new CA directory.
        #[arg(long, value_name = "DIR")]
        new: PathBuf,
        /// Cluster name, written into the new CA's name.
        #[arg(long, default_value = "quorate")]
        cluster: String,
        /// How long the new CA is valid, in days.
        #[arg(long, value_name = "DAYS", default_value_t = 3650)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// On the node: create its private key (0600, never leaves the node) and a signing request.
    Request {
        /// The node's name.
        node: String,
        /// The node's TLS directory.
        #[arg(
            long,
            value_name = "DIR",
            env = "QUORATE_TLS_DIR",
            default_value = "/var/lib/quorate/tls"
        )]
        out: PathBuf,
    },
}

/// `quorate status | head` closes the pipe early: printing then fails with EPIPE, which
/// `println!` turns into a panic. Like other Unix tools, end quietly instead (exit 141,
/// as if killed by SIGPIPE); any other panic is reported as usual.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let exit = match cli.command {
        Command::Check { paths, json } => spec_commands::check(&paths, json),
        Command::Lock {
            paths,
            check,
            allow_destructive,
            json,
        } => spec_commands::lock(&paths, check, allow_destructive, json),
        Command::Plan {
            paths,
            against,
            allow_destructive,
            json,
        } => spec_commands::plan(&paths, against.as_deref(), allow_destructive, json),
        Command::Schema => spec_commands::schema(),
        Command::Render {
            paths,
            node,
            out,
            json,
        } => spec_commands::render_node(&paths, &node, out.as_deref(), json),
        Command::Simulate {
            spec,
            fail,
            drain,
            live,
            agent,
            json,
        } => simulate::run(&spec, live.then_some(&agent), &fail, &drain, json),
        Command::Agent(args) => {
            let log = args.log.clone();
            cluster_commands::agent(args.into_config(), &log)
        }
        Command::Status {
            agent,
            local,
            json,
            watch,
        } => {
            if watch {
                cluster_commands::status_watch(&agent, local, json)
            } else {
                cluster_commands::status(&agent, local, json)
            }
        }
        Command::Apply {
            paths,
            agent,
            allow_destructive,
            json,
        } => cluster_commands::apply(&paths, &agent, allow_destructive, json),
        Command::Move {
            service,
            to,
            clear,
            agent,
            json,
        } => cluster_commands::move_service(&agent, &service, if clear { None } else { to }, json),
        Command::Drain {
            target,
            no_wait,
            agent,
            json,
        } => cluster_commands::set_admin(&agent, &target, "draining", !no_wait, json),
        Command::Undrain {
            target,
            agent,
            json,
        } => cluster_commands::set_admin(&agent, &target, "active", false, json),
        Command::Maintenance {
            mode,
            target,
            cluster,
            agent,
            json,
        } => match (cluster, target) {
            (true, _) => cluster_commands::request(
                &agent,
                &ControlRequest::ClusterMaintenance { on: mode == "on" },
                json,
            ),
            (false, Some(target)) => cluster_commands::set_admin(
                &agent,
                &target,
                if mode == "on" {
                    "maintenance"
                } else {
                    "active"
                },
                false,
                json,
            ),
            (false, None) => exit::Exit::Invalid,
        },
        Command::Disable {
            service,
            agent,
            json,
        } => cluster_commands::request(
            &agent,
            &ControlRequest::SetDisabled {
                service,
                disabled: true,
            },
            json,
        ),
        Command::Enable {
            service,
            agent,
            json,
        } => cluster_commands::request(
            &agent,
            &ControlRequest::SetDisabled {
                service,
                disabled: false,
            },
            json,
        ),
        Command::Ban {
            service,
            target,
            duration,
            agent,
            json,
        } => cluster_commands::request(
            &agent,
            &ControlRequest::Ban {
                service,
                node: target,
                for_ms: duration.map(quorate_spec::SpecDuration::as_millis),
            },
            json,
        ),
        Command::Unban {
            service,
            target,
            agent,
            json,
        } => cluster_commands::request(
            &agent,
            &ControlRequest::Unban {
                service,
                node: target,
            },
            json,
        ),
        Command::Backup { file, agent, json } => cluster_commands::backup(&agent, &file, json),
        Command::Restore { file, agent, json } => cluster_commands::restore(&agent, &file, json),
        Command::Recover {
            force_single: _,
            yes,
            files,
            json,
        } => recover::force_single(&files.into_config(), yes, json),
        Command::Cleanup {
            service,
            on,
            agent,
            json,
        } => {
            cluster_commands::request(&agent, &ControlRequest::Cleanup { service, node: on }, json)
        }
        Command::Events {
            limit,
            agent,
            json,
            follow,
        } => cluster_commands::events(&agent, limit, json, follow),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "quorate",
                &mut std::io::stdout(),
            );
            exit::Exit::Ok
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => exit::Exit::Ok,
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::Exit::Invalid
                }
            }
        }
        Command::Restart {
            service,
            agent,
            json,
        } => cluster_commands::restart(&agent, &service, json),
        Command::Explain {
            service,
            agent,
            json,
        } => cluster_commands::explain(&agent, &service, json),
        Command::Sandbox(args) => {
            let sandbox = sandbox::Sandbox::new(&args.dir);
            match args.action {
                None => sandbox.up(args.nodes, args.detach),
                Some(SandboxAction::Down) => sandbox.down(),
                Some(SandboxAction::Kill { node }) => sandbox.fault("kill", &node),
                Some(SandboxAction::Pause { node }) => sandbox.fault("pause", &node),
                Some(SandboxAction::Resume { node }) => sandbox.fault("resume", &node),
                Some(SandboxAction::Restart { node }) => sandbox.fault("restart", &node),
                Some(SandboxAction::Partition { node }) => sandbox.fault("partition", &node),
                Some(SandboxAction::Heal { node }) => sandbox.fault("heal", &node),
            }
        }
        Command::Fence { node, watchdog } => {
            if quorate_fence::run(&node, watchdog.as_deref()) == 0 {
                exit::Exit::Ok
            } else {
                exit::Exit::Invalid
            }
        }
        Command::Demo {
            port,
            bind,
            ignore_term,
            stop_delay,
            escape,
            witness_as,
            escaped_from,
        } => cluster_commands::demo(&cluster_commands::DemoOptions {
            port,
            bind,
            ignore_term,
            stop_delay: stop_delay.map(quorate_spec::SpecDuration::get),
            escape,
            witness_as,
            escaped_from,
        }),
        Command::Ca(CaCommand::Init { dir, cluster, days }) => {
            pki_commands::ca_init(&dir, &cluster, days)
        }
        Command::Ca(CaCommand::Sign {
            csr,
            node,
            ca,
            out,
            days,
        }) => pki_commands::ca_sign(&ca, &csr, &node, out.as_deref(), days),
        Command::Ca(CaCommand::Issue {
            node,
            ca,
            out,
            days,
            role: None,
        }) => pki_commands::ca_issue(&ca, &node, &out, days),
        Command::Ca(CaCommand::Issue {
            node,
            ca,
            out,
            days,
            role: Some(role),
        }) => pki_commands::ca_issue_client(&ca, &node, role, &out, days),
        Command::Token(TokenCommand::Create { role, name, dir }) => {
            pki_commands::token_create(&dir.data_dir, &name, role)
        }
        Command::Ca(CaCommand::Rotate {
            ca,
            new,
            cluster,
            days,
        }) => pki_commands::ca_rotate(&ca, &new, &cluster, days),
        Command::Cert(CertCommand::Request { node, out }) => {
            pki_commands::cert_request(&node, &out)
        }
        Command::Deploy {
            on,
            flake,
            store_path,
            from_store,
            dry_run,
            exec,
            copy_to,
            no_check_sigs,
            profile,
            action,
            check,
            timeout,
            auto_rollback,
            parallel_copy,
            resume,
            abort,
            state,
            agent,
            json,
        } => deploy::run(
            &agent,
            &deploy::Request {
                on: &on,
                store_paths: &store_path,
                from_store: from_store.as_deref(),
                flake: flake.as_deref(),
                dry_run,
                json,
                remote: deploy::Remote {
                    exec,
                    copy_to,
                    from_store: from_store.clone(),
                    no_check_sigs,
                    profile,
                },
                action: &action,
                check: check.as_deref(),
                timeout: std::time::Duration::from_secs(timeout),
                auto_rollback,
                parallel_copy,
                resume,
                abort,
                state_file: state,
            },
        ),
        Command::Ceph(CephCommand::Bootstrap {
            paths,
            exec,
            start,
            timeout,
            json,
        }) => match spec_commands::load_locked(&paths, json) {
            Ok((spec, lock)) => ceph_bootstrap::run(
                &spec,
                &lock,
                &ceph_bootstrap::Request {
                    exec,
                    start,
                    timeout: std::time::Duration::from_secs(timeout),
                    json,
                },
            ),
            Err(exit) => exit,
        },
        Command::Wg(WgCommand::Keygen { dir, force, json }) => {
            wg_commands::keygen(&dir.data_dir, force, json)
        }
        Command::Wg(WgCommand::Pubkey { dir }) => wg_commands::pubkey(&dir.data_dir),
        Command::Wg(WgCommand::Rotate { dir, json }) => wg_commands::rotate(&dir.data_dir, json),
        Command::Net(NetCommand::Up { files, json }) => {
            let config = files.into_config();
            wg_commands::up(
                &config.spec,
                &config.lock,
                &config.node,
                &config.data_dir,
                json,
            )
        }
        Command::Net(NetCommand::Down) => wg_commands::down(),
        Command::Net(NetCommand::Show { json }) => wg_commands::show(json),
    };
    exit.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subcommand_definition_is_consistent() {
        use clap::{CommandFactory, Parser};
        super::Cli::command().debug_assert();
        // Subcommands are built lazily: asking each for --help builds (and checks) it.
        fn walk(path: &mut Vec<String>, cmd: &clap::Command) {
            for sub in cmd.get_subcommands() {
                path.push(sub.get_name().to_string());
                let mut argv = vec!["quorate".to_string()];
                argv.extend(path.iter().cloned());
                argv.push("--help".into());
                let err = super::Cli::try_parse_from(&argv).expect_err("--help ends parsing");
                assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{argv:?}");
                walk(path, sub);
                path.pop();
            }
        }
        walk(&mut Vec::new(), &super::Cli::command());
    }
}

//! `quorate` — one binary for the whole tool. This file is thin glue: argument
//! parsing and dispatch; each command lives in its own module.

mod exit;
mod render;
mod spec_commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "One declarative spec → a cluster that keeps its services running.";

const LONG_ABOUT: &str = "\
quorate turns a versioned cluster description (quorate.toml, or cluster.json from the NixOS \
module) into a quorum-backed cluster that runs services on exactly one healthy node and moves \
them when a node dies.

Start with a spec and check it:
  quorate check examples/minimal/quorate.toml
  quorate plan  examples/minimal/quorate.toml     # what would change, against quorate.lock
  quorate lock  examples/minimal/quorate.toml     # allocate stable numbers into quorate.lock

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
}

fn main() -> ExitCode {
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
    };
    exit.into()
}

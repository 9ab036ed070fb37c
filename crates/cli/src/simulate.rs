//! `quorate simulate`: what-if on the same pure scheduler the leader runs, offline
//! from the spec or from the live cluster's state — like Pacemaker's `crm_simulate`
//! or Proxmox's HA simulator. The simulation itself is `quorate_api::simulate`, which
//! the HTTP API serves too.

use std::path::Path;

use quorate_api::simulate::{offline, report, simulate};
use quorate_api::{ControlReply, ControlRequest};

use crate::exit::Exit;

/// `quorate simulate`
pub fn run(
    spec_path: &Path,
    live: Option<&crate::cluster_commands::AgentSocket>,
    fail: &[String],
    drain: &[String],
    json: bool,
) -> Exit {
    let start = match live {
        Some(agent) => {
            match crate::cluster_commands::call(
                agent,
                &ControlRequest::SchedulerInput,
                std::time::Duration::from_secs(15),
                json,
            ) {
                Ok(ControlReply::SchedulerInput(view)) => *view,
                Ok(ControlReply::Refused {
                    exit_code, message, ..
                }) => {
                    eprintln!("error: {message}");
                    return Exit::from_refusal(exit_code);
                }
                Ok(_) => {
                    eprintln!("error: unexpected reply from the agent");
                    return Exit::Invalid;
                }
                Err(exit) => return exit,
            }
        }
        None => match crate::spec_commands::load_checked(spec_path, json) {
            Ok(spec) => offline(&spec),
            Err(exit) => return exit,
        },
    };
    let spec = &start.spec;
    for n in fail.iter().chain(drain) {
        if !spec.nodes.contains_key(n) {
            let known: Vec<&String> = spec.nodes.keys().collect();
            eprintln!("error: `{n}` is not a node of the spec (nodes: {known:?})\n  help: pass node names from [nodes]");
            return Exit::Invalid;
        }
    }
    let sim = simulate(&start, fail, drain);
    let source = match live {
        Some(_) => format!("the live cluster `{}`", spec.cluster.name),
        None => spec_path.display().to_string(),
    };
    let json_report = report(&start, &sim, fail, drain, live.is_some());
    let unplaceable: Vec<String> = json_report["unplaceable"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report).unwrap_or_default()
        );
    } else {
        println!(
            "quorate simulate: {source} with {}{}\n",
            if fail.is_empty() {
                "no failures".to_string()
            } else {
                format!("{} failed", fail.join(", "))
            },
            if drain.is_empty() {
                String::new()
            } else {
                format!(", {} draining", drain.join(", "))
            }
        );
        println!("{:<20} {:<12} {:<12} WHY", "SERVICE", "BEFORE", "AFTER");
        for (s, p) in &sim.after {
            let before = sim.before[s].node.as_deref().unwrap_or("-");
            println!(
                "{:<20} {:<12} {:<12} {}",
                s,
                before,
                p.node.as_deref().unwrap_or("UNPLACEABLE"),
                p.reason
            );
        }
        if !sim.stops.is_empty() || !sim.starts.is_empty() {
            println!("\nTransition:");
            for (i, (s, n)) in sim.stops.iter().enumerate() {
                let note = if fail.contains(n) {
                    " (the node failed: its fence already ended it)"
                } else {
                    ""
                };
                println!("  {:>2}. stop  {s} on {n}{note}", i + 1);
            }
            for (i, (s, n)) in sim.starts.iter().enumerate() {
                println!("  {:>2}. start {s} on {n}", sim.stops.len() + i + 1);
            }
        }
        if unplaceable.is_empty() {
            println!("\nEvery service has a node.");
        } else {
            println!(
                "\n{} service(s) would have nowhere to run: {}",
                unplaceable.len(),
                unplaceable.join(", ")
            );
        }
    }
    if unplaceable.is_empty() {
        Exit::Ok
    } else {
        Exit::Invalid
    }
}

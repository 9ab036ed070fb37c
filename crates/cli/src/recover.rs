//! `quorate recover --force-single`: the runbook step for a cluster that lost its
//! majority for good (README, "Losing the majority").

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use crate::exit::Exit;

/// Checks, asks for confirmation (unless `yes`), then makes this node a one-voter
/// cluster with the last state it had committed.
pub fn force_single(config: &quorate_agent::AgentConfig, yes: bool, json: bool) -> Exit {
    let Some(rt) = crate::cluster_commands::runtime() else {
        return Exit::Invalid;
    };
    let refuse = |e: &dyn std::fmt::Display| {
        if json {
            println!("{}", json!({"ok": false, "error": e.to_string()}));
        } else {
            eprintln!("error: {e}");
        }
        Exit::Invalid
    };
    let check = match rt.block_on(quorate_agent::check_force_single(config)) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    if !yes {
        if !std::io::stdin().is_terminal() {
            return refuse(&"refusing to force a recovery without confirmation: run it in a terminal, or pass --yes; nothing was changed");
        }
        eprintln!(
            "This makes `{node}` a cluster of one voter, with the last state it had committed.\n\
             Voters that did not answer: {silent}.\n\
             Risks: changes the lost majority committed after `{node}` last heard of them are \
             gone; if a left-out node is in fact alive with its old data and reaches another \
             left-out node, the two can act as the old cluster. Before they come back, empty \
             their data dirs (keep tls/).\n\
             Type the name of this node to continue:",
            node = config.node,
            silent = check
                .silent
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if answer.trim() != config.node {
            return refuse(&"not confirmed; nothing was changed");
        }
    }
    match quorate_agent::force_single(config) {
        Ok(done) => {
            let left_out: Vec<&str> = check.silent.iter().map(|(n, _)| n.as_str()).collect();
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "node": config.node, "committed_index": done.committed,
                           "dropped_uncommitted": done.dropped, "term": done.term,
                           "left_out": left_out})
                );
            } else {
                eprintln!(
                    "`{}` is now a one-voter cluster: kept everything committed up to index {}, dropped {} unconfirmed entr{}, new term {}.\n\
                     next: start the agent here (`systemctl start quorate`); it leads alone and runs the services again.\n\
                     then, for each of {}: empty its data dir (keep tls/) and start its agent; it rejoins and votes again once it has caught up (`quorate status` shows who is still left out).",
                    config.node,
                    done.committed,
                    done.dropped,
                    if done.dropped == 1 { "y" } else { "ies" },
                    done.term,
                    left_out.join(", ")
                );
            }
            Exit::Ok
        }
        Err(e) => refuse(&e),
    }
}

//! The safety checker, independent of the agent code: it reads only the witness
//! journal — `start`/`alive`/`stop` written by workloads, `fence` by fence processes,
//! `exit` by agents, `poweroff` by the test harness — and reports every overlap of
//! run intervals of one service on two nodes (DESIGN invariant 1).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// CLOCK_MONOTONIC now, ns (the same clock the workloads and fences use).
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    u64::try_from(t.tv_sec()).unwrap() * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap()
}

pub fn append(journal: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// One run of a service on a node: from `start` to the first of `stop`, `exit`,
/// `fence` (same process group) or `poweroff` of the node; open while none came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub service: String,
    pub node: String,
    pub pid: i64,
    pub start: u64,
    pub end: Option<u64>,
}

pub fn runs(journal: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let mut open: BTreeMap<(String, i64), Run> = BTreeMap::new();
    let mut done = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind, t, node, service, pid] = f[..] else {
            continue;
        };
        let (Ok(t), Ok(pid)) = (t.parse::<u64>(), pid.parse::<i64>()) else {
            continue;
        };
        match kind {
            "start" => {
                open.insert(
                    (node.to_string(), pid),
                    Run {
                        service: service.into(),
                        node: node.into(),
                        pid,
                        start: t,
                        end: None,
                    },
                );
            }
            "stop" | "exit" | "fence" => {
                if let Some(mut r) = open.remove(&(node.to_string(), pid)) {
                    r.end = Some(t);
                    done.push(r);
                }
            }
            "poweroff" => {
                let keys: Vec<(String, i64)> =
                    open.keys().filter(|(n, _)| n == node).cloned().collect();
                for k in keys {
                    if let Some(mut r) = open.remove(&k) {
                        r.end = Some(t);
                        done.push(r);
                    }
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|r| r.start);
    done
}

/// Pairs of runs of the same service on different nodes that overlap in time.
pub fn double_runs(runs: &[Run]) -> Vec<(Run, Run)> {
    let mut out = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if a.service == b.service && a.node != b.node {
                let a_end = a.end.unwrap_or(u64::MAX);
                let b_end = b.end.unwrap_or(u64::MAX);
                if a.start < b_end && b.start < a_end {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod checker_tests {}

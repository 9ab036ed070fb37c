//! The safety checker, independent of the agent code: it judges a run only from what
//! actually happened.
//!
//! The witness journal is one host file that every workload, fence process and agent
//! appends to (O_APPEND), one record per line:
//! `<kind> <CLOCK_BOOTTIME ns> <node> <service> <pid>` with kind `start`, `alive`,
//! `stop` (the workload), `exit` (its agent saw it end), `fence` (the fence process
//! killed it — a SIGKILLed workload cannot log its own stop) and `poweroff` (the lab cut
//! the node's power: everything on it ended).
//!
//! The client record holds the operations the lab submitted, one JSON object per line:
//! `{"t": ns, "op": "move", "service": "s1", "node": "n2", "acked": true}` (`node`
//! null for `move --clear`; `op` `rename`/`remove`/`add` for spec changes, see
//! [`Operation`]).
//!
//! It reports (a) any overlap of run intervals of one service on two nodes (DESIGN
//! invariant 1), (b) any acknowledged operation not in effect once the faults have
//! healed (invariant 2), (c) per-service downtime.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// CLOCK_BOOTTIME now, ns (the clock the workloads and fences write).
#[must_use]
pub fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// Appends one line to a journal or record file.
///
/// # Errors
/// The file cannot be opened or written.
pub fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// One run of a service on a node: from `start` to the first of `stop`, `exit`,
/// `fence` (same node and pid, or pid 0 for every run of the service there) or
/// `poweroff` of the node; open while none came.
///
/// An end is a claim, not a fact: a `stop` or `alive` record of the same workload
/// after it means the run never ended, which [`Journal::problems`] reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The service.
    pub service: String,
    /// The node.
    pub node: String,
    /// Its pid as it logged it.
    pub pid: i64,
    /// `start` time.
    pub start: u64,
    /// End time, if it ended.
    pub end: Option<u64>,
}

/// A journal as the checker reads it: the runs, and every record that contradicts
/// them or cannot be read (each one fails the run; see [`Journal::problems`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Journal {
    /// The runs, by start time.
    pub runs: Vec<Run>,
    /// What the checker cannot accept: an empty journal, a line that is not a record,
    /// a record without a node or service, a record of a workload after its run was
    /// said to have ended, a pid that starts again while its run is open.
    pub problems: Vec<String>,
}

/// The runs in a journal, by start time.
#[must_use]
pub fn runs(journal: &Path) -> Vec<Run> {
    read_journal(journal).runs
}

/// The journal at `path`, judged ([`judge_journal`]); a missing file is empty.
#[must_use]
pub fn read_journal(path: &Path) -> Journal {
    judge_journal(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The runs in journal text, by start time (see [`judge_journal`] for the problems).
#[must_use]
pub fn runs_of(text: &str) -> Vec<Run> {
    judge_journal(text).runs
}

/// Ended runs by (node, pid): (index in the ended list, what ended it).
type EndedRuns = BTreeMap<(String, i64), (usize, String)>;

/// Ends `run` at `t` (by the record kind `why`) and remembers it, so that a later
/// record of the same workload can be judged.
fn end_run(mut run: Run, t: u64, why: &str, done: &mut Vec<Run>, ended: &mut EndedRuns) {
    ended.insert((run.node.clone(), run.pid), (done.len(), why.to_owned()));
    run.end = Some(t);
    done.push(run);
}

/// Reads journal text into runs and problems. Nothing is skipped silently.
#[must_use]
pub fn judge_journal(text: &str) -> Journal {
    let mut open: BTreeMap<(String, i64), Run> = BTreeMap::new();
    // Ended runs by (node, pid): (service, end time, what ended it).
    let mut ended = EndedRuns::new();
    let mut done: Vec<Run> = Vec::new();
    let mut problems = Vec::new();
    let mut records = 0usize;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f[..] {
            [kind, t, node, service, pid] => t
                .parse::<u64>()
                .ok()
                .zip(pid.parse::<i64>().ok())
                .map(|(t, pid)| (kind, t, node, service, pid)),
            _ => None,
        };
        let Some((kind, t, node, service, pid)) = parsed else {
            problems.push(format!("line {n} is not a witness record: {line:?}"));
            continue;
        };
        records += 1;
        if node == "?"
            || node.is_empty()
            || (kind != "poweroff" && (service == "?" || service == "-"))
        {
            problems.push(format!(
                "line {n} has no node or service identity (QUORATE_NODE/QUORATE_SERVICE missing?): {line:?}"
            ));
            continue;
        }
        let key = (node.to_string(), pid);
        match kind {
            "start" => {
                if let Some(prev) = open.get(&key) {
                    problems.push(format!(
                        "line {n}: pid {pid} on {node} starts {service} while its run of {} (started at {}) never ended",
                        prev.service, prev.start
                    ));
                }
                ended.remove(&key);
                open.insert(
                    key,
                    Run {
                        service: service.into(),
                        node: node.into(),
                        pid,
                        start: t,
                        end: None,
                    },
                );
            }
            "alive" | "stop" => {
                if let Some((index, why)) = ended.get(&key) {
                    let run = &mut done[*index];
                    let at = run.end.unwrap_or(0);
                    if t > at {
                        if why == "stop" {
                            // The workload's own `stop` is its leader's word: what it
                            // forked may live on, and the run lasts as long as it does.
                            run.end = Some(t);
                        } else {
                            // `exit`, `fence` and `poweroff` are the system's word that
                            // nothing of it runs any more: a record after them is a lie.
                            problems.push(format!(
                                "line {n}: {} on {node} (pid {pid}) wrote `{kind}` at {t}, after its run was ended by `{why}` at {at}: it never ended",
                                run.service
                            ));
                        }
                    }
                }
                if kind == "stop" {
                    if let Some(run) = open.remove(&key) {
                        end_run(run, t, "stop", &mut done, &mut ended);
                    }
                }
            }
            "exit" | "fence" => {
                if pid == 0 && kind == "fence" {
                    // A fence of a workload it knew only by name ("starting"): every
                    // open run of that service on that node.
                    let keys: Vec<(String, i64)> = open
                        .iter()
                        .filter(|((nd, _), r)| nd == node && r.service == service)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        if let Some(run) = open.remove(&k) {
                            end_run(run, t, kind, &mut done, &mut ended);
                        }
                    }
                } else if let Some(run) = open.remove(&key) {
                    end_run(run, t, kind, &mut done, &mut ended);
                }
            }
            "poweroff" => {
                let keys: Vec<(String, i64)> =
                    open.keys().filter(|(nd, _)| nd == node).cloned().collect();
                for k in keys {
                    if let Some(run) = open.remove(&k) {
                        end_run(run, t, "poweroff", &mut done, &mut ended);
                    }
                }
            }
            other => problems.push(format!("line {n}: unknown record kind `{other}`: {line:?}")),
        }
    }
    if records == 0 {
        problems.push(
            "the journal is empty: nothing was witnessed, so nothing can be judged".to_owned(),
        );
    }
    done.extend(open.into_values());
    done.sort_by_key(|r| r.start);
    Journal {
        runs: done,
        problems,
    }
}

/// Pairs of runs of the same service that overlap in time: on two nodes (DESIGN
/// invariant 1), or on one node (a second copy started before the first ended).
#[must_use]
pub fn double_runs(runs: &[Run]) -> Vec<(Run, Run)> {
    let mut out = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if a.service == b.service && (a.node != b.node || a.pid != b.pid) {
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

/// Every safety violation in a journal, in words: overlapping runs and journal
/// problems. Empty means the journal shows no double run.
#[must_use]
pub fn violations(journal: &Path) -> Vec<String> {
    let j = read_journal(journal);
    let mut out: Vec<String> = double_runs(&j.runs)
        .into_iter()
        .map(|(a, b)| {
            format!(
                "{} ran twice: on {} (pid {}, {}..{:?}) and on {} (pid {}, {}..{:?})",
                a.service, a.node, a.pid, a.start, a.end, b.node, b.pid, b.start, b.end
            )
        })
        .collect();
    out.extend(j.problems);
    out
}

/// One operation the lab's client submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// When it was submitted (CLOCK_BOOTTIME ns).
    pub t: u64,
    /// `move` (with `node`), `clear` (a `move --clear`), or a spec change applied
    /// with `quorate apply`: `rename` (`node` holds the new name), `remove`, `add`.
    pub op: String,
    /// The service.
    pub service: String,
    /// The target node of a move (the new name of a rename).
    pub node: Option<String>,
    /// Whether the cluster acknowledged it (committed through Raft).
    pub acked: bool,
}

impl Operation {
    /// The pin this operation leaves on `service` when it takes effect: a move pins,
    /// everything else leaves no pin (a renamed or removed service's pin goes with its
    /// name; an added service starts without one).
    #[must_use]
    pub fn pin_after(&self) -> Option<String> {
        if self.op == "move" {
            self.node.clone()
        } else {
            None
        }
    }
}

/// The operations in a client record file.
#[must_use]
pub fn operations(path: &Path) -> Vec<Operation> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An acknowledged operation whose effect is not what the cluster shows after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostOperation {
    /// The last acknowledged operation on the service.
    pub operation: Operation,
    /// The pin the healed cluster shows.
    pub found: Option<String>,
}

/// Checks that, for every service, the pin the healed cluster shows (`pins`: service →
/// pinned node) is the effect of its last acknowledged operation — or of an operation
/// submitted after it whose outcome was unknown (not acknowledged, maybe committed).
#[must_use]
pub fn lost_operations(
    ops: &[Operation],
    pins: &BTreeMap<String, Option<String>>,
) -> Vec<LostOperation> {
    let mut by_service: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_service.entry(&op.service).or_default().push(op);
    }
    let mut lost = Vec::new();
    for (service, mut list) in by_service {
        list.sort_by_key(|o| o.t);
        let Some(last_acked) = list.iter().rposition(|o| o.acked) else {
            continue;
        };
        let allowed: Vec<Option<String>> = list[last_acked..]
            .iter()
            .enumerate()
            .filter(|(i, o)| *i == 0 || !o.acked)
            .map(|(_, o)| o.pin_after())
            .collect();
        let found = pins.get(service).cloned().flatten();
        if !allowed.contains(&found) {
            lost.push(LostOperation {
                operation: list[last_acked].clone(),
                found,
            });
        }
    }
    lost
}

/// How long each service had no run anywhere, between `from` and `to` (ns).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Downtime {
    /// Total ms without a run.
    pub total_ms: u64,
    /// The longest gap, ms.
    pub longest_ms: u64,
    /// Number of gaps.
    pub gaps: usize,
}

/// Per-service downtime between `from` and `to`, from the runs.
#[must_use]
pub fn downtime(runs: &[Run], from: u64, to: u64) -> BTreeMap<String, Downtime> {
    let mut by_service: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for r in runs {
        by_service
            .entry(&r.service)
            .or_default()
            .push((r.start, r.end.unwrap_or(u64::MAX)));
    }
    let mut out = BTreeMap::new();
    for (service, mut spans) in by_service {
        spans.sort_unstable();
        let mut d = Downtime::default();
        let mut covered = from;
        for (start, end) in spans {
            if start > covered && covered < to {
                let gap = (start.min(to) - covered) / 1_000_000;
                d.total_ms += gap;
                d.longest_ms = d.longest_ms.max(gap);
                d.gaps += 1;
            }
            covered = covered.max(end);
        }
        if covered < to {
            let gap = (to - covered) / 1_000_000;
            d.total_ms += gap;
            d.longest_ms = d.longest_ms.max(gap);
            d.gaps += 1;
        }
        out.insert(service.to_owned(), d);
    }
    out
}

/// The checker's verdict on one lab run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    /// Runs of one service on two nodes at once (invariant 1).
    pub double_runs: Vec<(Run, Run)>,
    /// Acknowledged operations not in effect after healing (invariant 2).
    pub lost_operations: Vec<LostOperation>,
    /// Per-service downtime.
    pub downtime: BTreeMap<String, Downtime>,
    /// Runs seen.
    pub runs: usize,
    /// Journal records the checker cannot accept ([`Journal::problems`]).
    pub journal_problems: Vec<String>,
}

impl Verdict {
    /// True when no invariant was violated.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.double_runs.is_empty()
            && self.lost_operations.is_empty()
            && self.journal_problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_runs_on_two_nodes_are_caught_and_fences_end_runs() {
        let journal = "start 10 n1 web 100\nstart 20 n2 web 200\nstop 30 n1 web 100\n";
        let doubles = double_runs(&runs_of(journal));
        assert_eq!(doubles.len(), 1);
        assert_eq!(
            (doubles[0].0.node.as_str(), doubles[0].1.node.as_str()),
            ("n1", "n2")
        );

        let fenced = "start 10 n1 web 100\nfence 15 n1 web 100\nstart 20 n2 web 200\n";
        assert!(double_runs(&runs_of(fenced)).is_empty());
        let powered_off = "start 10 n1 web 100\npoweroff 15 n1 - 0\nstart 20 n2 web 200\n";
        assert!(double_runs(&runs_of(powered_off)).is_empty());
        // A fence for another pid does not end the run.
        let wrong_pid = "start 10 n1 web 100\nfence 15 n1 web 999\nstart 20 n2 web 200\n";
        assert_eq!(double_runs(&runs_of(wrong_pid)).len(), 1);
        // The same node restarting it after a stop is not a double run.
        let same_node = "start 10 n1 web 1\nexit 11 n1 web 1\nstart 12 n1 web 2\n";
        assert!(double_runs(&runs_of(same_node)).is_empty());
    }

    #[test]
    fn a_second_copy_on_the_same_node_is_a_double_run() {
        let j = judge_journal("start 10 n1 web 1\nstart 12 n1 web 2\n");
        assert_eq!(double_runs(&j.runs).len(), 1);
    }

    #[test]
    fn a_record_after_the_end_of_a_run_means_it_never_ended() {
        // The fence said it killed pid 100, but the workload kept writing.
        let j = judge_journal("start 10 n1 web 100\nfence 15 n1 web 100\nalive 16 n1 web 100\n");
        assert_eq!(j.problems.len(), 1, "{:?}", j.problems);
        assert!(j.problems[0].contains("never ended"), "{:?}", j.problems);
        // Its own stop after a poweroff is as bad.
        let j = judge_journal("start 10 n1 web 100\npoweroff 15 n1 - 0\nstop 20 n1 web 100\n");
        assert_eq!(j.problems.len(), 1, "{:?}", j.problems);
        // After its own stop, what it forked may live on: the run lasts until then,
        // and overlaps a copy started meanwhile.
        let j = judge_journal(
            "start 10 n1 web 100\nstop 15 n1 web 100\nstart 18 n2 web 200\nalive 20 n1 web 100\n",
        );
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(j.runs[0].end, Some(20));
        assert_eq!(double_runs(&j.runs).len(), 1);
        // A record written before the end is fine.
        let j = judge_journal("start 10 n1 web 100\nalive 14 n1 web 100\nexit 15 n1 web 100\n");
        assert!(j.problems.is_empty(), "{:?}", j.problems);
    }

    #[test]
    fn a_fence_by_name_ends_every_run_of_the_service_on_that_node() {
        let j = judge_journal(
            "start 10 n1 web 100\nstart 11 n1 db 101\nfence 15 n1 web 0\nstart 20 n2 web 200\n",
        );
        assert!(double_runs(&j.runs).is_empty());
        assert_eq!(j.runs.iter().filter(|r| r.end.is_none()).count(), 2);
    }

    #[test]
    fn unreadable_anonymous_or_empty_journals_fail() {
        assert_eq!(judge_journal("").problems.len(), 1);
        assert!(judge_journal("junk line\n").problems[0].contains("not a witness record"));
        let j = judge_journal("start 10 ? web 100\n");
        assert!(
            j.problems.iter().any(|p| p.contains("identity")),
            "{:?}",
            j.problems
        );
        assert!(j.runs.is_empty());
        let j = judge_journal("start 10 n1 web 100\nbogus 11 n1 web 100\n");
        assert!(j.problems.iter().any(|p| p.contains("unknown record kind")));
    }

    #[test]
    fn a_pid_starting_again_while_its_run_is_open_is_a_problem() {
        let j = judge_journal("start 10 n1 web 100\nstart 20 n1 db 100\n");
        assert!(
            j.problems.iter().any(|p| p.contains("never ended")),
            "{:?}",
            j.problems
        );
    }

    fn op(t: u64, node: Option<&str>, acked: bool) -> Operation {
        Operation {
            t,
            op: if node.is_some() { "move" } else { "clear" }.into(),
            service: "s1".into(),
            node: node.map(Into::into),
            acked,
        }
    }

    #[test]
    fn an_acknowledged_move_must_be_in_effect_unless_a_later_unknown_one_won() {
        let pins = |p: Option<&str>| -> BTreeMap<String, Option<String>> {
            [("s1".to_owned(), p.map(Into::into))].into()
        };
        let ops = [op(1, Some("n1"), true), op(2, Some("n2"), true)];
        assert!(lost_operations(&ops, &pins(Some("n2"))).is_empty());
        let lost = lost_operations(&ops, &pins(Some("n1")));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].operation.t, 2);
        // A later unacknowledged move may or may not have been committed.
        let ops = [op(1, Some("n1"), true), op(2, Some("n3"), false)];
        assert!(lost_operations(&ops, &pins(Some("n1"))).is_empty());
        assert!(lost_operations(&ops, &pins(Some("n3"))).is_empty());
        assert_eq!(lost_operations(&ops, &pins(None)).len(), 1);
        // An acknowledged clear means no pin.
        let ops = [op(1, Some("n1"), true), op(2, None, true)];
        assert!(lost_operations(&ops, &pins(None)).is_empty());
    }

    #[test]
    fn a_renamed_or_removed_service_must_have_lost_its_pin() {
        let pins = |p: Option<&str>| -> BTreeMap<String, Option<String>> {
            [("s1".to_owned(), p.map(Into::into))].into()
        };
        let spec_change = |t: u64, what: &str, acked: bool| Operation {
            t,
            op: what.into(),
            service: "s1".into(),
            node: (what == "rename").then(|| "s1-r1".to_owned()),
            acked,
        };
        for what in ["rename", "remove"] {
            let ops = [op(1, Some("n1"), true), spec_change(2, what, true)];
            assert!(lost_operations(&ops, &pins(None)).is_empty(), "{what}");
            // The old name still pinned after an acknowledged rename/removal: lost.
            assert_eq!(lost_operations(&ops, &pins(Some("n1"))).len(), 1, "{what}");
            // Unacknowledged: either outcome.
            let ops = [op(1, Some("n1"), true), spec_change(2, what, false)];
            assert!(
                lost_operations(&ops, &pins(Some("n1"))).is_empty(),
                "{what}"
            );
            assert!(lost_operations(&ops, &pins(None)).is_empty(), "{what}");
        }
    }

    #[test]
    fn downtime_counts_the_gaps_between_runs() {
        let runs = runs_of("start 1000000 n1 a 1\nstop 5000000 n1 a 1\nstart 8000000 n2 a 2\n");
        let d = &downtime(&runs, 0, 10_000_000)["a"];
        assert_eq!((d.total_ms, d.longest_ms, d.gaps), (4, 3, 2));
    }
}

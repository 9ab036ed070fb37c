//! `check`, `lock`, `plan`, `schema`, `render`: the commands that work on the spec and lock
//! files alone, without a running cluster.

use std::path::Path;

use quorate_lock::Lock;
use quorate_spec::{Format, Spec};
use serde_json::json;

use crate::exit::Exit;
use crate::render;
use crate::SpecPaths;

/// Prints one line to stderr (people) — stdout is for results and `--json`.
macro_rules! say {
    ($($t:tt)*) => { eprintln!($($t)*) };
}

/// A spec that passed `check`, with its warnings.
struct LoadedSpec {
    spec: Spec,
    warnings: usize,
}

/// Reads and checks a spec. On errors prints them (human or JSON) and returns the exit code.
fn load_spec(path: &Path, json: bool, show_warnings: bool) -> Result<LoadedSpec, Exit> {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "pass the spec's path (e.g. `quorate check examples/minimal/quorate.toml`) or run in its directory"
            } else {
                "check the path and its permissions"
            };
            if json {
                println!(
                    "{}",
                    json!({"file": file, "ok": false, "error": format!("cannot read {file}: {e}"), "help": hint})
                );
            } else {
                say!("error: cannot read {file}: {e}\n  help: {hint}");
            }
            return Err(Exit::Invalid);
        }
    };
    let checked = quorate_spec::check(&text, Format::from_path(path));
    let errors = checked.errors();
    if json && (errors > 0 || show_warnings) {
        let diagnostics: Vec<_> = checked
            .diagnostics
            .iter()
            .map(|d| render::json_diagnostic(&file, &text, d))
            .collect();
        let mut doc = json!({
            "file": file,
            "ok": errors == 0,
            "errors": errors,
            "warnings": checked.warnings(),
            "diagnostics": diagnostics,
        });
        if let Some(spec) = &checked.spec {
            doc["summary"] = json!({
                "cluster": spec.cluster.name,
                "nodes": spec.nodes.len(),
                "voters": spec.voters().count(),
                "services": spec.services.len(),
                "storage": spec.storage.len(),
            });
        }
        if errors > 0 || show_warnings {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
    } else if !json && (errors > 0 || show_warnings) && !checked.diagnostics.is_empty() {
        let shown: Vec<_> = checked
            .diagnostics
            .iter()
            .filter(|d| show_warnings || d.is_error())
            .cloned()
            .collect();
        eprint!("{}", render::human(&file, &text, &shown));
    }
    let warnings = checked.warnings();
    match checked.spec {
        Some(spec) => Ok(LoadedSpec { spec, warnings }),
        None => {
            if !json {
                say!("{file}: {errors} error(s), {warnings} warning(s); nothing was changed");
            }
            Err(Exit::Invalid)
        }
    }
}

/// Reads and checks a spec for commands that send it elsewhere (`apply`).
pub fn load_checked(path: &Path, json: bool) -> Result<Spec, Exit> {
    load_spec(path, json, false).map(|l| l.spec)
}

fn read_lock(path: &Path, json: bool) -> Result<Option<Lock>, Exit> {
    quorate_lock::read(path).map_err(|e| {
        report_error(&e.to_string(), json);
        Exit::Invalid
    })
}

fn report_error(message: &str, json: bool) {
    if json {
        println!("{}", json!({"ok": false, "error": message}));
    } else {
        say!("error: {message}");
    }
}

/// `quorate check`
pub fn check(paths: &SpecPaths, json: bool) -> Exit {
    match load_spec(&paths.spec, json, true) {
        Ok(loaded) => {
            if !json {
                let s = &loaded.spec;
                say!(
                    "ok: cluster `{}` — {} nodes ({} voters), {} services, {} storage{}",
                    s.cluster.name,
                    s.nodes.len(),
                    s.voters().count(),
                    s.services.len(),
                    s.storage.len(),
                    match loaded.warnings {
                        0 => String::new(),
                        n => format!(" ({n} warning(s) above)"),
                    }
                );
            }
            Exit::Ok
        }
        Err(exit) => exit,
    }
}

/// `quorate lock`
pub fn lock(paths: &SpecPaths, check_only: bool, allow_destructive: bool, json: bool) -> Exit {
    let loaded = match load_spec(&paths.spec, json, false) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let lock_path = paths.lock_path();
    let previous = match read_lock(&lock_path, json) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let plan = match quorate_plan::plan(previous.as_ref(), None, &loaded.spec) {
        Ok(p) => p,
        Err(e) => {
            report_error(&e.to_string(), json);
            return Exit::Invalid;
        }
    };
    let file = lock_path.display().to_string();
    let result = |status: &str, written: bool| json!({"lock": file, "status": status, "written": written, "destructive": plan.is_destructive(), "changes": plan.items});
    if check_only {
        if plan.lock_changes {
            if json {
                println!("{}", result("out-of-date", false));
            } else {
                let what = if previous.is_none() {
                    "missing"
                } else {
                    "out of date"
                };
                say!("{file} is {what}; `quorate lock` would make these changes:\n{plan}\n  help: run `quorate lock {}` and commit the result", paths.spec.display());
            }
            return Exit::Invalid;
        }
        if json {
            println!("{}", result("up-to-date", false));
        } else {
            say!("{file} is up to date");
        }
        return Exit::Ok;
    }
    if !plan.lock_changes {
        if json {
            println!("{}", result("up-to-date", false));
        } else {
            say!("{file} is up to date; nothing written");
        }
        return Exit::Ok;
    }
    if plan.is_destructive() && !allow_destructive {
        if json {
            println!("{}", result("refused-destructive", false));
        } else {
            say!("{plan}\nrefused: this change is destructive; {file} was not changed\n  help: review the lines marked DESTRUCTIVE, then rerun with --allow-destructive");
        }
        return Exit::Destructive;
    }
    if let Err(e) = quorate_lock::write_atomic(&lock_path, plan.new_lock.to_json().as_bytes()) {
        report_error(
            &format!("cannot write {file}: {e} (the previous lock is unchanged)"),
            json,
        );
        return Exit::Invalid;
    }
    if json {
        println!("{}", result("written", true));
    } else {
        say!("{plan}wrote {file}");
    }
    Exit::Ok
}

/// `quorate plan`
pub fn plan(
    paths: &SpecPaths,
    against: Option<&Path>,
    allow_destructive: bool,
    json: bool,
) -> Exit {
    let loaded = match load_spec(&paths.spec, json, false) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let previous_spec = match against {
        Some(old) => match load_spec(old, json, false) {
            Ok(l) => Some(l.spec),
            Err(exit) => return exit,
        },
        None => None,
    };
    let lock_path = paths.lock_path();
    let lock = match read_lock(&lock_path, json) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let plan = match quorate_plan::plan(lock.as_ref(), previous_spec.as_ref(), &loaded.spec) {
        Ok(p) => p,
        Err(e) => {
            report_error(&e.to_string(), json);
            return Exit::Invalid;
        }
    };
    if json {
        let doc = json!({
            "spec": paths.spec.display().to_string(),
            "lock": lock_path.display().to_string(),
            "lock_exists": lock.is_some(),
            "lock_changes": plan.lock_changes,
            "destructive": plan.is_destructive(),
            "summary": {
                "add": plan.count(quorate_plan::Op::Add),
                "rename": plan.count(quorate_plan::Op::Rename),
                "change": plan.count(quorate_plan::Op::Change),
                "remove": plan.count(quorate_plan::Op::Remove),
            },
            "items": plan.items,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let baseline = if lock.is_some() {
            lock_path.display().to_string()
        } else {
            format!("no lock yet ({} does not exist)", lock_path.display())
        };
        println!(
            "quorate plan: {} against {baseline}\n",
            paths.spec.display()
        );
        print!("{plan}");
    }
    if plan.is_destructive() && !allow_destructive {
        if !json {
            say!("refused: the plan is destructive (exit 3)\n  help: review the lines marked DESTRUCTIVE; rerun with --allow-destructive to accept them");
        }
        return Exit::Destructive;
    }
    Exit::Ok
}

/// `quorate schema`
pub fn schema() -> Exit {
    println!(
        "{}",
        serde_json::to_string_pretty(&quorate_spec::json_schema()).unwrap_or_default()
    );
    Exit::Ok
}

/// `quorate render`: this node's generated files, listed or written under `out`.
/// The spec (checked) and its lock, which must be up to date for it: what `render`
/// and `ceph bootstrap` take every number from.
///
/// # Errors
/// A bad spec, no lock, a lock out of date (reported; the exit code to end with).
pub fn load_locked(paths: &SpecPaths, json: bool) -> Result<(Spec, Lock), Exit> {
    let loaded = load_spec(&paths.spec, json, false)?;
    let lock_path = paths.lock_path();
    let Some(lock) = read_lock(&lock_path, json)? else {
        report_error(
            &format!(
                "no lock at {}: run `quorate lock {}` first (every number comes from the lock)",
                lock_path.display(),
                paths.spec.display()
            ),
            json,
        );
        return Err(Exit::Invalid);
    };
    match quorate_plan::plan(Some(&lock), None, &loaded.spec) {
        Ok(plan) if !plan.lock_changes => Ok((loaded.spec, lock)),
        Ok(_) => {
            report_error(&format!("{} is out of date for this spec: run `quorate lock {}` first, so that everything carries the locked numbers", lock_path.display(), paths.spec.display()), json);
            Err(Exit::Invalid)
        }
        Err(e) => {
            report_error(&e.to_string(), json);
            Err(Exit::Invalid)
        }
    }
}

/// `quorate render`: every file `node` needs, written under `out` or listed.
pub fn render_node(paths: &SpecPaths, node: &str, out: Option<&Path>, json: bool) -> Exit {
    let (spec, lock) = match load_locked(paths, json) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let files = match quorate_render::node_files(&spec, &lock, node) {
        Ok(files) => files,
        Err(e) => {
            report_error(&e.to_string(), json);
            return Exit::Invalid;
        }
    };
    if let Some(dir) = out {
        for file in &files {
            let target = dir.join(&file.path);
            let written = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| quorate_files::write_atomic(&target, file.contents.as_bytes()));
            if let Err(e) = written {
                report_error(&format!("cannot write {}: {e}", target.display()), json);
                return Exit::Invalid;
            }
        }
    }
    if json {
        let listed: Vec<_> = files
            .iter()
            .map(|f| json!({"path": f.path, "purpose": f.purpose, "bytes": f.contents.len()}))
            .collect();
        println!(
            "{}",
            json!({"node": node, "out": out.map(|d| d.display().to_string()), "files": listed})
        );
    } else {
        for f in &files {
            println!("{:<50} {}", f.path, f.purpose);
        }
        match out {
            Some(dir) => say!("wrote {} file(s) for node `{node}` under {}", files.len(), dir.display()),
            None if files.is_empty() => say!("node `{node}` needs no generated files (no DRBD storage, no systemd-managed services)"),
            None => say!("{} file(s) for node `{node}`; write them with --out DIR", files.len()),
        }
    }
    Exit::Ok
}

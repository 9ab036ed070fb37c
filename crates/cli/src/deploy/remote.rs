//! What a deploy does on a node, and how it gets there: `nix copy` to the node's store
//! (`--copy-to`, default `ssh://root@{address}`) and short POSIX shell scripts run
//! through a command prefix (`--exec`, default `ssh root@{address}`). A script goes
//! on the prefix's stdin (`… sh -s`), never on its command line: ssh joins its
//! arguments into one string for the remote shell, so anything with a space would be
//! split again there. Values inside a script are single-quoted.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How to reach the nodes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Remote {
    /// Command prefix that runs a command on the node; `{node}` and `{address}` are
    /// replaced, then it is split at whitespace.
    pub exec: String,
    /// `nix copy --to` store URI; `{node}` and `{address}` are replaced.
    pub copy_to: String,
    /// The store the closures are in (`nix copy --from`); none: the local store.
    pub from_store: Option<String>,
    /// `nix copy --no-check-sigs` (unsigned, input-addressed paths to a store that
    /// checks signatures).
    pub no_check_sigs: bool,
    /// The node's system profile.
    pub profile: String,
}

/// A node as a template sees it.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub node: &'a str,
    pub address: &'a str,
}

/// `value` in single quotes for a POSIX shell.
#[must_use]
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn fill(template: &str, target: &Target<'_>) -> String {
    template
        .replace("{node}", target.node)
        .replace("{address}", target.address)
}

impl Remote {
    fn run(&self, target: &Target<'_>, script: &str, limit: Duration) -> Result<String, String> {
        run_script(&self.exec, target, script, limit)
    }
}

/// Runs `script` with `sh -s` (under `set -eu`) through the command prefix `exec`
/// (`{node}`, `{address}` filled in) on the node; its stdout, or why it failed (its
/// exit status and the last lines it wrote to stderr, or that it did not finish
/// within `limit`: then the prefix is killed).
///
/// # Errors
/// The prefix cannot run, the script fails or overruns.
pub fn run_script(
    exec: &str,
    target: &Target<'_>,
    script: &str,
    limit: Duration,
) -> Result<String, String> {
    {
        let prefix = fill(exec, target);
        let mut words = prefix.split_whitespace();
        let program = words
            .next()
            .ok_or_else(|| "--exec is empty: give the command that runs a command on a node (e.g. `ssh root@{address}`)".to_owned())?;
        let mut child = Command::new(program)
            .args(words)
            .args(["sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{prefix}` ({e})"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A prefix that exits without reading its stdin is reported by its status.
            let _ = stdin.write_all(format!("set -eu\n{script}\n").as_bytes());
        }
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = read(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = read(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "`{prefix}` did not finish within {} s on {} (killed)",
                        limit.as_secs(),
                        target.node
                    ));
                }
                Err(e) => return Err(format!("`{prefix}`: {e}")),
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if status.success() {
            return Ok(stdout.trim().to_owned());
        }
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "{status} on {} ({prefix}){}",
            target.node,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", tail.join(" / "))
            }
        ))
    }
}

impl Remote {
    /// The generation the node's profile points to (none before its first one).
    ///
    /// # Errors
    /// The node cannot be reached.
    pub fn current(&self, target: &Target<'_>) -> Result<Option<String>, String> {
        let p = sh_quote(&self.profile);
        let out = self.run(
            target,
            &format!("if [ -e {p} ]; then readlink -f {p}; fi"),
            Duration::from_secs(60),
        )?;
        Ok((!out.is_empty()).then_some(out))
    }

    /// Points the profile at `path` and activates it (`switch-to-configuration ACTION`),
    /// within `limit`.
    ///
    /// # Errors
    /// The path is missing on the node, or the activation fails.
    pub fn switch(
        &self,
        target: &Target<'_>,
        path: &str,
        action: &str,
        limit: Duration,
    ) -> Result<(), String> {
        let (p, new, action) = (sh_quote(&self.profile), sh_quote(path), sh_quote(action));
        self.run(
            target,
            &format!(
                "test -x {new}/bin/switch-to-configuration || {{ echo \"{path} has no bin/switch-to-configuration: not a system closure\" >&2; exit 1; }}\n\
                 nix-env -p {p} --set {new}\n\
                 {new}/bin/switch-to-configuration {action}"
            ),
            limit,
        )
        .map(drop)
    }

    /// Runs the user's health check on the node (killed after `limit`).
    ///
    /// # Errors
    /// It fails.
    pub fn check(&self, target: &Target<'_>, command: &str, limit: Duration) -> Result<(), String> {
        self.run(target, command, limit).map(drop)
    }

    /// `nix copy` of `path` to the node's store; `progress(done, total)` in paths as
    /// Nix reports them.
    ///
    /// # Errors
    /// Nix cannot be run, or the copy fails (its error message).
    pub fn copy(
        &self,
        target: &Target<'_>,
        path: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), String> {
        let to = fill(&self.copy_to, target);
        let mut c = Command::new("nix");
        c.args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--log-format",
            "internal-json",
            "--to",
            &to,
        ]);
        if let Some(from) = &self.from_store {
            c.args(["--from", from]);
        }
        if self.no_check_sigs {
            c.arg("--no-check-sigs");
        }
        let mut child = c
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `nix copy` ({e}): install Nix"))?;
        let mut errors = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            let mut copying = std::collections::BTreeSet::new();
            let (mut done, mut total) = (0, 0);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Some(event) = line
                    .strip_prefix("@nix ")
                    .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                else {
                    continue;
                };
                match (event["action"].as_str(), event["type"].as_u64()) {
                    // 103: "copying N paths"; 100: one path.
                    (Some("start"), Some(103)) => {
                        if let Some(n) = event["text"]
                            .as_str()
                            .and_then(|t| t.split_whitespace().nth(1))
                            .and_then(|n| n.parse().ok())
                        {
                            total = n;
                            progress(done, total);
                        }
                    }
                    (Some("start"), Some(100)) => {
                        copying.insert(event["id"].as_u64());
                    }
                    (Some("stop"), _) if copying.remove(&event["id"].as_u64()) => {
                        done += 1;
                        progress(done, total.max(done));
                    }
                    (Some("msg"), _) if event["level"].as_u64() == Some(0) => {
                        let msg = event["raw_msg"]
                            .as_str()
                            .or_else(|| event["msg"].as_str())
                            .unwrap_or_default();
                        errors.push(msg.to_owned());
                    }
                    _ => {}
                }
            }
        }
        let status = child.wait().map_err(|e| format!("nix copy: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "nix copy {path} --to {to}: {}",
                if errors.is_empty() {
                    status.to_string()
                } else {
                    errors.join(" / ")
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let out = Command::new("sh")
            .args(["-c", &format!("printf %s {}", sh_quote("x' ; echo no '$y"))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x' ; echo no '$y");
    }

    fn local() -> Remote {
        Remote {
            exec: "env".into(),
            copy_to: String::new(),
            from_store: None,
            no_check_sigs: false,
            profile: "/nonexistent/profile".into(),
        }
    }

    const HERE: Target<'static> = Target {
        node: "here",
        address: "127.0.0.1",
    };

    #[test]
    fn scripts_reach_the_shell_whole_and_report_how_they_failed() {
        let r = local();
        r.check(
            &HERE,
            r#"test "a b" = 'a b' && [ "$(echo x)" = x ]"#,
            Duration::from_secs(10),
        )
        .unwrap();
        let e = r
            .check(&HERE, "echo broken >&2; exit 3", Duration::from_secs(10))
            .unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("broken"), "{e}");
        assert_eq!(r.current(&HERE).unwrap(), None, "no profile yet");
    }

    #[test]
    fn a_script_that_hangs_is_killed_at_its_limit() {
        let start = Instant::now();
        let e = local()
            .check(&HERE, "sleep 30", Duration::from_millis(500))
            .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn an_exec_that_cannot_run_is_an_error_not_a_panic() {
        let mut r = local();
        r.exec = "/nonexistent/ssh {address}".into();
        let e = r.current(&HERE).unwrap_err();
        assert!(e.contains("cannot run `/nonexistent/ssh 127.0.0.1`"), "{e}");
        r.exec = "  ".into();
        assert!(r.current(&HERE).unwrap_err().contains("--exec is empty"));
    }

    #[test]
    fn templates_name_the_node_and_its_address() {
        let t = Target {
            node: "n2",
            address: "10.0.0.2",
        };
        assert_eq!(fill("ssh root@{address}", &t), "ssh root@10.0.0.2");
        assert_eq!(fill("local?root=/s/{node}", &t), "local?root=/s/n2");
    }
}

//! What a deploy does on a node, and how it gets there: `nix copy` to the node's store
//! (`--copy-to`, default `ssh://root@{address}`) and short POSIX shell scripts run
//! through a command prefix (`--exec`, default `ssh root@{address}`). A script goes
//! on the prefix's stdin (`… sh -s`), never on its command line: ssh joins its
//! arguments into one string for the remote shell, so anything with a space would be
//! split again there. Values inside a script are single-quoted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

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
    /// Runs `script` with `sh` on the node; its stdout, or why it failed (its exit
    /// status and the last lines it wrote to stderr).
    fn run(&self, target: &Target<'_>, script: &str) -> Result<String, String> {
        let prefix = fill(&self.exec, target);
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
        let out = child
            .wait_with_output()
            .map_err(|e| format!("`{prefix}`: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "{} on {} ({}){}",
            out.status,
            target.node,
            prefix,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", tail.join(" / "))
            }
        ))
    }

    /// The generation the node's profile points to (none before its first one).
    ///
    /// # Errors
    /// The node cannot be reached.
    pub fn current(&self, target: &Target<'_>) -> Result<Option<String>, String> {
        let p = sh_quote(&self.profile);
        let out = self.run(target, &format!("if [ -e {p} ]; then readlink -f {p}; fi"))?;
        Ok((!out.is_empty()).then_some(out))
    }

    /// Points the profile at `path` and activates it (`switch-to-configuration ACTION`).
    ///
    /// # Errors
    /// The path is missing on the node, or the activation fails.
    pub fn switch(&self, target: &Target<'_>, path: &str, action: &str) -> Result<(), String> {
        let (p, new, action) = (sh_quote(&self.profile), sh_quote(path), sh_quote(action));
        self.run(
            target,
            &format!(
                "test -x {new}/bin/switch-to-configuration || {{ echo \"{path} has no bin/switch-to-configuration: not a system closure\" >&2; exit 1; }}\n\
                 nix-env -p {p} --set {new}\n\
                 {new}/bin/switch-to-configuration {action}"
            ),
        )
        .map(drop)
    }

    /// Runs the user's health check on the node.
    ///
    /// # Errors
    /// It fails.
    pub fn check(&self, target: &Target<'_>, command: &str) -> Result<(), String> {
        self.run(target, command).map(drop)
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

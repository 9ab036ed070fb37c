//! Running the storage tools (`drbdadm`, `blkid`, `mkfs.*`, `mount`, `gluster`): a
//! [`Runner`] trait with the real one ([`SystemRunner`]) and a recording one
//! ([`RecordedRunner`]) that the tests script, so that command sequences are tested
//! exactly where the real tools (a DRBD kernel module) are not available.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

/// What a command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code (None when killed by a signal or timed out).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl CommandOutput {
    /// Exit code 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A successful output with `stdout`.
    #[must_use]
    pub fn ok(stdout: &str) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.to_owned(),
            stderr: String::new(),
        }
    }

    /// A failed output with `code` and `stderr`.
    #[must_use]
    pub fn failed(code: i32, stderr: &str) -> Self {
        Self {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        }
    }
}

/// A boxed future, so that runners can be used as trait objects.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<CommandOutput>> + Send + 'a>>;

/// Runs a program with arguments, killed after `timeout`.
pub trait Runner: Send + Sync + std::fmt::Debug {
    /// Runs `program args…`.
    fn run<'a>(&'a self, program: &'a str, args: &'a [&'a str], timeout: Duration)
        -> RunFuture<'a>;
}

/// The real thing: `tokio::process`, killed on timeout.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [&'a str],
        timeout: Duration,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(timeout, child).await {
                Ok(out) => {
                    let out = out?;
                    Ok(CommandOutput {
                        code: out.status.code(),
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    })
                }
                Err(_) => Ok(CommandOutput {
                    code: None,
                    stdout: String::new(),
                    stderr: format!("timed out after {timeout:?}"),
                }),
            }
        })
    }
}

/// Records every command line and answers from a script: the first scripted
/// `(prefix, output)` whose prefix starts the command line is used (and consumed);
/// unscripted commands succeed with empty output.
#[derive(Debug, Default)]
pub struct RecordedRunner {
    calls: Mutex<Vec<String>>,
    script: Mutex<VecDeque<(String, CommandOutput)>>,
}

impl RecordedRunner {
    /// Scripts the answer to the next command line starting with `prefix`.
    #[must_use]
    pub fn answer(self, prefix: &str, output: CommandOutput) -> Self {
        if let Ok(mut script) = self.script.lock() {
            script.push_back((prefix.to_owned(), output));
        }
        self
    }

    /// The command lines run so far.
    #[must_use]
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Runner for RecordedRunner {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [&'a str],
        _timeout: Duration,
    ) -> RunFuture<'a> {
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(line.clone());
        }
        let answer = self.script.lock().ok().and_then(|mut script| {
            let at = script
                .iter()
                .position(|(prefix, _)| line.starts_with(prefix.as_str()))?;
            script.remove(at).map(|(_, out)| out)
        });
        Box::pin(async move { Ok(answer.unwrap_or_else(|| CommandOutput::ok(""))) })
    }
}

//! The local control socket: one JSON request line in, one JSON reply line out.
//! Mode 0600: only the agent's user (root on NixOS) may talk to it; with a read-only
//! group, mode 0660 and that group, whose members may only read (status, events,
//! explain).
//!
//! The socket appears at its path with its final mode and group at once: it is bound
//! in a private directory and renamed into place. Its directory must belong to the
//! agent's user (or root) and be writable by no one else, or someone could put their
//! own socket there.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use quorate_api::{ControlReply, ControlRequest, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::{AgentError, Node};

/// The group whose members may read the cluster's state through the socket.
pub(crate) fn resolve_group(group: &str) -> Result<nix::unistd::Gid, AgentError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(gid));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(AgentError::Input(format!(
            "no group `{group}` for --read-only-group\n  help: create it, or give a group name or number that exists"
        ))),
    }
}

/// Refuses a socket directory someone else could write to.
fn check_directory(dir: &Path) -> Result<(), AgentError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        AgentError::Input(format!(
            "cannot use {} for the control socket: {e}",
            dir.display()
        ))
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        return Err(AgentError::Input(format!("the control socket's directory {} belongs to uid {}, not to this agent's user or root\n  help: use a directory of your own (--socket or --data-dir)", dir.display(), meta.uid())));
    }
    if mode & 0o022 != 0 {
        return Err(AgentError::Input(format!("the control socket's directory {} is writable by others (mode {mode:o}): anyone could put their own socket there\n  help: `chmod go-w {}`, or use another directory (--socket)", dir.display(), dir.display())));
    }
    Ok(())
}

/// Binds the socket, replacing a stale file but never a live agent's socket. With
/// `group`, the socket is mode 0660 and belongs to it; otherwise 0600.
pub(crate) fn bind(
    path: &Path,
    group: Option<nix::unistd::Gid>,
) -> Result<UnixListener, AgentError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        AgentError::Input(format!(
            "cannot {what} the control socket {}: {e}",
            path.display()
        ))
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError::Input(format!("another agent is already listening on {}\n  help: stop it, or use another --data-dir / --socket", path.display())));
        }
        let _ = std::fs::remove_file(path);
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create the directory of", &e))?;
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    check_directory(dir)?;
    // Bound where only this user can reach it, given its mode and group, then moved
    // into place: never visible with a wider mode, not even for an instant.
    let private = dir.join(format!(".control-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| fail("prepare", &e))?;
    let staged = private.join("control.sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(|e| fail("create", &e))?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail("restrict", &e))?;
        if let Some(gid) = group {
            nix::unistd::chown(&staged, None, Some(gid))
                .map_err(|e| fail("set the group of", &e))?;
        }
        std::fs::rename(&staged, path).map_err(|e| fail("move into place", &e))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// True when the peer at the other end may operate, not only read: the agent's own
/// user or root.
fn may_operate(uid: Option<u32>) -> bool {
    uid.is_some_and(|uid| uid == 0 || uid == nix::unistd::geteuid().as_raw())
}

pub(crate) async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let caller = crate::Caller {
                node: node.name.clone(),
                user: uid.map(user_name),
                forwarded: false,
            };
            let operator = may_operate(uid);
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let limited = BufReader::new(read)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await;
            let reply = match limited.map_err(|e| e.to_string()).and_then(|_| {
                serde_json::from_str::<ControlRequest>(&line).map_err(|e| e.to_string())
            }) {
                Ok(request) if !operator && !request.is_read_only() => ControlReply::Refused {
                    exit_code: 1,
                    message: format!(
                        "permission denied: {} may read the cluster's state here (the read-only group), not change it\n  help: run it as root",
                        caller.user.as_deref().unwrap_or("this user")
                    ),
                    changes: serde_json::Value::Null,
                },
                Ok(request) => node.handle(request, &caller).await,
                Err(e) => ControlReply::Refused {
                    exit_code: 1,
                    message: format!("bad control request: {e}"),
                    changes: serde_json::Value::Null,
                },
            };
            let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

/// The name of user `uid` (from the passwd database), or `uid<N>`.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid{uid}"), |u| u.name)
}

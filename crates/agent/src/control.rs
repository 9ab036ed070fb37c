//! The local control socket: one JSON request line in, one JSON reply line out.
//! Mode 0600: only the agent's user (root on NixOS) may talk to it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use quorate_api::{ControlReply, ControlRequest, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::{AgentError, Node};

/// Binds the socket, replacing a stale file but never a live agent's socket.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError::Input(format!("another agent is already listening on {}\n  help: stop it, or use another --data-dir / --socket", path.display())));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        AgentError::Input(format!(
            "cannot create the control socket {}: {e}",
            path.display()
        ))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| AgentError::Input(format!("cannot restrict {}: {e}", path.display())))?;
    Ok(listener)
}

pub(crate) async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let caller = crate::Caller {
                node: node.name.clone(),
                user: stream.peer_cred().ok().map(|c| user_name(c.uid())),
                forwarded: false,
            };
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let limited = BufReader::new(read)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await;
            let reply = match limited.map_err(|e| e.to_string()).and_then(|_| {
                serde_json::from_str::<ControlRequest>(&line).map_err(|e| e.to_string())
            }) {
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

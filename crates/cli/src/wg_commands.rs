//! `quorate wg …` (the node's WireGuard key) and `quorate net …` (the mesh interface).

use std::path::Path;

use serde_json::json;

use crate::exit::Exit;

/// `quorate wg keygen`: the node's private key into the data dir (kept when present,
/// unless `force`), its public key on stdout.
pub fn keygen(data_dir: &Path, force: bool, json_out: bool) -> Exit {
    match quorate_wireguard::keys::keygen(data_dir, force) {
        Ok(made) => {
            if json_out {
                println!(
                    "{}",
                    json!({
                        "public_key": made.public_key,
                        "created": made.created,
                        "private_key_file": made.path,
                    })
                );
            } else {
                println!("{}", made.public_key);
                let what = if made.created {
                    "wrote a new private key to"
                } else {
                    "kept the existing private key in"
                };
                eprintln!(
                    "{what} {} (0600; it never leaves this node)\nput the public key above into the spec as\n  [nodes.<this node>.wireguard]\n  public_key = \"{}\"",
                    made.path.display(),
                    made.public_key
                );
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `quorate wg rotate`: the next key, its public key on stdout.
pub fn rotate(data_dir: &Path, json_out: bool) -> Exit {
    match quorate_wireguard::keys::rotate(data_dir) {
        Ok(next) => {
            if json_out {
                println!(
                    "{}",
                    json!({"public_key": next.public_key, "created": next.created, "next_key_file": next.path})
                );
            } else {
                println!("{}", next.public_key);
                eprintln!(
                    "{} {} (0600). Next: set this node's `wireguard.public_key` to the key above in the spec and `quorate apply`; the mesh switches to it once applied",
                    if next.created { "wrote the next private key to" } else { "a rotation is pending already:" },
                    next.path.display()
                );
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `quorate wg pubkey`: the public key of the data dir's private key.
pub fn pubkey(data_dir: &Path) -> Exit {
    match quorate_wireguard::keys::read_private(data_dir)
        .and_then(|k| quorate_wireguard::keys::public_of(&k))
    {
        Ok(public) => {
            println!("{public}");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `quorate net up`: the mesh interface from spec + lock + the data dir's key.
pub fn up(spec: &Path, lock: &Path, node: &str, data_dir: &Path, json_out: bool) -> Exit {
    let result = (|| -> Result<quorate_wireguard::link::Up, String> {
        let (spec, lock) = load(spec, lock)?;
        let mesh = quorate_render::mesh(&spec, &lock, node).map_err(|e| e.to_string())?;
        let declared = spec
            .nodes
            .get(node)
            .and_then(|n| n.wireguard.as_ref())
            .map(|w| w.public_key.clone());
        // A pending rotation (`wg rotate`) whose key the spec declares now: it is done.
        let next = quorate_wireguard::keys::read_next(data_dir).map_err(|e| e.to_string())?;
        if let Some(next) = next {
            let public = quorate_wireguard::keys::public_of(&next).map_err(|e| e.to_string())?;
            if declared.as_deref() == Some(public.as_str()) {
                quorate_wireguard::keys::promote_next(data_dir).map_err(|e| e.to_string())?;
            }
        }
        let private = quorate_wireguard::keys::read_private(data_dir).map_err(|e| e.to_string())?;
        let public = quorate_wireguard::keys::public_of(&private).map_err(|e| e.to_string())?;
        if declared.as_deref() != Some(public.as_str()) {
            return Err(format!(
                "the spec's public key for `{node}` ({}) is not this data dir's ({public})\n  help: put `public_key = \"{public}\"` under [nodes.{node}.wireguard], or point --data-dir at the node's own data dir",
                declared.as_deref().unwrap_or("none")
            ));
        }
        let underlay = spec.nodes[node].address;
        quorate_wireguard::link::up(&mesh, &private, underlay).map_err(|e| e.to_string())
    })();
    match result {
        Ok(up) => {
            if json_out {
                println!("{}", serde_json::to_string(&up).unwrap_or_default());
            } else {
                println!(
                    "{} up ({:?}): {} mtu {}, {} peers",
                    up.interface, up.backend, up.address, up.mtu, up.peers
                );
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `quorate net down`.
pub fn down() -> Exit {
    match quorate_wireguard::link::down() {
        Ok(existed) => {
            if existed {
                println!("{} removed", quorate_render::WIREGUARD_INTERFACE);
            } else {
                println!("{} was not there", quorate_render::WIREGUARD_INTERFACE);
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `quorate net show`: every peer's handshake age.
pub fn show(json_out: bool) -> Exit {
    match quorate_wireguard::link::peers() {
        Ok(peers) => {
            if json_out {
                println!("{}", serde_json::to_string(&peers).unwrap_or_default());
            } else {
                for p in peers {
                    let age = p
                        .handshake_age_s
                        .map_or_else(|| "never".to_owned(), |s| format!("{s} s ago"));
                    println!(
                        "{}  {}  handshake {age}  rx {} B  tx {} B",
                        p.public_key,
                        p.endpoint.as_deref().unwrap_or("-"),
                        p.rx_bytes,
                        p.tx_bytes
                    );
                }
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

fn load(spec: &Path, lock: &Path) -> Result<(quorate_spec::Spec, quorate_lock::Lock), String> {
    let local = quorate_agent::setup::load_local(spec, lock).map_err(|e| e.to_string())?;
    Ok((local.spec, local.lock))
}

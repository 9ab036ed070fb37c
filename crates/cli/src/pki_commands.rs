//! `quorate ca init|sign|issue` and `quorate cert request`: the cluster CA.
//! Private keys are written 0600 and never printed.

use std::path::Path;
use std::time::Duration;

use crate::exit::Exit;

fn fail(e: &dyn std::fmt::Display) -> Exit {
    eprintln!("error: {e}");
    Exit::Invalid
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// `quorate ca init DIR`
pub fn ca_init(dir: &Path, cluster: &str, valid_days: u32) -> Exit {
    match quorate_pki::init_ca(dir, cluster, days(valid_days)) {
        Ok(cert) => {
            eprintln!("created the cluster CA: {} (certificate) and {} (private key, 0600; keep it off the nodes and out of the Nix store)", cert.display(), dir.join(quorate_pki::CA_KEY).display());
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `quorate ca sign CSR --node NODE`
pub fn ca_sign(ca: &Path, csr: &Path, node: &str, out: Option<&Path>, valid_days: u32) -> Exit {
    match quorate_pki::sign(ca, csr, node, days(valid_days)) {
        Ok(pem) => match out {
            Some(path) => match quorate_files::write_atomic(path, pem.as_bytes()) {
                Ok(()) => {
                    eprintln!("signed a certificate for node `{node}`: {}", path.display());
                    Exit::Ok
                }
                Err(e) => fail(&format!("{}: {e}", path.display())),
            },
            None => {
                print!("{pem}");
                eprintln!("signed a certificate for node `{node}` (printed above; it is public)");
                Exit::Ok
            }
        },
        Err(e) => fail(&e),
    }
}

/// `quorate ca issue NODE`
pub fn ca_issue(ca: &Path, node: &str, out: &Path, valid_days: u32) -> Exit {
    match quorate_pki::issue(ca, node, out, days(valid_days)) {
        Ok(()) => {
            eprintln!("issued node `{node}`: {}/node.pem, node.key (0600) and ca.pem; deliver them to the node's TLS dir with your secret tooling", out.display());
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `quorate ca issue NAME --role ROLE`: a client certificate for the HTTP API.
pub fn ca_issue_client(
    ca: &Path,
    name: &str,
    role: quorate_pki::Role,
    out: &Path,
    valid_days: u32,
) -> Exit {
    match quorate_pki::issue_client(ca, name, role, out, days(valid_days)) {
        Ok(()) => {
            eprintln!(
                "issued `{name}` ({}): {}/client.pem, client.key (0600) and ca.pem, for the HTTP API (e.g. `curl --cert client.pem --key client.key --cacert ca.pem https://NODE:PORT/v1/status`)",
                role.as_str(),
                out.display()
            );
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `quorate token create --role ROLE`
pub fn token_create(data_dir: &Path, name: &str, role: quorate_pki::Role) -> Exit {
    let file = data_dir.join(quorate_http::tokens::TOKENS_FILE);
    match quorate_http::tokens::create(&file, name, role) {
        Ok(token) => {
            println!("{token}");
            eprintln!(
                "a {} token for `{name}`, shown this once (the node keeps its SHA-256 in {}); send it as `Authorization: Bearer TOKEN`",
                role.as_str(),
                file.display()
            );
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `quorate ca rotate --ca OLD --new NEW`
pub fn ca_rotate(old: &Path, new: &Path, cluster: &str, valid_days: u32) -> Exit {
    match quorate_pki::rotate(old, new, cluster, days(valid_days)) {
        Ok(bundle) => {
            println!(
                "the bundle of old + new CA is {bundle}. A rolling change that keeps quorum:
  1. on every node, one at a time: install {bundle} as the node's ca.pem and run
     `systemctl reload quorate` (nodes now trust both CAs);
  2. on every node, one at a time: install a certificate from the new CA
     (`quorate ca issue NODE --ca {new}`, or `ca sign --ca {new}`) and reload;
  3. on every node, one at a time: install {new}/ca.pem as ca.pem and reload
     (the old CA is trusted no more); then retire {old}/ca.key.
`quorate status` stays at quorum throughout; check it between nodes.",
                bundle = bundle.display(),
                new = new.display(),
                old = old.display()
            );
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `quorate cert request NODE`
pub fn cert_request(node: &str, tls_dir: &Path) -> Exit {
    match quorate_pki::request(node, tls_dir) {
        Ok(csr) => {
            eprintln!("created {} (private key, 0600, stays here) and the signing request {}\nnext: take the request to the machine that holds the CA and run `quorate ca sign {} --node {node} --ca CA_DIR --out node.pem`; bring node.pem and ca.pem back to {}", tls_dir.join(quorate_pki::NODE_KEY).display(), csr.display(), csr.display(), tls_dir.display());
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

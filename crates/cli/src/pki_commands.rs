//! `quorate ca init|sign|issue` and `quorate cert request`: the cluster CA.
//! Private keys are written 0600 and never printed.

use std::path::Path;

use crate::exit::Exit;

fn fail(e: &dyn std::fmt::Display) -> Exit {
    eprintln!("error: {e}");
    Exit::Invalid
}

/// `quorate ca init DIR`
pub fn ca_init(dir: &Path, cluster: &str) -> Exit {
    match quorate_pki::init_ca(dir, cluster) {
        Ok(cert) => {
            eprintln!("created the cluster CA: {} (certificate) and {} (private key, 0600; keep it off the nodes and out of the Nix store)", cert.display(), dir.join(quorate_pki::CA_KEY).display());
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `quorate ca sign CSR`
pub fn ca_sign(ca: &Path, csr: &Path, out: Option<&Path>) -> Exit {
    match quorate_pki::sign(ca, csr) {
        Ok((node, pem)) => match out {
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
pub fn ca_issue(ca: &Path, node: &str, out: &Path) -> Exit {
    match quorate_pki::issue(ca, node, out) {
        Ok(()) => {
            eprintln!("issued node `{node}`: {}/node.pem, node.key (0600) and ca.pem; deliver them to the node's TLS dir with your secret tooling", out.display());
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `quorate cert request NODE`
pub fn cert_request(node: &str, tls_dir: &Path) -> Exit {
    match quorate_pki::request(node, tls_dir) {
        Ok(csr) => {
            eprintln!("created {} (private key, 0600, stays here) and the signing request {}\nnext: `quorate ca sign {} --ca CA_DIR --out {}`", tls_dir.join(quorate_pki::NODE_KEY).display(), csr.display(), csr.display(), tls_dir.join(quorate_pki::NODE_CERT).display());
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

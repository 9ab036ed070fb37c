//! API tokens: `quorate token create --role viewer|operator` prints a token once; the
//! node keeps only its SHA-256 (`<data-dir>/api-tokens`, 0600, one JSON object per
//! line), so the file leaks no token. For a browser on an SSH tunnel, where a client
//! certificate is awkward.

use std::path::Path;

use quorate_pki::Role;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The token file's name in the data dir.
pub const TOKENS_FILE: &str = "api-tokens";

/// One line of the token file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    name: String,
    role: String,
    sha256: String,
}

fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a token cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad name, or the file cannot be read or written.
    #[error("{0}")]
    Invalid(String),
}

/// Makes a token for `name` with `role`, records its digest in `file` (temp file +
/// fsync + rename, 0600) and returns it. A name may hold one token: a new one for the
/// same name replaces the old.
///
/// # Errors
/// A name that is not a host label, or the file cannot be read or written.
pub fn create(file: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| TokenError::Invalid(format!("no randomness for a token: {e}")))?;
    let token: String = format!(
        "qrt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    record(file, name, role, &token)?;
    Ok(token)
}

/// Records `token`'s digest for `name` in `file` (e.g. the same token on every node
/// of a sandbox), replacing the name's previous token.
///
/// # Errors
/// A name that is not a host label, or the file cannot be read or written.
pub fn record(file: &Path, name: &str, role: Role, token: &str) -> Result<(), TokenError> {
    if !quorate_pki::is_node_name(name) {
        return Err(TokenError::Invalid(format!(
            "`{name}` is not a token name: use lowercase letters, digits and `-`"
        )));
    }
    let mut entries: Vec<Entry> = read(file)?.into_iter().filter(|e| e.name != name).collect();
    entries.push(Entry {
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        sha256: digest(token),
    });
    let text: String = entries
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|l| l + "\n")
        .collect();
    quorate_files::write_secret(file, text.as_bytes())
        .map_err(|e| TokenError::Invalid(format!("cannot write {}: {e}", file.display())))
}

fn read(file: &Path) -> Result<Vec<Entry>, TokenError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TokenError::Invalid(format!(
            "cannot read {}: {e}",
            file.display()
        ))),
    }
}

/// The name and role of `token`, if `file` holds it.
#[must_use]
pub fn lookup(file: &Path, token: &str) -> Option<(String, Role)> {
    let wanted = digest(token);
    read(file).ok()?.into_iter().find_map(|e| {
        // Digests of equal length: compare every byte, whatever the first difference.
        let same = e.sha256.len() == wanted.len()
            && e.sha256
                .bytes()
                .zip(wanted.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then(|| Some((e.name, e.role.parse().ok()?))).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_shown_once_and_only_its_digest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(TOKENS_FILE);
        let viewer = create(&file, "browser", Role::Viewer).unwrap();
        let ops = create(&file, "ci", Role::Operator).unwrap();
        assert_eq!(
            lookup(&file, &viewer),
            Some(("browser".into(), Role::Viewer))
        );
        assert_eq!(lookup(&file, &ops), Some(("ci".into(), Role::Operator)));
        assert_eq!(lookup(&file, "qrt_00"), None);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&viewer) && !text.contains(&ops));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A new token for a name replaces the old one.
        let again = create(&file, "browser", Role::Viewer).unwrap();
        assert_eq!(lookup(&file, &viewer), None);
        assert!(lookup(&file, &again).is_some());
        assert!(create(&file, "Bad Name", Role::Viewer).is_err());
    }
}

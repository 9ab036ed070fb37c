//! The node's WireGuard key pair: X25519, base64 as `wg genkey` / `wg pubkey` write it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::WgError;

/// The private key's file in a data dir.
#[must_use]
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(quorate_render::WIREGUARD_KEY_FILE)
}

/// The next private key during a rotation (`quorate wg rotate`), until the applied
/// spec declares its public key.
#[must_use]
pub fn next_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(format!("{}.next", quorate_render::WIREGUARD_KEY_FILE))
}

/// A fresh private key, clamped as `wg genkey` clamps it, in base64.
#[must_use]
pub fn generate() -> String {
    let mut bytes = StaticSecret::random().to_bytes();
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    STANDARD.encode(bytes)
}

/// The public key of a base64 private key.
///
/// # Errors
/// The private key is not 32 bytes of base64.
pub fn public_of(private: &str) -> Result<String, WgError> {
    let bytes: [u8; 32] = STANDARD
        .decode(private.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WgError::Key("not a WireGuard private key (32 bytes of base64)".into()))?;
    let public = PublicKey::from(&StaticSecret::from(bytes));
    Ok(STANDARD.encode(public.as_bytes()))
}

/// Reads the node's private key, refusing a file others may read.
///
/// # Errors
/// The file is missing, readable by group or others, or not a key.
pub fn read_private(data_dir: &Path) -> Result<String, WgError> {
    read_key_file(data_dir, &key_path(data_dir))
}

/// The next private key of a rotation, if one is pending.
///
/// # Errors
/// The file exists but is readable by others or not a key.
pub fn read_next(data_dir: &Path) -> Result<Option<String>, WgError> {
    let path = next_key_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    read_key_file(data_dir, &path).map(Some)
}

/// `quorate wg rotate`: makes the next key (kept when one is pending already, so
/// running it twice changes nothing) and returns its public key. The node keeps using
/// its current key until the applied spec declares the new one.
///
/// # Errors
/// The data dir cannot be written, or a pending next key is unusable.
pub fn rotate(data_dir: &Path) -> Result<Keygen, WgError> {
    read_private(data_dir)?;
    let path = next_key_path(data_dir);
    if let Some(next) = read_next(data_dir)? {
        return Ok(Keygen {
            public_key: public_of(&next)?,
            created: false,
            path,
        });
    }
    write_new(path)
}

/// Writes a fresh private key to `path` (0600, temp file + fsync + rename).
fn write_new(path: PathBuf) -> Result<Keygen, WgError> {
    let private = generate();
    quorate_files::write_secret(&path, format!("{private}\n").as_bytes())
        .map_err(|e| WgError::Key(format!("cannot write {}: {e}", path.display())))?;
    Ok(Keygen {
        public_key: public_of(&private)?,
        created: true,
        path,
    })
}

/// Ends a rotation: the next key becomes the key (rename, so the data dir holds one
/// or the other whole).
///
/// # Errors
/// The rename fails.
pub fn promote_next(data_dir: &Path) -> Result<(), WgError> {
    let (next, key) = (next_key_path(data_dir), key_path(data_dir));
    std::fs::rename(&next, &key)
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
        .map_err(|e| {
            WgError::Key(format!(
                "cannot replace {} with {}: {e}",
                key.display(),
                next.display()
            ))
        })
}

fn read_key_file(data_dir: &Path, path: &Path) -> Result<String, WgError> {
    let path = path.to_owned();
    let meta = std::fs::metadata(&path).map_err(|e| {
        WgError::Key(format!(
            "cannot read the WireGuard key {}: {e}\n  help: run `quorate wg keygen --data-dir {}` on this node and put the public key it prints into the spec",
            path.display(),
            data_dir.display()
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(WgError::Key(format!(
            "{} is readable by others (mode {:o})\n  help: chmod 600 {} — and, since others could read it, generate a new key (`quorate wg keygen --force`)",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let key = std::fs::read_to_string(&path)
        .map_err(|e| WgError::Key(format!("cannot read {}: {e}", path.display())))?;
    public_of(&key).map_err(|_| {
        WgError::Key(format!(
            "{} does not hold a WireGuard private key\n  help: move it away and run `quorate wg keygen` again",
            path.display()
        ))
    })?;
    Ok(key.trim().to_owned())
}

/// What [`keygen`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keygen {
    /// The node's public key.
    pub public_key: String,
    /// Whether a new key was written (false: the existing one was kept).
    pub created: bool,
    /// The private key's file.
    pub path: PathBuf,
}

/// Makes sure the data dir holds a private key: keeps an existing one (so running it
/// twice changes nothing) unless `force`, else writes a new one (0600, temp file +
/// fsync + rename).
///
/// # Errors
/// The data dir cannot be written, or an existing key file is unusable (without
/// `force`).
pub fn keygen(data_dir: &Path, force: bool) -> Result<Keygen, WgError> {
    let path = key_path(data_dir);
    if !force && path.exists() {
        let private = read_private(data_dir)?;
        return Ok(Keygen {
            public_key: public_of(&private)?,
            created: false,
            path,
        });
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| WgError::Key(format!("cannot create {}: {e}", data_dir.display())))?;
    write_new(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_once_and_derives_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = keygen(dir.path(), false).unwrap();
        assert!(first.created);
        let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = keygen(dir.path(), false).unwrap();
        assert!(!again.created, "a second run keeps the key");
        assert_eq!(again.public_key, first.public_key);
        let forced = keygen(dir.path(), true).unwrap();
        assert_ne!(forced.public_key, first.public_key);
        // What `check` accepts in the spec.
        assert!(quorate_spec::validate::is_wireguard_key(&forced.public_key));
        assert!(!quorate_spec::validate::is_wireguard_key(
            &forced.public_key[1..]
        ));
    }

    #[test]
    fn the_public_key_matches_wireguards_own_derivation() {
        // RFC 7748 §6.1, Alice's key pair (the private key as given, unclamped; the
        // derivation clamps).
        let private = STANDARD.encode([
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ]);
        let public = STANDARD.encode([
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ]);
        assert_eq!(public_of(&private).unwrap(), public);
    }

    #[test]
    fn a_rotation_keeps_the_key_until_the_next_one_is_promoted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            rotate(dir.path()).is_err(),
            "nothing to rotate without a key"
        );
        let first = keygen(dir.path(), false).unwrap();
        let next = rotate(dir.path()).unwrap();
        assert!(next.created);
        assert_ne!(next.public_key, first.public_key);
        assert_eq!(rotate(dir.path()).unwrap().public_key, next.public_key);
        let current = read_private(dir.path()).unwrap();
        assert_eq!(public_of(&current).unwrap(), first.public_key);
        promote_next(dir.path()).unwrap();
        let current = read_private(dir.path()).unwrap();
        assert_eq!(public_of(&current).unwrap(), next.public_key);
        assert_eq!(read_next(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = keygen(dir.path(), false).unwrap();
        std::fs::set_permissions(&made.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(dir.path()).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        std::fs::set_permissions(&made.path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&made.path, "not a key\n").unwrap();
        let err = read_private(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("does not hold a WireGuard private key"),
            "{err}"
        );
    }
}

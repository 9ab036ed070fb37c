//! Reading and atomically writing lock files.

use std::path::Path;

use crate::{Lock, LockError};

/// Reads the lock at `path`; `Ok(None)` when there is no file yet.
///
/// # Errors
/// I/O errors other than "not found", and every [`Lock::from_json`] error.
pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Lock::from_json(&text, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LockError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes the lock file atomically (see [`quorate_files::write_atomic`]).
///
/// # Errors
/// Any I/O error; the previous file is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    quorate_files::write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_lock_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("quorate.lock")).unwrap().is_none());
    }
}

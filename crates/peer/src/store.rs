//! The native peer's key store on disk: [`DirStorage`] keeps each record of client-core's
//! [`KeyStore`](peerbubble_client_core::keystore::KeyStore) in a file of its own in one directory (mode 0700,
//! files 0600). Records are encrypted by the key store before they get here; this only makes a `put` atomic
//! (written to a temporary file, flushed to disk, renamed over the old one, the directory flushed), as the
//! key store requires.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use peerbubble_client_core::keystore::{Storage, StorageError};

/// Records as files in a directory; a record's file name is its name in hex (names may hold `/`).
#[derive(Debug, Clone)]
pub struct DirStorage {
    dir: PathBuf,
}

fn io(what: &str, err: std::io::Error) -> StorageError {
    StorageError(format!("{what}: {err}"))
}

impl DirStorage {
    /// The store in `dir`, created (0700) when missing.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(|e| io("cannot create the key store directory", e))?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// Whether the directory holds a key store already (its header record).
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(std::fs::read_dir(&self.dir).map_err(|e| io("cannot read the key store", e))?.next().is_none())
    }

    fn path(&self, name: &str) -> PathBuf {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.rec"))
    }
}

fn unhex(file: &str) -> Option<String> {
    let hex = file.strip_suffix(".rec")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

impl Storage for DirStorage {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match std::fs::read(self.path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read a record", e)),
        }
    }

    fn put(&mut self, name: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let path = self.path(name);
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| io("cannot write a record", e))?;
        file.write_all(&value).map_err(|e| io("cannot write a record", e))?;
        file.sync_all().map_err(|e| io("cannot flush a record", e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io("cannot replace a record", e))?;
        // The rename itself must survive a power cut.
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<(), StorageError> {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot delete a record", e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io("cannot read the key store", e))? {
            let entry = entry.map_err(|e| io("cannot read the key store", e))?;
            if let Some(name) = entry.file_name().to_str().and_then(unhex)
                && name.starts_with(prefix)
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_list_by_prefix_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DirStorage::open(&dir.path().join("store")).unwrap();
        assert!(s.is_empty().unwrap());
        s.put("member/identity", b"one".to_vec()).unwrap();
        s.put("member/profile", b"two".to_vec()).unwrap();
        s.put("client/mls", b"three".to_vec()).unwrap();
        s.put("member/identity", b"one again".to_vec()).unwrap();
        assert_eq!(s.get("member/identity").unwrap().as_deref(), Some(&b"one again"[..]));
        assert_eq!(s.list("member/").unwrap(), ["member/identity", "member/profile"]);
        s.delete("member/profile").unwrap();
        s.delete("member/profile").unwrap();
        assert_eq!(s.get("member/profile").unwrap(), None);
        // Reopened: the same records.
        let again = DirStorage::open(&dir.path().join("store")).unwrap();
        assert_eq!(again.list("").unwrap(), ["client/mls", "member/identity"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("store")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}

//! Where the bubble's directory comes from (a file, the admin API) and how it is followed. The need-to-know
//! policy itself (DESIGN.md invariant 4: who sees whom, and each member's slice) is
//! [`peerbubble_proto::visibility`], shared with the admin API so that its "view as member" is the same code.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Largest bubble file accepted, in bytes.
pub const MAX_BUBBLE_FILE_BYTES: usize = 64 << 20;

/// Why a directory could not be loaded. The previous directory stays in force.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The source could not be read.
    #[error("cannot read the bubble file {path}: {reason}")]
    Read {
        /// Where it was read from.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The YAML is not a valid bubble file (unknown keys are refused).
    #[error("invalid bubble file: {0}")]
    Parse(String),
    /// The content is well-formed but inconsistent (duplicate, unknown or invalid ids, names or keys).
    #[error("invalid bubble: {0}")]
    Invalid(String),
}

impl From<InvalidDirectory> for DirectoryError {
    fn from(err: InvalidDirectory) -> Self {
        DirectoryError::Invalid(err.0)
    }
}

pub use peerbubble_proto::directory::{BubbleFile, CategoryFile, MemberFile};
pub use peerbubble_proto::visibility::{Directory, InvalidDirectory, Member};

/// Parses and compiles YAML bytes; the version is their SHA-256.
pub fn from_yaml(bytes: &[u8]) -> Result<Directory, DirectoryError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DirectoryError::Parse("not UTF-8".into()))?;
    let file: BubbleFile = serde_saphyr::from_str(text).map_err(|err| DirectoryError::Parse(err.to_string()))?;
    Ok(Directory::compile(file, content_version(bytes))?)
}

/// The version of a bubble file: the SHA-256 of its bytes, in hex.
fn content_version(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a bubble-server gets its directory. The file source exists now; the admin API (which serves each
/// bubble its own slice, authenticated per bubble) implements this trait later.
pub trait DirectorySource: Send + Sync + 'static {
    /// Loads the directory if its version differs from `current` (`None` before the first load); `Ok(None)`
    /// means unchanged, so that following a large bubble costs nothing between changes.
    fn load(&self, current: Option<&str>) -> impl Future<Output = Result<Option<Directory>, DirectoryError>> + Send;
    /// Resolves when the directory may have changed (a poll interval, a notification, a long poll).
    fn changed(&self) -> impl Future<Output = ()> + Send;
    /// Where it comes from, for logs.
    fn describe(&self) -> String;
}

/// A YAML bubble file on disk, checked for changes at an interval (robust to editors' rename-and-replace and
/// to Kubernetes ConfigMap symlink swaps, which file-event APIs miss).
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    interval: Duration,
}

impl FileSource {
    /// Follows `path`, checking every `interval`.
    pub fn new(path: PathBuf, interval: Duration) -> Self {
        Self { path, interval }
    }
}

impl DirectorySource for FileSource {
    async fn load(&self, current: Option<&str>) -> Result<Option<Directory>, DirectoryError> {
        let read_err = |reason: String| DirectoryError::Read { path: self.path.clone(), reason };
        let meta = tokio::fs::metadata(&self.path).await.map_err(|e| read_err(e.to_string()))?;
        if meta.len() > MAX_BUBBLE_FILE_BYTES as u64 {
            return Err(read_err(format!("larger than {MAX_BUBBLE_FILE_BYTES} bytes")));
        }
        let bytes = tokio::fs::read(&self.path).await.map_err(|e| read_err(e.to_string()))?;
        if current == Some(content_version(&bytes).as_str()) {
            return Ok(None);
        }
        from_yaml(&bytes).map(Some)
    }

    async fn changed(&self) {
        tokio::time::sleep(self.interval).await;
    }

    fn describe(&self) -> String {
        format!("bubble file {}", self.path.display())
    }
}

/// Follows a source for ever: publishes each new version, keeps the last good directory when a load fails.
pub(crate) async fn follow<S: DirectorySource>(
    source: S,
    tx: watch::Sender<Option<Arc<Directory>>>,
    metrics: crate::metrics::Metrics,
) {
    let mut last_error: Option<String> = None;
    loop {
        let current = tx.borrow().as_ref().map(|d| d.version().to_owned());
        match source.load(current.as_deref()).await {
            Ok(None) => last_error = None,
            Ok(Some(directory)) => {
                last_error = None;
                if current.as_deref() != Some(directory.version()) {
                    tracing::info!(source = %source.describe(), bubble = directory.bubble(), members = directory.len(), "directory loaded");
                    metrics.directory_reload("ok");
                    tx.send_replace(Some(Arc::new(directory)));
                }
            }
            Err(err) => {
                let text = err.to_string();
                // Log each distinct failure once, not every poll.
                if last_error.as_deref() != Some(&text) {
                    tracing::error!(source = %source.describe(), error = %text, "directory not reloaded; keeping the previous one");
                    metrics.directory_reload("error");
                    last_error = Some(text);
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        source.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use peerbubble_proto::{IdentityKey, PublicKey};

    fn pk(seed: u8) -> PublicKey {
        IdentityKey::from_seed(&[seed; 32]).public_key()
    }

    fn dir(yaml: &str) -> Result<Directory, DirectoryError> {
        from_yaml(yaml.as_bytes())
    }

    fn sample() -> Result<Directory, DirectoryError> {
        dir(&format!(
            "bubble: b\ncategories:\n  - id: medics\n  - id: logistics\n  - id: command\n    sees: [medics, logistics]\n  - id: press\n\
             members:\n  - {{public_key: {}, display_name: Ann, categories: [medics]}}\n\
             \x20 - {{public_key: {}, display_name: Bob, categories: [medics, logistics]}}\n\
             \x20 - {{public_key: {}, display_name: Cat, categories: [logistics]}}\n\
             \x20 - {{public_key: {}, display_name: Dan, categories: [command]}}\n\
             \x20 - {{public_key: {}, display_name: Eve, categories: [press]}}\n",
            pk(1),
            pk(2),
            pk(3),
            pk(4),
            pk(5)
        ))
    }

    #[test]
    fn visibility_follows_categories_and_sees() -> Result<(), DirectoryError> {
        let d = sample()?;
        let [ann, bob, cat, dan, eve] = [1, 2, 3, 4, 5].map(|s| pk(s).member_id());
        assert!(d.sees(&ann, &bob) && d.sees(&bob, &ann));
        assert!(!d.sees(&ann, &cat) && !d.sees(&cat, &ann));
        assert!(d.sees(&bob, &cat));
        assert!(d.sees(&dan, &ann) && d.sees(&ann, &dan), "sees is symmetric");
        assert!(d.sees(&dan, &cat));
        assert!(!d.sees(&eve, &ann) && d.visible(&eve).is_empty());
        assert_eq!(d.visible(&dan), HashSet::from([ann, bob, cat]));
        Ok(())
    }

    #[test]
    fn slice_reveals_only_known_categories() -> Result<(), DirectoryError> {
        let d = sample()?;
        let ann = pk(1).member_id();
        let slice = d.slice(&ann, |_| false);
        let names: Vec<_> = slice.iter().map(|e| e.display_name.as_str()).collect();
        assert_eq!(names, ["Bob", "Dan"]);
        // Ann must not learn that Bob is also in logistics.
        assert_eq!(slice[0].categories, ["medics"]);
        assert_eq!(slice[1].categories, ["command"]);
        Ok(())
    }

    #[test]
    fn inconsistent_files_are_refused() {
        let key = pk(1);
        for (yaml, needle) in [
            (
                format!("bubble: b\nmembers:\n  - {{public_key: {key}, display_name: A, categories: [nope]}}\n"),
                "unknown category",
            ),
            ("bubble: b\ncategories: [{id: x}, {id: x}]\n".to_owned(), "twice"),
            ("bubble: b\ncategories: [{id: x, sees: [y]}]\n".to_owned(), "unknown category"),
            (
                format!(
                    "bubble: b\nmembers:\n  - {{public_key: {key}, display_name: A}}\n  - {{public_key: {key}, display_name: B}}\n"
                ),
                "twice",
            ),
            ("bubble: b\nmembers:\n  - {public_key: abc, display_name: A}\n".to_owned(), "public key"),
            ("bubble: B!\n".to_owned(), "bubble id"),
            ("bubble: b\nsecret_key: x\n".to_owned(), "unknown field"),
        ] {
            match dir(&yaml) {
                Err(err) => assert!(err.to_string().contains(needle), "{yaml}: {err}"),
                Ok(_) => panic!("accepted: {yaml}"),
            }
        }
    }
}

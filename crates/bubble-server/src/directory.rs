//! The bubble's directory and need-to-know policy (DESIGN.md invariant 4), and where it comes from.
//!
//! Visibility is symmetric: two members see (and may reach) each other when they share a category, or when a
//! category of one lists a category of the other under `sees` (docs/adr/0003-visibility-policy.md).
//! There is no global view: everything a member is told goes through [`Directory::slice`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerbubble_proto::limits::{MAX_CATEGORIES_PER_MEMBER, is_valid_display_name, is_valid_id};
use peerbubble_proto::{DirectoryEntry, MemberId, PublicKey};
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

pub use peerbubble_proto::directory::{BubbleFile, CategoryFile, MemberFile};

/// A member as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Identity key.
    pub public_key: PublicKey,
    /// Display name.
    pub display_name: String,
    /// Category indices, sorted.
    categories: Vec<u32>,
    /// Categories whose members this member sees, sorted.
    reach: Vec<u32>,
}

/// A compiled directory: members, categories and the visibility relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    bubble: String,
    version: String,
    category_ids: Vec<String>,
    members: HashMap<MemberId, Member>,
    by_category: Vec<Vec<MemberId>>,
}

impl Directory {
    /// Compiles and checks a bubble file. `version` identifies the content (e.g. a hash) so that followers
    /// publish only real changes.
    pub fn compile(file: BubbleFile, version: String) -> Result<Self, DirectoryError> {
        let invalid = |msg: String| Err(DirectoryError::Invalid(msg));
        if !is_valid_id(&file.bubble) {
            return invalid(format!("bubble id {:?} must be 1-64 characters of a-z, 0-9 and -", file.bubble));
        }
        let mut index = HashMap::new();
        for (i, category) in file.categories.iter().enumerate() {
            if !is_valid_id(&category.id) {
                return invalid(format!("category id {:?} must be 1-64 characters of a-z, 0-9 and -", category.id));
            }
            if index.insert(category.id.clone(), i as u32).is_some() {
                return invalid(format!("category {:?} is defined twice", category.id));
            }
        }
        let lookup = |id: &str, whose: &str| {
            index
                .get(id)
                .copied()
                .ok_or_else(|| DirectoryError::Invalid(format!("{whose} names unknown category {id:?}")))
        };
        // reach_of[c] = {c} ∪ c.sees ∪ {d | d.sees ∋ c}: symmetric by construction.
        let mut reach_of: Vec<BTreeSet<u32>> = (0..file.categories.len() as u32).map(|c| BTreeSet::from([c])).collect();
        for (c, category) in file.categories.iter().enumerate() {
            for seen in &category.sees {
                let d = lookup(seen, &format!("category {:?}", category.id))?;
                reach_of[c].insert(d);
                reach_of[d as usize].insert(c as u32);
            }
        }
        let mut members = HashMap::with_capacity(file.members.len());
        let mut by_category = vec![Vec::new(); file.categories.len()];
        for member in file.members {
            let public_key: PublicKey = member
                .public_key
                .parse()
                .map_err(|err| DirectoryError::Invalid(format!("member {:?}: {err}", member.display_name)))?;
            if !is_valid_display_name(&member.display_name) {
                return invalid(format!(
                    "member {public_key}: display name must be 1-64 bytes without control characters"
                ));
            }
            if member.categories.len() > MAX_CATEGORIES_PER_MEMBER {
                return invalid(format!("member {public_key}: at most {MAX_CATEGORIES_PER_MEMBER} categories"));
            }
            let mut categories = Vec::with_capacity(member.categories.len());
            for category in &member.categories {
                categories.push(lookup(category, &format!("member {:?}", member.display_name))?);
            }
            categories.sort_unstable();
            categories.dedup();
            let reach: BTreeSet<u32> = categories.iter().flat_map(|c| reach_of[*c as usize].iter().copied()).collect();
            let id = public_key.member_id();
            for c in &categories {
                by_category[*c as usize].push(id);
            }
            let entry = Member {
                public_key,
                display_name: member.display_name,
                categories,
                reach: reach.into_iter().collect(),
            };
            if members.insert(id, entry).is_some() {
                return invalid(format!("public key {public_key} is listed twice"));
            }
        }
        Ok(Self {
            bubble: file.bubble,
            version,
            category_ids: file.categories.into_iter().map(|c| c.id).collect(),
            members,
            by_category,
        })
    }

    /// Parses and compiles YAML bytes; the version is their SHA-256.
    pub fn from_yaml(bytes: &[u8]) -> Result<Self, DirectoryError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DirectoryError::Parse("not UTF-8".into()))?;
        let file: BubbleFile = serde_saphyr::from_str(text).map_err(|err| DirectoryError::Parse(err.to_string()))?;
        Self::compile(file, content_version(bytes))
    }

    /// The bubble id.
    pub fn bubble(&self) -> &str {
        &self.bubble
    }

    /// Identifies this content.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the bubble has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's id.
    pub fn member_ids(&self) -> impl Iterator<Item = &MemberId> {
        self.members.keys()
    }

    /// A member by id.
    pub fn member(&self, id: &MemberId) -> Option<&Member> {
        self.members.get(id)
    }

    /// May `a` see and reach `b`? A member always "sees" itself (its other sessions).
    pub fn sees(&self, a: &MemberId, b: &MemberId) -> bool {
        if a == b {
            return self.members.contains_key(a);
        }
        match (self.members.get(a), self.members.get(b)) {
            (Some(a), Some(b)) => intersects(&a.reach, &b.categories),
            _ => false,
        }
    }

    /// Members `a` sees, excluding itself, without duplicates.
    pub fn visible(&self, a: &MemberId) -> HashSet<MemberId> {
        let Some(member) = self.members.get(a) else { return HashSet::new() };
        let mut out: HashSet<MemberId> =
            member.reach.iter().flat_map(|c| self.by_category[*c as usize].iter().copied()).collect();
        out.remove(a);
        out
    }

    /// How many members `a` may see, bounded above cheaply (used to pick the cheaper presence fan-out).
    pub fn visible_upper_bound(&self, a: &MemberId) -> usize {
        self.members.get(a).map_or(0, |m| m.reach.iter().map(|c| self.by_category[*c as usize].len()).sum())
    }

    /// The directory slice `a` is allowed to know: visible members, each with only the categories `a` may
    /// know about, sorted by display name then id. `online` says which members have a session.
    pub fn slice(&self, a: &MemberId, online: impl Fn(&MemberId) -> bool) -> Vec<DirectoryEntry> {
        let Some(viewer) = self.members.get(a) else { return Vec::new() };
        let mut entries: Vec<DirectoryEntry> = self
            .visible(a)
            .into_iter()
            .filter_map(|id| self.members.get(&id).map(|m| (id, m)))
            .map(|(id, m)| DirectoryEntry {
                member: id,
                public_key: m.public_key,
                display_name: m.display_name.clone(),
                categories: m
                    .categories
                    .iter()
                    .filter(|c| viewer.reach.binary_search(c).is_ok())
                    .map(|c| self.category_ids[*c as usize].clone())
                    .collect(),
                online: online(&id),
            })
            .collect();
        entries.sort_by(|x, y| x.display_name.cmp(&y.display_name).then(x.member.cmp(&y.member)));
        entries
    }
}

/// The version of a bubble file: the SHA-256 of its bytes, in hex.
fn content_version(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn intersects(sorted_a: &[u32], sorted_b: &[u32]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < sorted_a.len() && j < sorted_b.len() {
        match sorted_a[i].cmp(&sorted_b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
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
        Directory::from_yaml(&bytes).map(Some)
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
    use super::*;
    use peerbubble_proto::IdentityKey;

    fn pk(seed: u8) -> PublicKey {
        IdentityKey::from_seed(&[seed; 32]).public_key()
    }

    fn dir(yaml: &str) -> Result<Directory, DirectoryError> {
        Directory::from_yaml(yaml.as_bytes())
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

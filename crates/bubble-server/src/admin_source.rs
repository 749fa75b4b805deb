//! The directory from the admin API: this bubble's document only, fetched with this bubble's credential,
//! followed with conditional requests. While the admin API is unreachable the server keeps its last directory
//! (the follower keeps the previous one on any error).
//!
//! In Kubernetes the category policy comes from Category resources: the operator renders it into a ConfigMap
//! mounted as a file, and [`AdminApiSource::with_policy_file`] lays it over the admin API's document (see
//! [`overlay_policy`]). The file is re-read at every poll, so a Category change reaches the members within
//! the kubelet's ConfigMap sync and one poll.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use peerbubble_proto::directory::BubbleFile;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};

use crate::directory::{Directory, DirectoryError, DirectorySource};

/// How a bubble-server proves to the admin API which bubble it serves: the bubble's credential, or in a cluster
/// the pod's projected ServiceAccount token. `Debug` never prints it.
#[derive(Clone)]
pub enum BubbleCredential {
    /// A credential given at start.
    Fixed(String),
    /// A file read again for every request: the kubelet rotates a projected token (and updates a Secret) in place.
    File(PathBuf),
}

/// The largest credential or token file read (a projected token is about 1 KiB).
const MAX_CREDENTIAL_BYTES: u64 = 16 * 1024;

impl BubbleCredential {
    /// Wraps the credential the admin API issued when the bubble was created.
    pub fn new(secret: String) -> Self {
        Self::Fixed(secret)
    }

    /// A credential or token kept in `path`, read at every request.
    pub fn from_file(path: PathBuf) -> Self {
        Self::File(path)
    }

    /// What to present now.
    pub async fn bearer(&self) -> Result<String, String> {
        let path = match self {
            Self::Fixed(secret) => return Ok(secret.clone()),
            Self::File(path) => path,
        };
        let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
        let meta = tokio::fs::metadata(path).await.map_err(|e| cannot(&e))?;
        if meta.len() > MAX_CREDENTIAL_BYTES {
            return Err(cannot(&format_args!("larger than {MAX_CREDENTIAL_BYTES} bytes")));
        }
        let text = tokio::fs::read_to_string(path).await.map_err(|e| cannot(&e))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(cannot(&"it is empty"));
        }
        Ok(secret.to_owned())
    }
}

impl std::fmt::Debug for BubbleCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("BubbleCredential(<redacted>)"),
            Self::File(path) => f.debug_tuple("BubbleCredential").field(path).finish(),
        }
    }
}

/// The admin API's explanation of a refusal (its `message`), or the status alone.
pub(crate) async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|body| body.get("message").and_then(|m| m.as_str()).map(str::to_owned));
    match message {
        Some(message) => format!("admin API answered {status}: {message}"),
        None => format!("admin API answered {status}"),
    }
}

/// Follows `GET {admin}/api/v1/bubbles/{bubble}/directory`.
#[derive(Debug)]
pub struct AdminApiSource {
    client: reqwest::Client,
    url: String,
    credential: BubbleCredential,
    interval: Duration,
    etag: Mutex<Option<String>>,
    policy_file: Option<PathBuf>,
    /// The last document from the admin API and the policy version it was compiled with.
    last: Mutex<Option<(BubbleFile, String)>>,
}

/// Lays a category policy (a bubble file with categories only, as the operator renders it) over the admin
/// API's document: the policy's categories replace the document's, and members keep only the categories the
/// policy has (a member whose category is gone sees less, never more).
pub fn overlay_policy(mut file: BubbleFile, policy: &BubbleFile) -> Result<BubbleFile, DirectoryError> {
    if policy.bubble != file.bubble {
        return Err(DirectoryError::Invalid(format!(
            "the policy file is for bubble {:?}, this server serves {:?}",
            policy.bubble, file.bubble
        )));
    }
    if !policy.members.is_empty() {
        return Err(DirectoryError::Invalid("a policy file names categories only, not members".into()));
    }
    file.categories.clone_from(&policy.categories);
    for member in &mut file.members {
        member.categories.retain(|c| policy.categories.iter().any(|p| &p.id == c));
    }
    Ok(file)
}

impl AdminApiSource {
    /// Follows `bubble`'s directory on the admin API at `base` (e.g. `http://127.0.0.1:8481`).
    pub fn new(
        base: &str,
        bubble: &str,
        credential: BubbleCredential,
        interval: Duration,
    ) -> Result<Self, DirectoryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DirectoryError::Read { path: base.into(), reason: e.to_string() })?;
        let url = format!("{}/api/v1/bubbles/{bubble}/directory", base.trim_end_matches('/'));
        Ok(Self {
            client,
            url,
            credential,
            interval,
            etag: Mutex::new(None),
            policy_file: None,
            last: Mutex::new(None),
        })
    }

    /// Takes the category policy from `path` (re-read at every poll) instead of the admin API's categories.
    #[must_use]
    pub fn with_policy_file(mut self, path: PathBuf) -> Self {
        self.policy_file = Some(path);
        self
    }

    /// The policy file's content and a version of it ("" without a policy file).
    async fn policy(&self) -> Result<Option<(BubbleFile, String)>, DirectoryError> {
        let Some(path) = &self.policy_file else { return Ok(None) };
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| DirectoryError::Read { path: path.clone(), reason: e.to_string() })?;
        if bytes.len() > crate::directory::MAX_BUBBLE_FILE_BYTES {
            return Err(DirectoryError::Read { path: path.clone(), reason: "policy file too large".into() });
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| DirectoryError::Parse("policy file is not UTF-8".into()))?;
        let policy: BubbleFile =
            serde_saphyr::from_str(text).map_err(|e| DirectoryError::Parse(format!("{}: {e}", path.display())))?;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(&bytes);
        let version = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Some((policy, version)))
    }

    fn compile(
        &self,
        file: BubbleFile,
        etag: &str,
        policy: Option<&(BubbleFile, String)>,
    ) -> Result<Directory, DirectoryError> {
        match policy {
            None => Ok(Directory::compile(file, etag.to_owned())?),
            Some((policy, version)) => {
                Ok(Directory::compile(overlay_policy(file, policy)?, format!("{etag}+{version}"))?)
            }
        }
    }

    fn error(&self, reason: impl Into<String>) -> DirectoryError {
        DirectoryError::Read { path: self.url.clone().into(), reason: reason.into() }
    }
}

impl DirectorySource for AdminApiSource {
    async fn load(&self, current: Option<&str>) -> Result<Option<Directory>, DirectoryError> {
        let policy = self.policy().await?;
        let policy_version = policy.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        let bearer = self.credential.bearer().await.map_err(|e| self.error(e))?;
        let mut request = self.client.get(&self.url).bearer_auth(bearer);
        let known = self.etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let (Some(etag), Some(_)) = (&known, current) {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = request.send().await.map_err(|e| self.error(format!("admin API unreachable: {e}")))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                // The document is unchanged; the policy may not be.
                let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return match last {
                    Some((file, version)) if version != policy_version => {
                        let directory =
                            self.compile(file.clone(), known.as_deref().unwrap_or_default(), policy.as_ref())?;
                        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((file, policy_version));
                        Ok(Some(directory))
                    }
                    _ => Ok(None),
                };
            }
            StatusCode::OK => {}
            _ => return Err(self.error(refusal(response).await)),
        }
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| self.error(e.to_string()))?;
        if bytes.len() > crate::directory::MAX_BUBBLE_FILE_BYTES {
            return Err(self.error("directory document too large"));
        }
        let file: BubbleFile = serde_json::from_slice(&bytes).map_err(|e| DirectoryError::Parse(e.to_string()))?;
        // The document is kept only where a policy change may need it compiled again.
        let keep = self.policy_file.is_some().then(|| file.clone());
        let directory = self.compile(file, etag.as_deref().unwrap_or_default(), policy.as_ref())?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = keep.map(|file| (file, policy_version));
        *self.etag.lock().unwrap_or_else(|p| p.into_inner()) = etag;
        Ok(Some(directory))
    }

    async fn changed(&self) {
        tokio::time::sleep(self.interval).await;
    }

    fn describe(&self) -> String {
        match &self.policy_file {
            Some(path) => format!("admin API {} with the category policy {}", self.url, path.display()),
            None => format!("admin API {}", self.url),
        }
    }
}

#[cfg(test)]
mod tests {
    use peerbubble_proto::directory::{CategoryFile, MemberFile};

    use super::*;

    fn category(id: &str, sees: &[&str]) -> CategoryFile {
        CategoryFile { id: id.into(), display_name: None, sees: sees.iter().map(|s| (*s).to_owned()).collect() }
    }

    fn document() -> BubbleFile {
        BubbleFile {
            bubble: "ops".into(),
            display_name: Some("Ops".into()),
            categories: vec![category("team", &["ext"]), category("ext", &[])],
            members: vec![MemberFile {
                public_key: "key".into(),
                display_name: "Cy".into(),
                categories: vec!["ext".into(), "team".into()],
            }],
            policy: Default::default(),
        }
    }

    #[test]
    fn the_policy_replaces_categories_and_members_lose_dropped_ones() {
        let policy = BubbleFile { categories: vec![category("team", &[])], members: vec![], ..document() };
        let merged = overlay_policy(document(), &policy).unwrap();
        assert_eq!(merged.categories, vec![category("team", &[])]);
        assert_eq!(merged.members[0].categories, vec!["team".to_owned()]);
        assert_eq!(merged.display_name.as_deref(), Some("Ops"), "the rest of the document is kept");
    }

    #[test]
    fn a_policy_for_another_bubble_or_with_members_is_refused() {
        let foreign = BubbleFile { bubble: "other".into(), members: vec![], ..document() };
        let err = overlay_policy(document(), &foreign).unwrap_err().to_string();
        assert!(err.contains("\"other\"") && err.contains("\"ops\""), "{err}");
        let with_members = document();
        let err = overlay_policy(document(), &with_members).unwrap_err().to_string();
        assert!(err.contains("categories only"), "{err}");
    }
}

//! The directory document: a bubble's categories and members (public keys only), as a bubble file on disk
//! and as the admin API serves it to that bubble's servers. Serde types only; the bubble-server compiles and
//! checks it.

use serde::{Deserialize, Serialize};

/// The bubble file, as written by an operator (or, later, rendered by the operator from Category resources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BubbleFile {
    /// Bubble id (`[a-z0-9-]`, part of what members sign).
    pub bubble: String,
    /// Human name of the bubble.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Categories.
    #[serde(default)]
    pub categories: Vec<CategoryFile>,
    /// Members.
    #[serde(default)]
    pub members: Vec<MemberFile>,
    /// What the bubble requires of its members' clients (absent: nothing).
    #[serde(default, skip_serializing_if = "is_default")]
    pub policy: crate::policy::BubblePolicy,
}

fn is_default(policy: &crate::policy::BubblePolicy) -> bool {
    *policy == crate::policy::BubblePolicy::default()
}

/// A category in the bubble file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CategoryFile {
    /// Category id.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Other categories whose members this category's members may see (and be seen by).
    #[serde(default)]
    pub sees: Vec<String>,
}

/// A member in the bubble file: public key only, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    /// Ed25519 identity public key (unpadded base64url).
    pub public_key: String,
    /// Display name.
    pub display_name: String,
    /// Categories the member belongs to.
    #[serde(default)]
    pub categories: Vec<String>,
}

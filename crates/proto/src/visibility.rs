//! Who sees whom in a bubble (DESIGN.md invariant 4): the directory compiled from its file, the need-to-know
//! relation and the slice each member is told. Pure and shared: the bubble-server enforces it, and the admin API
//! shows an administrator exactly what a member's slice holds ("view as member") with the same code.
//!
//! Visibility is symmetric: two members see (and may reach) each other when they share a category, or when a
//! category of one lists a category of the other under `sees` (docs/adr/0003-visibility-policy.md).
//! There is no global view: everything a member is told goes through [`Directory::slice`].

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::directory::BubbleFile;
use crate::limits::{MAX_CATEGORIES_PER_MEMBER, is_valid_display_name, is_valid_id};
use crate::{DirectoryEntry, MemberId, PublicKey};

/// A directory whose content is well-formed but inconsistent (duplicate, unknown or invalid ids, names or keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bubble: {0}")]
pub struct InvalidDirectory(pub String);

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
    policy: crate::policy::BubblePolicy,
}

impl Directory {
    /// Compiles and checks a bubble file. `version` identifies the content (e.g. a hash) so that followers
    /// publish only real changes.
    pub fn compile(file: BubbleFile, version: String) -> Result<Self, InvalidDirectory> {
        let invalid = |msg: String| Err(InvalidDirectory(msg));
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
            index.get(id).copied().ok_or_else(|| InvalidDirectory(format!("{whose} names unknown category {id:?}")))
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
                .map_err(|err| InvalidDirectory(format!("member {:?}: {err}", member.display_name)))?;
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
        file.policy.check().map_err(|e| InvalidDirectory(format!("policy: {e}")))?;
        Ok(Self {
            policy: file.policy,
            bubble: file.bubble,
            version,
            category_ids: file.categories.into_iter().map(|c| c.id).collect(),
            members,
            by_category,
        })
    }

    /// What the bubble requires of its members' clients.
    pub fn policy(&self) -> &crate::policy::BubblePolicy {
        &self.policy
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

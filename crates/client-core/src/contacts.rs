//! Finding a member the way people name them: "Bob (field team)", "bob", "Bo" when only one name starts so,
//! or the member id. Shared by the terminal chat and the browser, so that both understand the same names.

use peerbubble_proto::MemberId;

/// Why a name found nobody, or more than one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    /// Nobody in the directory is called so.
    #[error("nobody called \"{0}\" in your directory")]
    NotFound(String),
    /// Several members match; the names say whom.
    #[error("\"{query}\" could be {}; type more of the name", .candidates.join(", "))]
    Ambiguous {
        /// What was typed.
        query: String,
        /// The display names that match.
        candidates: Vec<String>,
    },
}

fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The member `query` names among `members` (id and display name): the member id itself; else a display name
/// equal to it, ignoring case and repeated spaces; else the one display name that starts with it, or whose
/// words one starts with it ("field" finds "Bob (field team)" if nobody else has such a word).
pub fn find_member<'a>(
    members: impl IntoIterator<Item = (MemberId, &'a str)>,
    query: &str,
) -> Result<MemberId, FindError> {
    let members: Vec<(MemberId, &str)> = members.into_iter().collect();
    let wanted = normalize(query);
    if wanted.is_empty() {
        return Err(FindError::NotFound(query.to_owned()));
    }
    if let Some((id, _)) = members.iter().find(|(id, _)| id.to_string() == wanted) {
        return Ok(*id);
    }
    let pick = |matches: Vec<&(MemberId, &str)>| match matches.as_slice() {
        [] => None,
        [(id, _)] => Some(Ok(*id)),
        several => {
            let mut candidates: Vec<String> = several.iter().map(|(_, name)| (*name).to_owned()).collect();
            candidates.sort();
            Some(Err(FindError::Ambiguous { query: query.to_owned(), candidates }))
        }
    };
    let exact = members.iter().filter(|(_, name)| normalize(name) == wanted).collect();
    if let Some(found) = pick(exact) {
        return found;
    }
    let prefix = members.iter().filter(|(_, name)| normalize(name).starts_with(&wanted)).collect();
    if let Some(found) = pick(prefix) {
        return found;
    }
    let word = members
        .iter()
        .filter(|(_, name)| {
            normalize(name)
                .split(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
                .any(|w| !w.is_empty() && w.starts_with(&wanted))
        })
        .collect();
    pick(word).unwrap_or_else(|| Err(FindError::NotFound(query.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerbubble_proto::IdentityKey;

    fn id(n: u8) -> MemberId {
        IdentityKey::from_seed(&[n; 32]).public_key().member_id()
    }

    #[test]
    fn names_with_spaces_prefixes_words_and_ids() {
        let members = [(id(1), "Bob (field team)"), (id(2), "Ann"), (id(3), "Annette Durand"), (id(4), "Cat")];
        let find = |q: &str| find_member(members.iter().copied(), q);
        assert_eq!(find("Bob (field team)"), Ok(id(1)));
        assert_eq!(find("  bob   (FIELD team) "), Ok(id(1)));
        assert_eq!(find("Bob"), Ok(id(1)), "an unambiguous prefix");
        assert_eq!(find("field"), Ok(id(1)), "a word of the name");
        assert_eq!(find("Ann"), Ok(id(2)), "an exact name wins over longer ones");
        assert_eq!(find("durand"), Ok(id(3)));
        assert_eq!(find(&id(4).to_string()), Ok(id(4)));
        assert_eq!(
            find("an"),
            Err(FindError::Ambiguous { query: "an".into(), candidates: vec!["Ann".into(), "Annette Durand".into()] })
        );
        assert_eq!(find("Dan"), Err(FindError::NotFound("Dan".into())));
        assert_eq!(find("  "), Err(FindError::NotFound("  ".into())));
        assert!(find("an").unwrap_err().to_string().contains("Ann, Annette Durand"));
    }
}

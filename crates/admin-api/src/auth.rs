//! Who is calling, and what they may do. A principal comes from the bootstrap token (admin of everything) or a
//! scoped API token; OpenID Connect sign-in, when it lands, maps its role claim to the same principals.

use axum::http::{HeaderMap, StatusCode};

use crate::api::{ApiError, ApiState};
use crate::token::{hash_token, hashes_equal};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read and change the bubbles in scope.
    Admin,
    /// Read only: directory metadata, audit, health.
    Auditor,
}

impl Role {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

/// Which bubbles a principal's role applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every bubble, and organisation-wide operations (creating bubbles, tokens).
    All,
    /// These bubbles only.
    Bubbles(Vec<String>),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// For the audit trail.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scope.
    pub scope: Scope,
}

fn forbidden(what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("your role does not allow {what}"))
}

impl Principal {
    /// Is `bubble` in scope?
    pub fn covers(&self, bubble: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Bubbles(list) => list.iter().any(|b| b == bubble),
        }
    }

    /// May read `bubble`.
    pub fn read(&self, bubble: &str) -> Result<(), ApiError> {
        if self.covers(bubble) { Ok(()) } else { Err(forbidden("access to this bubble")) }
    }

    /// May change `bubble`.
    pub fn write(&self, bubble: &str) -> Result<(), ApiError> {
        self.read(bubble)?;
        if self.role == Role::Admin { Ok(()) } else { Err(forbidden("changes (auditors read only)")) }
    }

    /// May do organisation-wide changes (create bubbles, issue tokens).
    pub fn organisation_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin && self.scope == Scope::All {
            Ok(())
        } else {
            Err(forbidden("organisation-wide changes"))
        }
    }

    /// The actor written to the audit trail.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.name)
    }
}

/// Authenticates the bearer token of a request.
pub async fn principal(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(token) = crate::api::bearer(headers) else { return Err(ApiError::unauthorized()) };
    let hash = hash_token(token);
    if hashes_equal(&hash, &state.admin_token_hash) {
        return Ok(Principal { name: "bootstrap".into(), role: Role::Admin, scope: Scope::All });
    }
    let Some((name, role, bubbles)) = state.store.api_token(&hash).await? else { return Err(ApiError::unauthorized()) };
    let role = match role.as_str() {
        "admin" => Role::Admin,
        "auditor" => Role::Auditor,
        _ => return Err(ApiError::unauthorized()),
    };
    let scope = if bubbles == "*" {
        Scope::All
    } else {
        Scope::Bubbles(bubbles.split(',').filter(|b| !b.is_empty()).map(str::to_owned).collect())
    };
    Ok(Principal { name, role, scope })
}

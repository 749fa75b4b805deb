//! Who a caller is and what they may do: a role over a scope of bubbles. Pure types, shared by the
//! authentication of requests ([`crate::auth`]) and the OpenID Connect provider client ([`crate::oidc`]).

use axum::http::StatusCode;

use crate::error::ApiError;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read and change the bubbles in scope.
    Admin,
    /// Read only: directory metadata, audit, health.
    Auditor,
}

impl Role {
    /// From its stored and wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Role::Admin),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

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

/// A principal from its stored form (role name, `*` or comma-separated bubbles).
pub fn stored_principal(name: String, role: &str, bubbles: &str) -> Option<Principal> {
    let role = Role::parse(role)?;
    let scope = if bubbles == "*" {
        Scope::All
    } else {
        Scope::Bubbles(bubbles.split(',').filter(|b| !b.is_empty()).map(str::to_owned).collect())
    };
    Some(Principal { name, role, scope })
}

/// The stored form of a scope.
pub fn stored_scope(scope: &Scope) -> String {
    match scope {
        Scope::All => "*".to_owned(),
        Scope::Bubbles(list) => list.join(","),
    }
}

//! Who is calling and what they may do. `auth::require` puts a [`Principal`] into every
//! `/system` request's extensions: the admin (basic auth) or an API token. Handlers check it
//! against what they do ([`Need`]) in the namespace they touch, so one rule decides every
//! route: roles are ordered (viewer < invoker < deployer < admin) and a token acts only in
//! its own namespaces.

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// A role, from the least to the most allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads functions, secrets' names, logs, queues and metrics.
    Viewer,
    /// A viewer that may also call its namespaces' private functions.
    Invoker,
    /// An invoker that may also deploy, remove and scale functions and manage secrets.
    Deployer,
    /// Everything, in every namespace: namespaces, tokens, images, audit.
    Admin,
}

impl Role {
    /// Every role, from the least allowed.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Invoker, Role::Deployer, Role::Admin];

    /// The role named `name` (as [`Role::as_str`] spells it).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The role's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Invoker => "invoker",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

/// What a handler is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read state.
    Read,
    /// Call a function.
    Invoke,
    /// Change functions or secrets.
    Deploy,
    /// Change the platform itself (namespaces, tokens, images).
    Admin,
}

impl Need {
    fn role(self) -> Role {
        match self {
            Need::Read => Role::Viewer,
            Need::Invoke => Role::Invoker,
            Need::Deploy => Role::Deployer,
            Need::Admin => Role::Admin,
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, as the audit log names them: the admin's user name, or `token:NAME`.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// The namespaces they act in; `None` for all of them.
    pub namespaces: Option<Vec<String>>,
}

impl Principal {
    /// The admin, signed in with basic auth as `user`.
    pub fn admin(user: &str) -> Principal {
        Principal {
            name: user.to_string(),
            role: Role::Admin,
            namespaces: None,
        }
    }

    /// Whether the caller acts in namespace `ns`.
    pub fn sees(&self, ns: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == ns))
    }

    /// 403 unless the caller may do `need` in namespace `ns`.
    pub fn check(&self, need: Need, ns: &str) -> Result<(), ApiError> {
        self.check_role(need)?;
        if !self.sees(ns) {
            return Err(ApiError::Forbidden(format!(
                "{} may not act in namespace {ns:?} (its namespaces: {})",
                self.name,
                self.namespaces.as_deref().unwrap_or_default().join(", ")
            )));
        }
        Ok(())
    }

    /// 403 unless the caller's role allows `need` (for routes of no one namespace).
    pub fn check_role(&self, need: Need) -> Result<(), ApiError> {
        if self.role >= need.role() {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "{} has role {}: this needs {} or higher",
            self.name,
            self.role.as_str(),
            need.role().as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, ns: &[&str]) -> Principal {
        Principal {
            name: "token:t".into(),
            role,
            namespaces: Some(ns.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn roles_are_ordered_and_scoped() {
        let admin = Principal::admin("admin");
        assert!(admin.check(Need::Admin, "any").is_ok());
        let d = token(Role::Deployer, &["team-a"]);
        assert!(d.check(Need::Deploy, "team-a").is_ok());
        assert!(d.check(Need::Read, "team-a").is_ok());
        assert!(d.check(Need::Deploy, "team-b").is_err());
        assert!(d.check(Need::Admin, "team-a").is_err());
        let v = token(Role::Viewer, &["team-a"]);
        assert!(v.check(Need::Read, "team-a").is_ok());
        assert!(v.check(Need::Invoke, "team-a").is_err());
        assert!(token(Role::Invoker, &["team-a"])
            .check(Need::Invoke, "team-a")
            .is_ok());
    }
}

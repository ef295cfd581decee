//! API tokens: `Authorization: Bearer vg_ID_SECRET` on `/system/*` ([`authenticate`]) and
//! `/system/virga/tokens` to create, list and revoke them. A caller only hands out what it
//! has: a token's role is at most its creator's, its namespaces among its creator's, and a
//! token made by an expiring token expires no later. Callers see and revoke only the tokens
//! they could have created; a deleted namespace is taken from every token (one left with
//! none is revoked), so a namespace made again later is not open to old tokens. Nothing is cached: every request reads the store, so a
//! revocation holds from the moment its DELETE is answered.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use virga_store::{StoreError, TokenCheck};
use virga_types::{validate_name, CreatedToken, TokenInfo, TokenRequest};

use crate::error::parse_json;
use crate::{ApiError, AppState, Need, Principal, Role};

/// The token a request was authenticated with, next to its [`Principal`]: the rules on
/// what a token may create depend on the token itself.
#[derive(Debug, Clone)]
pub(crate) struct CallerToken(pub(crate) TokenInfo);

fn shown(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The caller a bearer `token` (the header's value after `Bearer `) stands for, or a 401
/// saying why not. Unknown tokens count as wrong guesses in the address's backoff.
pub(crate) fn authenticate(
    state: &AppState,
    token: &[u8],
    ip: IpAddr,
    now: Instant,
) -> Result<(Principal, CallerToken), ApiError> {
    let malformed = |why: &str| {
        ApiError::BadToken(format!(
            "malformed token ({why}): give the whole vg_... token `virga token create` printed"
        ))
    };
    let token = std::str::from_utf8(token).map_err(|_| malformed("it is not text"))?;
    match state.store.check_token(token.trim(), Utc::now())? {
        TokenCheck::Valid(info) => {
            state.backoff.succeeded(ip);
            Ok((principal_of(&info)?, CallerToken(info)))
        }
        TokenCheck::Malformed(why) => Err(malformed(why)),
        TokenCheck::Unknown => {
            if let Some(wait) = state.backoff.failed(ip, now) {
                tracing::warn!(client = %ip, "unknown API tokens: blocked for {wait:?}");
            }
            Err(ApiError::BadToken(
                "unknown token: no token here has this id and secret; check it, or create \
                 one with `virga token create`"
                    .into(),
            ))
        }
        TokenCheck::Revoked(id, at) => Err(ApiError::BadToken(format!(
            "token {id} was revoked at {}: use another token",
            shown(at)
        ))),
        TokenCheck::Expired(id, at) => Err(ApiError::BadToken(format!(
            "token {id} expired at {}: create a new one",
            shown(at)
        ))),
    }
}

/// Who a stored token acts as.
pub(crate) fn principal_of(info: &TokenInfo) -> Result<Principal, ApiError> {
    let role = Role::parse(&info.role).ok_or_else(|| {
        ApiError::Internal(format!(
            "token {} has an unknown role {:?}",
            info.id, info.role
        ))
    })?;
    let namespaces = match role {
        Role::Admin => None,
        // A non-admin token without namespaces (never stored so) acts in none, not in all.
        _ => Some(info.namespaces.clone().unwrap_or_default()),
    };
    Ok(Principal {
        name: format!("token:{}", info.name),
        role,
        namespaces,
    })
}

/// Whether `p` could have created `t` (and so may see and revoke it).
fn could_create(p: &Principal, t: &TokenInfo) -> bool {
    let role_ok = Role::parse(&t.role).map_or(p.role == Role::Admin, |r| r <= p.role);
    let ns_ok = match &t.namespaces {
        None => p.namespaces.is_none(),
        Some(list) => list.iter().all(|ns| p.sees(ns)),
    };
    role_ok && ns_ok
}

/// A request's token, checked for shape (400s) but not yet against its creator.
struct Wanted {
    name: String,
    role: Role,
    namespaces: Option<Vec<String>>,
    expires: Option<DateTime<Utc>>,
    access_key: bool,
}

fn parse_request(req: TokenRequest, now: DateTime<Utc>) -> Result<Wanted, ApiError> {
    validate_name("name", &req.name)?;
    let role = Role::parse(req.role.trim()).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role: unknown role {:?}: use viewer, invoker, deployer or admin",
            req.role
        ))
    })?;
    let given = req.namespaces.unwrap_or_default();
    let namespaces = match role {
        Role::Admin if !given.is_empty() => {
            return Err(ApiError::BadRequest(
                "namespaces: an admin token acts in every namespace: leave namespaces out, \
                 or give the role deployer, invoker or viewer"
                    .into(),
            ))
        }
        Role::Admin => None,
        _ if given.is_empty() => {
            return Err(ApiError::BadRequest(format!(
                "namespaces: a {} token needs the namespaces it acts in, \
                 e.g. \"namespaces\": [\"openfaas-fn\"]",
                role.as_str()
            )))
        }
        _ => {
            let mut list: Vec<String> = Vec::new();
            for ns in given {
                validate_name("namespaces", &ns)?;
                if !list.contains(&ns) {
                    list.push(ns);
                }
            }
            Some(list)
        }
    };
    let expires = req
        .expires_in
        .map(|text| {
            let d = virga_types::duration::parse(&text)
                .map_err(|e| ApiError::BadRequest(format!("expiresIn: {e}")))?;
            if d.is_zero() {
                return Err(ApiError::BadRequest(
                    "expiresIn: must be longer than 0s, e.g. 720h; leave it out for a token \
                     that does not expire"
                        .into(),
                ));
            }
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| ApiError::BadRequest(format!("expiresIn: {text:?} is too long")))
        })
        .transpose()?;
    Ok(Wanted {
        name: req.name,
        role,
        namespaces,
        expires,
        access_key: req.access_key,
    })
}

/// 403 unless `p` (authenticated with `caller`, if a token) may hand out `w`; a token made
/// by an expiring token without an expiry of its own gets its creator's.
fn check_allowed(
    p: &Principal,
    caller: Option<&TokenInfo>,
    w: &mut Wanted,
) -> Result<(), ApiError> {
    if w.role > p.role {
        return Err(ApiError::Forbidden(format!(
            "{} has role {}: it cannot create a token of role {}",
            p.name,
            p.role.as_str(),
            w.role.as_str()
        )));
    }
    if let Some(list) = &w.namespaces {
        let outside: Vec<&str> = list
            .iter()
            .filter(|ns| !p.sees(ns))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "{} may not act in namespace {}: a token can only get namespaces of its \
                 creator (its namespaces: {})",
                p.name,
                outside.join(", "),
                p.namespaces.as_deref().unwrap_or_default().join(", ")
            )));
        }
    }
    let Some(limit) = caller.and_then(|c| c.expires) else {
        return Ok(());
    };
    match w.expires {
        Some(at) if at > limit => Err(ApiError::Forbidden(format!(
            "{} expires at {}: a token it creates must expire by then (this one would \
             expire at {})",
            p.name,
            shown(limit),
            shown(at)
        ))),
        Some(_) => Ok(()),
        None => {
            w.expires = Some(limit);
            Ok(())
        }
    }
}

/// `POST /system/virga/tokens`: 201 with the token, shown this once.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    caller: Option<Extension<CallerToken>>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let now = Utc::now();
    let mut wanted = parse_request(parse_json(&body)?, now)?;
    check_allowed(&p, caller.as_ref().map(|c| &c.0 .0), &mut wanted)?;
    for ns in wanted.namespaces.iter().flatten() {
        crate::namespaces::resolve(&state, &p, Need::Read, ns)?;
    }
    let info = TokenInfo {
        id: String::new(),
        name: wanted.name,
        role: wanted.role.as_str().into(),
        namespaces: wanted.namespaces,
        created: now,
        expires: wanted.expires,
        created_by: p.name.clone(),
        access_key: wanted.access_key,
    };
    let name = info.name.clone();
    let (info, token) = state.store.create_token(info).map_err(|e| match e {
        StoreError::Exists { .. } => ApiError::Conflict(format!(
            "a token named {name:?} exists: revoke it first (`virga token revoke ID`) or \
             choose another name"
        )),
        e => e.into(),
    })?;
    let token = token.to_string();
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

/// `GET /system/virga/tokens`: the tokens the caller could have created, without secrets.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let all = state.store.tokens()?;
    Ok(Json(
        all.into_iter().filter(|t| could_create(&p, t)).collect(),
    ))
}

/// `DELETE /system/virga/tokens/{id}`: revoke at once; 404 for a token the caller does not see.
pub(crate) async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no token with id {id:?}: `virga token list` shows the ones you may revoke"
        ))
    };
    match state.store.token(&id)? {
        Some(t) if could_create(&p, &t) => {}
        _ => return Err(not_found()),
    }
    let revoked = state.store.revoke_token(&id, Utc::now())?;
    revoked.map(Json).ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, ns: Option<&[&str]>) -> Principal {
        Principal {
            name: "token:t".into(),
            role,
            namespaces: ns.map(|l| l.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn request(role: &str, ns: &[&str], expires: Option<&str>) -> TokenRequest {
        TokenRequest {
            name: "ci".into(),
            role: role.into(),
            namespaces: Some(ns.iter().map(|s| s.to_string()).collect()),
            expires_in: expires.map(str::to_string),
            access_key: false,
        }
    }

    #[test]
    fn requests_are_checked_for_shape() {
        let now = Utc::now();
        let w = parse_request(request("deployer", &["a", "b", "a"], Some("1h")), now).unwrap();
        assert_eq!(w.namespaces.unwrap(), ["a", "b"]);
        assert_eq!(w.expires.unwrap(), now + chrono::Duration::hours(1));
        let bad = |r: TokenRequest| parse_request(r, now).err().unwrap().to_string();
        assert!(bad(request("root", &["a"], None)).contains("unknown role"));
        assert!(bad(request("viewer", &[], None)).contains("needs the namespaces"));
        assert!(bad(request("admin", &["a"], None)).contains("every namespace"));
        assert!(bad(request("viewer", &["A_B"], None)).contains("namespaces"));
        assert!(bad(request("viewer", &["a"], Some("soon"))).contains("expiresIn"));
        assert!(bad(request("viewer", &["a"], Some("0s"))).contains("longer than 0s"));
        let mut unnamed = request("viewer", &["a"], None);
        unnamed.name.clear();
        assert!(bad(unnamed).contains("name: must not be empty"));
        assert!(parse_request(request("admin", &[], None), now)
            .unwrap()
            .namespaces
            .is_none());
    }

    #[test]
    fn creators_hand_out_no_more_than_they_have() {
        let now = Utc::now();
        let deployer = principal(Role::Deployer, Some(&["a", "b"]));
        let mut w = parse_request(request("admin", &[], None), now).unwrap();
        let e = check_allowed(&deployer, None, &mut w).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot create a token of role admin"),
            "{e}"
        );
        let mut w = parse_request(request("viewer", &["a", "c"], None), now).unwrap();
        let e = check_allowed(&deployer, None, &mut w).unwrap_err();
        assert!(e.to_string().contains("namespace c"), "{e}");
        let mut w = parse_request(request("deployer", &["b"], None), now).unwrap();
        check_allowed(&deployer, None, &mut w).unwrap();

        // An expiring creator: no later expiry, and its own when none is asked for.
        let caller = TokenInfo {
            id: "x".into(),
            name: "t".into(),
            role: "deployer".into(),
            namespaces: Some(vec!["a".into()]),
            created: now,
            expires: Some(now + chrono::Duration::hours(2)),
            created_by: "admin".into(),
            access_key: false,
        };
        let mut w = parse_request(request("viewer", &["a"], Some("3h")), now).unwrap();
        assert!(check_allowed(&deployer, Some(&caller), &mut w).is_err());
        let mut w = parse_request(request("viewer", &["a"], None), now).unwrap();
        check_allowed(&deployer, Some(&caller), &mut w).unwrap();
        assert_eq!(w.expires, caller.expires);
    }

    #[test]
    fn callers_see_only_tokens_they_could_create() {
        let t = |role: &str, ns: Option<&[&str]>| TokenInfo {
            id: "x".into(),
            name: "n".into(),
            role: role.into(),
            namespaces: ns.map(|l| l.iter().map(|s| s.to_string()).collect()),
            created: Utc::now(),
            expires: None,
            created_by: "admin".into(),
            access_key: false,
        };
        let admin = Principal::admin("admin");
        let deployer = principal(Role::Deployer, Some(&["a", "b"]));
        assert!(could_create(&admin, &t("admin", None)));
        assert!(!could_create(&deployer, &t("admin", None)));
        assert!(could_create(&deployer, &t("viewer", Some(&["a"]))));
        assert!(!could_create(&deployer, &t("viewer", Some(&["a", "c"]))));
        let viewer = principal(Role::Viewer, Some(&["a"]));
        assert!(!could_create(&viewer, &t("deployer", Some(&["a"]))));
        let p = principal_of(&t("viewer", None)).unwrap();
        assert_eq!(p.namespaces, Some(vec![]), "no namespaces means none");
        assert_eq!(p.name, "token:n");
    }
}

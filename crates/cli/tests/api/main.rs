//! The API of the real `virga up` end to end, over real HTTP: deploy, invoke, update and
//! delete (api), what deploys accept (deploy_checks), the edge against misbehaving clients
//! (edge), namespaces and quotas (namespaces), namespaces through the CLI (namespaces_cli),
//! every route against every role (roles), metrics and logs (observe), a full disk
//! (disk_full), untrusted bundles (bundles), secrets at rest (secrets_at_rest), and API tokens
//! and the audit log (tokens).

mod api;
mod bundles;
mod deploy_checks;
mod disk_full;
mod edge;
mod namespaces;
mod namespaces_cli;
mod observe;
mod roles;
mod secrets_at_rest;
mod tokens;

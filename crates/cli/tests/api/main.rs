//! The API of the real `virga up` end to end, over real HTTP: deploy, invoke, update and
//! delete (api), what deploys accept (deploy_checks), the edge against misbehaving clients
//! (edge), metrics and logs (observe), a full disk (disk_full), untrusted bundles (bundles),
//! secrets at rest (secrets_at_rest) and namespaces through the CLI (namespaces_cli).

mod api;
mod bundles;
mod deploy_checks;
mod disk_full;
mod edge;
mod namespaces_cli;
mod observe;
mod secrets_at_rest;

//! Registry images of the real `virga up` (issue 13): images pushed to a real docker-registry
//! run as functions in runc sandboxes (run), template functions built as layered images and
//! pushed by the CLI (build), Lambda container images run under the platform's watchdog
//! (lambda); the registry is `virga_testkit::registry`.

mod build;
mod lambda;
mod run;

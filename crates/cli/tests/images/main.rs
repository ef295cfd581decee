//! Registry images of the real `virga up` (issue 13): images pushed to a real docker-registry
//! run as functions in runc sandboxes (run), on the registry helper (registry).

mod registry;
mod run;

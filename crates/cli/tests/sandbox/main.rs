//! runc sandboxes of the real `virga up`: limits, isolation and cleanup (sandbox), and the
//! hardening of namespaces, syscalls, network, mounts and reclaimed leftovers
//! (sandbox_hardening).

mod sandbox;
mod sandbox_hardening;

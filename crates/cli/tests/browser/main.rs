//! The web console in headless Chromium against the real `virga up`: its pages and edits
//! (console), its own origin that function pages cannot reach (console_origin), the
//! functions' triggers (console_triggers), its namespaces (console_namespaces), signing in
//! with API tokens (console_tokens), and the calls in progress (console_calls).

mod console;
mod console_calls;
mod console_namespaces;
mod console_origin;
mod console_tokens;
mod console_triggers;

//! The `virga` CLI and the function templates: stacks deployed through the CLI (cli), the
//! templates' runtimes run as built (templates), and OpenFaaS parity of fprocess, templates
//! and alerts (parity).

mod cli;
mod parity;
mod templates;

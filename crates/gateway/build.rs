//! Rebuild the gateway when a web console file changes: they are embedded with
//! `include_dir!`, which cannot tell cargo which files it read.

fn main() {
    println!("cargo:rerun-if-changed=console");
}

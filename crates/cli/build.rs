//! Rebuild the `virga` binary when a template under the repository's `templates/` changes:
//! they are embedded with `include_dir!`, which cannot see files being added.

fn main() {
    println!("cargo:rerun-if-changed=../../templates");
    println!("cargo:rerun-if-changed=../../examples");
}

//! What a test leaves on the host: scripts it writes, and what a platform's sandboxes hold.

use std::path::Path;

/// Write an executable shell script into `dir` and return its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_string_lossy().into_owned()
}

/// Everything the platform with data directory `dir` has on the host: containers, cgroups,
/// network slots and namespaces.
pub fn sandbox_leftovers(dir: &Path) -> Vec<String> {
    let key = std::fs::read_to_string(dir.join("sandbox/key")).unwrap();
    let mut found = Vec::new();
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(dir.join("sandbox/state"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    found.extend(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| format!("container {l}")),
    );
    for slot in std::fs::read_dir(dir.join("sandbox/slots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        found.push(format!("pool slot {}", slot.path().display()));
    }
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let parent = ctrl.path().join(format!("virga-{key}"));
        for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if child.file_type().unwrap().is_dir() {
                found.push(format!("cgroup {}", child.path().display()));
            }
        }
    }
    for slot in std::fs::read_dir("/run/virga-net/slots")
        .into_iter()
        .flatten()
        .flatten()
    {
        let owner = std::fs::read_to_string(slot.path()).unwrap_or_default();
        if owner.split_whitespace().next() == Some(key.as_str()) {
            let n = slot.file_name().to_string_lossy().into_owned();
            found.push(format!("network slot {n}"));
            if Path::new(&format!("/run/netns/virga-{n}")).exists() {
                found.push(format!("netns virga-{n}"));
            }
            if Path::new(&format!("/sys/class/net/vg{n}")).exists() {
                found.push(format!("veth vg{n}"));
            }
        }
    }
    found
}

//! What sandboxes change on the host as a whole, shared by every Virga platform on it: IP
//! forwarding and the nftables table `inet virga` that keeps instances apart. Each running
//! platform has a record (`platforms/KEY`: its pid, start time and boot id) in the network
//! directory; the first to start saves ip_forward's value and sets it, every start writes the
//! table, and the last live platform to stop deletes the table and restores ip_forward. A
//! record whose process is gone (a crash) is dropped by the next platform that starts or stops,
//! after the cgroups of that platform's sandboxes are reclaimed (its data directory, with
//! runc's state, may be gone: the record is the last thing naming them).
//! All of it happens under the network directory's lock.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::cgroup;

/// The table: instances (host ends `vg*`) reach neither the host nor each other, only
/// answer connections made to them, and leave for the outside world masqueraded (those with
/// a default route: outbound on). Policies stay `accept`: other traffic is not Virga's.
const TABLE: &str = r#"table inet virga {}
delete table inet virga
table inet virga {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "vg*" ct state established,related accept
        iifname "vg*" drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        oifname "vg*" ct state established,related accept
        oifname "vg*" drop
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        iifname "vg*" oifname != "vg*" masquerade
    }
}
"#;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A process, told apart from a later one with the same pid (start time) and across reboots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pid: u32,
    start: u64,
    boot: String,
}

fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default()
    })
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Owner {
    /// This process.
    pub(crate) fn me() -> Result<Owner, String> {
        let pid = std::process::id();
        let start = start_time(pid).ok_or("cannot read /proc/self/stat")?;
        Ok(Owner {
            pid,
            start,
            boot: boot_id().to_string(),
        })
    }

    /// Parse `PID START BOOT` (as written by `Display`).
    pub(crate) fn parse(text: &str) -> Option<Owner> {
        let mut f = text.split_whitespace();
        let owner = Owner {
            pid: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
            boot: f.next()?.to_string(),
        };
        f.next().is_none().then_some(owner)
    }

    /// Whether the process still runs (same boot, same pid, same start time).
    pub(crate) fn alive(&self) -> bool {
        self.boot == boot_id() && start_time(self.pid) == Some(self.start)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.pid, self.start, self.boot)
    }
}

/// Run `nft -f -` on `script`.
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Live platforms' records, after removing those of processes that are gone (and the
/// cgroups of their sandboxes).
fn live_platforms(dir: &Path) -> Vec<String> {
    let mut live = Vec::new();
    for e in fs::read_dir(dir.join("platforms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let owner = fs::read_to_string(e.path())
            .ok()
            .and_then(|t| Owner::parse(&t));
        let key = e.file_name().to_string_lossy().into_owned();
        match owner {
            Some(o) if o.alive() => live.push(key),
            _ => {
                tracing::info!(
                    "removing the record of a platform that is gone: {}",
                    e.path().display()
                );
                // Its sandboxes (cgroups and what still runs in them) go first: once the
                // record is gone, nothing names them any more.
                if super::is_key(&key) {
                    cgroup::reclaim(&key);
                }
                let _ = fs::remove_file(e.path());
            }
        }
    }
    live
}

/// Record platform `key` as running and set up forwarding and the table. Call under the lock.
pub(crate) fn join(dir: &Path, key: &str, me: &Owner) -> Result<(), String> {
    let platforms = dir.join("platforms");
    fs::create_dir_all(&platforms).map_err(|e| format!("create {}: {e}", platforms.display()))?;
    live_platforms(dir);
    fs::write(platforms.join(key), me.to_string()).map_err(|e| format!("record platform: {e}"))?;
    let saved = dir.join("ip_forward");
    if !saved.exists() {
        let now = fs::read_to_string(IP_FORWARD).map_err(|e| format!("read {IP_FORWARD}: {e}"))?;
        if now.trim() != "1" {
            fs::write(&saved, now.trim()).map_err(|e| format!("save ip_forward: {e}"))?;
        }
    }
    let set_up = fs::write(IP_FORWARD, "1")
        .map_err(|e| format!("enable IP forwarding: {e}"))
        .and_then(|()| nft(TABLE));
    if set_up.is_err() {
        leave(dir, key);
    }
    set_up
}

/// Drop platform `key`'s record; the last live platform removes the table and restores
/// ip_forward. Call under the lock.
pub(crate) fn leave(dir: &Path, key: &str) {
    let _ = fs::remove_file(dir.join("platforms").join(key));
    if !live_platforms(dir).is_empty() {
        return;
    }
    if let Err(e) = nft("delete table inet virga\n") {
        tracing::warn!("removing the nftables table inet virga: {e}");
    }
    let saved = dir.join("ip_forward");
    if let Ok(value) = fs::read_to_string(&saved) {
        if let Err(e) = fs::write(IP_FORWARD, value.trim()) {
            tracing::warn!("restoring ip_forward: {e}");
        }
        let _ = fs::remove_file(saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_this_process_is_alive() {
        let me = Owner::me().unwrap();
        assert!(me.alive());
        assert_eq!(Owner::parse(&me.to_string()), Some(me.clone()));
        let later = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!later.alive(), "a reused pid is another process");
        assert_eq!(Owner::parse("12ab"), None);
        assert_eq!(Owner::parse("1 2 x y"), None);
    }
}

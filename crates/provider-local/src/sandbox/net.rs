//! Per-instance networking: every sandbox gets its own network namespace joined to the host by
//! a veth pair with a /30 of 10.88.0.0/16 (host end .1, instance end .2). No bridge is shared;
//! what keeps instances apart from each other and from the host is the nftables table of
//! `host`. Slots are allocated under a lock in /run/virga-net so several platforms on one
//! machine never collide; each slot file names the platform that owns it and the owning
//! process (pid, start time, boot), which is how a restart finds what a crashed run left
//! behind, and how any platform reclaims the slots of one that is gone with its data directory.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::host::{self, Owner};

/// Root of the slot allocation files.
const NET_DIR: &str = "/run/virga-net";
/// 10.88.0.0/16 split into /30s.
const SLOTS: u32 = 1 << 14;

/// Allocates network slots for one platform.
#[derive(Debug)]
pub(crate) struct Network {
    key: String,
    dir: PathBuf,
    /// This process, as recorded in its slot files.
    owner: Owner,
}

/// One instance's network namespace and veth pair.
#[derive(Debug, Clone)]
pub(crate) struct NetLease {
    slot: u32,
    /// Named network namespace (`ip netns`).
    pub(crate) netns: String,
    /// The instance's address.
    pub(crate) ip: Ipv4Addr,
}

fn slot_ips(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 88, 0, 0)) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn netns_name(slot: u32) -> String {
    format!("virga-{slot}")
}

fn host_if(slot: u32) -> String {
    format!("vg{slot}")
}

/// Run `ip ARGS` with `batch` on stdin (`-batch -`).
fn ip_batch(args: &[&str], batch: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(args)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(batch.as_bytes())
            .map_err(|e| format!("ip: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// An exclusive lock on the slot directory, released on drop.
struct DirLock(fs::File);

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, String> {
        let f = fs::File::create(dir.join("lock")).map_err(|e| format!("lock {NET_DIR}: {e}"))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "lock {NET_DIR}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Network {
    /// The allocator for platform `key`: removes what an earlier run of it and platforms that
    /// are gone left behind, and joins the host's shared set-up (`host::join`).
    pub(crate) fn new(key: &str) -> Result<Network, String> {
        let dir = PathBuf::from(NET_DIR);
        fs::create_dir_all(dir.join("slots")).map_err(|e| format!("create {NET_DIR}: {e}"))?;
        let net = Network {
            key: key.to_string(),
            dir,
            owner: Owner::me()?,
        };
        let _lock = DirLock::take(&net.dir)?;
        net.reclaim(true);
        host::join(&net.dir, &net.key, &net.owner)?;
        Ok(net)
    }

    /// Tear down (under the lock) the slots whose owner is gone, and with `own` those of
    /// this platform's key. Slot files without an owner record are an older Virga's: left alone.
    fn reclaim(&self, own: bool) -> usize {
        let mut freed = 0;
        for e in fs::read_dir(self.dir.join("slots"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(slot) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            let (key, owner) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
            let dead = Owner::parse(owner).is_some_and(|o| !o.alive());
            if dead || (own && key == self.key) {
                if dead {
                    tracing::info!("reclaiming network slot {slot} of a platform that is gone");
                }
                teardown(slot);
                let _ = fs::remove_file(e.path());
                freed += 1;
            }
        }
        freed
    }

    /// Leave the host's shared set-up (at shutdown, after the slots are released).
    pub(crate) fn leave(&self) {
        if let Ok(_lock) = DirLock::take(&self.dir) {
            host::leave(&self.dir, &self.key);
        }
    }

    /// Slots this platform holds.
    fn owned_slots(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(self.dir.join("slots")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| fs::read_to_string(e.path()).is_ok_and(|t| slot_key(&t) == self.key))
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Tear down every slot of this platform (start-up after a crash, and shutdown).
    pub(crate) fn release_all(&self) {
        for slot in self.owned_slots() {
            self.release_slot(slot);
        }
    }

    /// Take the first free slot, reclaiming those of platforms that are gone when none is.
    fn take_slot(&self) -> Result<u32, String> {
        let _lock = DirLock::take(&self.dir)?;
        let slots = self.dir.join("slots");
        let free = || (0..SLOTS).find(|s| !slots.join(s.to_string()).exists());
        let slot = match free() {
            Some(s) => s,
            None if self.reclaim(false) > 0 => free().ok_or("no free network slot")?,
            None => return Err("no free network slot: too many instances".into()),
        };
        fs::write(
            slots.join(slot.to_string()),
            format!("{} {}", self.key, self.owner),
        )
        .map_err(|e| format!("record network slot: {e}"))?;
        Ok(slot)
    }

    /// Create a namespace and veth pair; `outbound` adds a default route through the host.
    pub(crate) fn allocate(&self, outbound: bool) -> Result<NetLease, String> {
        let slot = self.take_slot()?;
        let (host_ip, ip) = slot_ips(slot);
        let (ns, hif) = (netns_name(slot), host_if(slot));
        let host = format!(
            "netns add {ns}\nlink add {hif} type veth peer name eth0 netns {ns}\n\
             addr add {host_ip}/30 dev {hif}\nlink set {hif} up\n"
        );
        let mut inside = format!("addr add {ip}/30 dev eth0\nlink set eth0 up\nlink set lo up\n");
        if outbound {
            inside.push_str(&format!("route add default via {host_ip}\n"));
        }
        let result = ip_batch(&[], &host).and_then(|()| ip_batch(&["-n", &ns], &inside));
        match result {
            Ok(()) => Ok(NetLease {
                slot,
                netns: ns,
                ip,
            }),
            Err(e) => {
                self.release_slot(slot);
                Err(e)
            }
        }
    }

    /// Remove an instance's namespace (which destroys its veth pair) and free the slot.
    pub(crate) fn release(&self, lease: &NetLease) {
        self.release_slot(lease.slot);
    }

    /// Tear slot `slot` down if this platform still holds it. Done under the allocation lock,
    /// so a slot released twice (an instance's own clean-up racing the platform's final one)
    /// can never take down a namespace another platform has since been given.
    fn release_slot(&self, slot: u32) {
        let Ok(_lock) = DirLock::take(&self.dir) else {
            return;
        };
        let file = self.dir.join("slots").join(slot.to_string());
        if fs::read_to_string(&file).map_or(true, |t| slot_key(&t) != self.key) {
            return;
        }
        teardown(slot);
        let _ = fs::remove_file(file);
    }
}

/// The platform key a slot file names (its first word).
fn slot_key(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

/// Remove slot `slot`'s namespace (which destroys its veth pair), or a host end left without
/// it (interrupted setup).
fn teardown(slot: u32) {
    let ns = netns_name(slot);
    if Path::new("/run/netns").join(&ns).exists() {
        if let Err(e) = ip_batch(&[], &format!("netns del {ns}\n")) {
            tracing::warn!("removing network namespace {ns}: {e}");
        }
    }
    let hif = host_if(slot);
    if Path::new("/sys/class/net").join(&hif).exists() {
        let _ = ip_batch(&[], &format!("link del {hif}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_disjoint_30s() {
        assert_eq!(
            slot_ips(0),
            (Ipv4Addr::new(10, 88, 0, 1), Ipv4Addr::new(10, 88, 0, 2))
        );
        assert_eq!(
            slot_ips(SLOTS - 1),
            (
                Ipv4Addr::new(10, 88, 255, 253),
                Ipv4Addr::new(10, 88, 255, 254)
            )
        );
        assert!(host_if(SLOTS - 1).len() <= 15);
    }
}

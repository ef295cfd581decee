//! Secrets at rest for `virga up`: the key the store seals them with (`VIRGA_SECRETS_KEY`,
//! or a 0600 key file outside the data directory, created at first start), and the tmpfs,
//! outside the data directory too, where the files instances read are written.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::Digest;
use virga_store::{SecretsKey, Store, StoreError};

/// The environment variable that may hold the key itself.
pub const KEY_ENV: &str = "VIRGA_SECRETS_KEY";

/// The key from `VIRGA_SECRETS_KEY`, taken out of the environment so that no process the
/// platform starts inherits it. Call before any other thread runs.
pub fn take_env_key() -> Result<Option<SecretsKey>> {
    let Some(text) = std::env::var_os(KEY_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(KEY_ENV);
    let text = text.to_string_lossy();
    if text.trim().is_empty() {
        bail!("{KEY_ENV} is set but empty: set it to a key (`openssl rand -hex 32`) or unset it");
    }
    let key = SecretsKey::parse(&text).map_err(|e| {
        anyhow::anyhow!(
            "{KEY_ENV} is not usable: {e}; give 32 bytes as 64 hex digits or base64 \
             (`openssl rand -hex 32` makes one)"
        )
    })?;
    Ok(Some(key))
}

/// The key file used without `--secrets-key-file`: `/etc/virga/secrets.key` for root, else
/// `$XDG_CONFIG_HOME/virga/secrets.key` (`~/.config/virga/secrets.key`).
fn default_key_file() -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/etc/virga/secrets.key"));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!(
                "no place for the secrets key file: set HOME or XDG_CONFIG_HOME, pass \
                 --secrets-key-file, or set {KEY_ENV}"
            ),
        },
    };
    Ok(config.join("virga/secrets.key"))
}

/// Open the store in `data_dir`, its secrets sealed with `from_env` or else the key in
/// `key_file` (default: [`default_key_file`]); also says where the key came from.
pub fn open_store(
    data_dir: &Path,
    from_env: Option<SecretsKey>,
    key_file: Option<&Path>,
) -> Result<(Store, String)> {
    let (key, origin, hint, path) = match from_env {
        Some(key) => (
            key,
            format!("from {KEY_ENV}"),
            format!("set {KEY_ENV} to the key they were sealed with"),
            None,
        ),
        None => {
            let path = match key_file {
                Some(p) => p.to_path_buf(),
                None => default_key_file()?,
            };
            let (key, created) = SecretsKey::load_or_create(&path)?;
            let state = if created {
                "did not exist, so a new key was just written there"
            } else {
                "holds another key"
            };
            let hint = format!(
                "the key file {} {state}: put the key they were sealed with in it, or set \
                 {KEY_ENV} to it",
                path.display()
            );
            let origin = format!("with the key in {}", path.display());
            (key, origin, hint, Some(path))
        }
    };
    let store = match open_waiting(data_dir, key) {
        Err(e @ StoreError::WrongKey(_)) => bail!("{e}. Nothing was changed; {hint}"),
        other => {
            other.with_context(|| format!("open the data directory {}", data_dir.display()))?
        }
    };
    if let Some(path) = path.filter(|p| p.canonicalize().is_ok_and(|c| c.starts_with(store.dir())))
    {
        tracing::warn!(
            "the secrets key file {} is inside the data directory: a copy of the directory \
             reveals its secrets; keep the key elsewhere (--secrets-key-file)",
            path.display()
        );
    }
    Ok((store, origin))
}

/// Open the store, waiting a little while its file is locked: right after a crash, a child of
/// the previous run that was between fork and exec still shares the lock until it dies.
fn open_waiting(dir: &Path, key: SecretsKey) -> virga_store::Result<Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir, key.clone()) {
            Err(StoreError::Db(e))
                if e.contains("already open") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// tmpfs's and ramfs's `statfs` magic numbers.
const MEMORY_FS: [i64; 2] = [0x0102_1994, 0x8584_58f6];
/// The tmpfs of the platform's own holds at most this much.
const TMPFS_OPTIONS: &std::ffi::CStr = c"size=64m,nr_inodes=16384,mode=0700";
/// Names of secrets directories start so (the rest is a digest of the data directory).
const PREFIX: &str = "virga-secrets-";
/// File in a secrets directory naming the process that owns it.
const OWNER: &str = ".owner";

/// The directory instances' secret files are written to: a tmpfs of the platform's own at
/// `/run/virga-secrets-KEY` as root, else a 0700 directory in `$XDG_RUNTIME_DIR` or
/// `/dev/shm`. Unmounted or removed when dropped (after the instances stopped).
pub struct SecretsTmpfs {
    path: PathBuf,
    mounted: bool,
}

impl SecretsTmpfs {
    /// Make it empty for the data directory `data_dir` (what a crashed run left there is
    /// removed first), and remove those of platforms that are gone.
    pub fn create(data_dir: &Path) -> Result<SecretsTmpfs> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let mut digest = sha2::Sha256::new();
        digest.update(uid.to_le_bytes());
        digest.update(data_dir.as_os_str().as_bytes());
        let digest = digest.finalize();
        let name = format!("{PREFIX}{}", &hex::encode(digest)[..16]);
        if uid == 0 {
            let path = Path::new("/run").join(&name);
            clear(&path)?;
            match mount_own(&path) {
                Ok(()) => return SecretsTmpfs::adopt(path, true),
                Err(e) => {
                    let _ = fs::remove_dir(&path);
                    tracing::warn!("{e}: secrets go to a directory on a shared tmpfs instead");
                }
            }
        }
        let path = memory_dir()?.join(&name);
        clear(&path)?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("create {}", path.display()))?;
        SecretsTmpfs::adopt(path, false)
    }

    /// Record this process as `path`'s owner and sweep what dead platforms left beside it.
    fn adopt(path: PathBuf, mounted: bool) -> Result<SecretsTmpfs> {
        let this = SecretsTmpfs { path, mounted };
        let me = process_start(std::process::id()).context("read /proc/self/stat")?;
        fs::write(
            this.path.join(OWNER),
            format!("{} {me}\n", std::process::id()),
        )
        .with_context(|| format!("write {}", this.path.join(OWNER).display()))?;
        if let Some(dir) = this.path.parent() {
            sweep(dir, &this.path);
        }
        Ok(this)
    }

    /// Where the secrets directories go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `virga up` prints about it.
    pub fn describe(&self) -> String {
        let kind = if self.mounted {
            "a tmpfs of its own"
        } else {
            "a 0700 directory on a tmpfs"
        };
        format!("{} ({kind})", self.path.display())
    }
}

impl Drop for SecretsTmpfs {
    fn drop(&mut self) {
        if let Err(e) = clear(&self.path) {
            tracing::warn!("remove the secrets directory: {e:#}");
        }
    }
}

/// The shared tmpfs directory for a platform without a tmpfs of its own.
fn memory_dir() -> Result<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    for dir in runtime.into_iter().chain([PathBuf::from("/dev/shm")]) {
        if is_memory_fs(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "no tmpfs for the files instances read their secrets from: mount one on /dev/shm, or \
         set XDG_RUNTIME_DIR to a directory on a tmpfs"
    )
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL", p.display()))
}

fn is_memory_fs(dir: &Path) -> bool {
    let Ok(c) = cpath(dir) else { return false };
    // SAFETY: statfs fills the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && MEMORY_FS.contains(&(st.f_type as i64))
}

/// Create `path` (0700) and mount a size-limited tmpfs of the platform's own on it.
fn mount_own(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("create {}", path.display()))?;
    let c = cpath(path)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: mount(2) with NUL-terminated strings; the flags are plain integers.
    let r = unsafe {
        libc::mount(
            c"virga-secrets".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            TMPFS_OPTIONS.as_ptr().cast(),
        )
    };
    if r != 0 {
        bail!(
            "mount a tmpfs on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Remove `path` with everything on it: the tmpfs mounted there (all of them, if a crash
/// left one under another) and the directory itself. Refuses one of another user's.
fn clear(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        bail!(
            "{} belongs to uid {}, not to this user: remove it (virga keeps the secrets \
             instances read there)",
            path.display(),
            meta.uid()
        );
    }
    let removed = if meta.is_dir() {
        let c = cpath(path)?;
        for _ in 0..8 {
            // SAFETY: umount2 on a NUL-terminated path; it fails harmlessly once nothing is
            // mounted there (or without the right to unmount).
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        // Another platform's start swept it at the same time.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.with_context(|| format!("remove {}", path.display())),
    }
}

/// The start time of process `pid` (clock ticks since boot), from `/proc/PID/stat`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; field 22 is the start time.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Remove the secrets directories in `dir` (other than `mine`) whose owner is gone: a
/// platform that crashed and never started again on its data directory.
fn sweep(dir: &Path, mine: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(PREFIX);
        if !ours || path == mine {
            continue;
        }
        // No owner file (yet, or not ours to read): leave it.
        let Ok(owner) = fs::read_to_string(path.join(OWNER)) else {
            continue;
        };
        let mut words = owner.split_whitespace().map(|w| w.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (words.next(), words.next()) else {
            continue;
        };
        let alive = u32::try_from(pid)
            .ok()
            .and_then(process_start)
            .is_some_and(|s| s == start);
        if !alive {
            if let Err(e) = clear(&path) {
                tracing::warn!("remove the secrets of a platform that is gone: {e:#}");
            }
        }
    }
}

//! The systems under test: a fresh `virga up` in a temporary data directory (with
//! deployment through the OpenFaaS API or through `virga new` + `virga deploy`), and a
//! standalone `virga-watchdog` started with a given environment, e.g. the one an unpacked
//! bundle's `virga-bundle.json` asks for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::runner::{free_port, read_text, Proc};

/// Admin password given to the platforms the benchmarks start.
pub const ADMIN_PASSWORD: &str = "virga-bench-admin";

/// How long a process gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The `virga` CLI.
    pub virga: PathBuf,
    /// `virga-watchdog`.
    pub watchdog: PathBuf,
    /// This very binary (it doubles as the fast upstream server).
    pub bench: PathBuf,
}

impl Bins {
    /// Looks in `dir`, by default the directory of the running `virga-bench`.
    pub fn locate(dir: Option<&Path>) -> Result<Bins> {
        let bench = std::env::current_exe().context("locate virga-bench itself")?;
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => bench
                .parent()
                .context("virga-bench has no parent directory")?
                .to_path_buf(),
        };
        let find = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} not found: build it first with `cargo build --release --bins` (or pass --bin-dir)",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Bins {
            virga: find("virga")?,
            watchdog: find("virga-watchdog")?,
            bench,
        })
    }
}

/// Label that keeps a benchmarked function at one instance.
pub const SCALE_MAX: &str = "com.openfaas.scale.max";

/// A running `virga up` with its own data directory.
pub struct Platform {
    proc: Proc,
    /// Gateway base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    work: PathBuf,
    bins: Bins,
}

impl Platform {
    /// Starts `virga up --listen 127.0.0.1:0` with a data directory under `work` and
    /// instances isolated as `isolation` says (`VIRGA_ISOLATION`: process, runc, auto).
    pub fn start(bins: &Bins, work: &Path, isolation: &str) -> Result<Platform> {
        Platform::start_with(bins, work, isolation, &[])
    }

    /// Like [`Platform::start`], with extra `virga up` environment variables.
    pub fn start_with(
        bins: &Bins,
        work: &Path,
        isolation: &str,
        env: &[(&str, &str)],
    ) -> Result<Platform> {
        let data = work.join("data");
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new(&bins.virga);
        cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("VIRGA_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("VIRGA_LOG", "warn")
            .env("VIRGA_ISOLATION", isolation)
            .env("NO_COLOR", "1")
            // The system's tools, as on a server: a developer's version-manager shims (pyenv
            // here) would add their own start-up to every function start.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env.iter().copied())
            .current_dir(work);
        let mut proc = Proc::spawn("virga up", cmd, &work.join("virga-up.log"))?;
        let line = proc.first_line(START_TIMEOUT)?;
        let url = line
            .strip_prefix("Virga gateway listening on ")
            .with_context(|| format!("unexpected first line from virga up: {line:?}"))?
            .trim()
            .to_string();
        Ok(Platform {
            proc,
            url,
            work: work.to_path_buf(),
            bins: bins.clone(),
        })
    }

    /// The value of the first `/metrics` line starting with `prefix`, if any.
    pub fn metric(&self, prefix: &str) -> Result<Option<f64>> {
        let text = reqwest::blocking::get(format!("{}/metrics", self.url))
            .context("GET /metrics")?
            .text()?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok()))
    }

    /// Idle runtimes in the python3-http warm pool.
    pub fn python_pool_idle(&self) -> Result<f64> {
        Ok(self
            .metric("virga_warm_pool_instances{function_name=\"python3-http-")?
            .unwrap_or(0.0))
    }

    /// URL that invokes function `name` through the gateway.
    pub fn function_url(&self, name: &str) -> String {
        format!("{}/function/{name}", self.url)
    }

    /// Deploys with `POST /system/functions` (an OpenFaaS `FunctionDeployment` document).
    pub fn deploy_json(&mut self, deployment: &serde_json::Value) -> Result<()> {
        self.proc.check_alive()?;
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/system/functions", self.url))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(deployment)
            .send()
            .context("POST /system/functions")?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "deploying {deployment} failed: HTTP {status}: {}",
                r.text().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `virga new NAME --lang LANG` then `virga deploy` in a fresh directory under the
    /// platform's work directory; returns the bundle archive `build/NAME.tar.gz`.
    pub fn deploy_template(&mut self, name: &str, lang: &str) -> Result<PathBuf> {
        self.deploy_template_with(name, lang, &[])
    }

    /// [`Platform::deploy_template`] with some of the starter's files (`(path in the
    /// function's folder, contents)`) replaced before the deploy.
    pub fn deploy_template_with(
        &mut self,
        name: &str,
        lang: &str,
        files: &[(&str, &str)],
    ) -> Result<PathBuf> {
        let dir = self.work.join(format!("src-{name}"));
        std::fs::create_dir_all(&dir)?;
        self.virga(&dir, &["new", name, "--lang", lang])?;
        for (rel, contents) in files {
            std::fs::write(dir.join(name).join(rel), contents)?;
        }
        // One instance: figures compare one instance with one standalone watchdog, and the
        // autoscaler must not add replicas (and their start-up CPU) under the load.
        let stack = dir.join("stack.yaml");
        let mut text = std::fs::read_to_string(&stack)?;
        text.push_str(&format!("    labels:\n      {SCALE_MAX}: \"1\"\n"));
        std::fs::write(&stack, text)?;
        self.virga(
            &dir,
            &["deploy", "-f", "stack.yaml", "-g", &self.url.clone()],
        )?;
        let archive = dir.join("build").join(format!("{name}.tar.gz"));
        if !archive.is_file() {
            self.virga(&dir, &["build", "-f", "stack.yaml"])?;
        }
        if !archive.is_file() {
            bail!("`virga deploy` left no bundle at {}", archive.display());
        }
        Ok(archive)
    }

    fn virga(&mut self, dir: &Path, args: &[&str]) -> Result<()> {
        self.proc.check_alive()?;
        let out = Command::new(&self.bins.virga)
            .args(args)
            .current_dir(dir)
            .env("VIRGA_PASSWORD", ADMIN_PASSWORD)
            .env("VIRGA_CONFIG_DIR", self.work.join("cli-config"))
            .output()
            .with_context(|| format!("run virga {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`virga {}` failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Adds the end of the platform's log to an error about it.
    pub fn explain(&mut self, err: anyhow::Error) -> anyhow::Error {
        match self.proc.check_alive() {
            Err(dead) => err.context(dead.to_string()),
            Ok(()) => err.context(format!("virga up is running{}", self.proc.log_tail())),
        }
    }
}

/// A standalone HTTP server virga-bench started: a `virga-watchdog`, or the bare proxy.
pub struct Server {
    _proc: Proc,
    /// Base URL it listens on.
    pub url: String,
}

impl Server {
    /// Starts the watchdog with `env` (plus `port=0`, and a free port in `upstream_url`
    /// in http mode), in directory `cwd`, logging to `log`.
    pub fn start(
        bins: &Bins,
        env: &BTreeMap<String, String>,
        cwd: &Path,
        log: &Path,
    ) -> Result<Server> {
        let mut env = env.clone();
        env.insert("port".into(), "0".into());
        if env.get("mode").map(String::as_str) == Some("http") {
            let upstream = env.get("upstream_url").cloned().unwrap_or_default();
            env.insert("upstream_url".into(), with_free_port(&upstream)?);
        }
        let mut cmd = Command::new(&bins.watchdog);
        cmd.envs(&env).env("NO_COLOR", "1").current_dir(cwd);
        let (proc, url) = listening("virga-watchdog", cmd, log, "virga-watchdog listening on ")?;
        Ok(Server { _proc: proc, url })
    }

    /// Starts the watchdog in http mode over `fprocess`, whose server listens on the port of
    /// `upstream_url` (a free one is chosen), in `cwd`, logging to `log`.
    pub fn http_mode(
        bins: &Bins,
        fprocess: &str,
        upstream_url: &str,
        cwd: &Path,
        log: &Path,
    ) -> Result<Server> {
        let env: BTreeMap<String, String> = [
            ("fprocess", fprocess),
            ("mode", "http"),
            ("upstream_url", upstream_url),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Server::start(bins, &env, cwd, log)
    }

    /// Starts `virga-bench bare-proxy` in front of `target`, logging to `log`.
    pub fn bare_proxy(bins: &Bins, target: &str, log: &Path) -> Result<Server> {
        let mut cmd = Command::new(&bins.bench);
        cmd.args(["bare-proxy", target]);
        let (proc, url) = listening("bare-proxy", cmd, log, "listening on ")?;
        Ok(Server { _proc: proc, url })
    }
}

/// Spawns `cmd` and reads its first line, `{prefix}ADDR`; the process and `http://ADDR`.
fn listening(name: &str, cmd: Command, log: &Path, prefix: &str) -> Result<(Proc, String)> {
    let mut proc = Proc::spawn(name, cmd, log)?;
    let line = proc.first_line(START_TIMEOUT)?;
    let addr = line
        .strip_prefix(prefix)
        .with_context(|| format!("unexpected first line from {name}: {line:?}"))?
        .trim()
        .to_string();
    Ok((proc, format!("http://{addr}")))
}

/// `http://127.0.0.1:PORT/PATH` with PORT a free port and PATH kept from `upstream`.
fn with_free_port(upstream: &str) -> Result<String> {
    let rest = upstream
        .strip_prefix("http://")
        .with_context(|| format!("upstream_url {upstream:?} is not http://"))?;
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    Ok(format!("http://127.0.0.1:{}{path}", free_port()?))
}

/// Unpacks a bundle archive into `dest`; returns the watchdog env of its `virga-bundle.json`.
pub fn unpack_bundle(archive: &Path, dest: &Path) -> Result<BTreeMap<String, String>> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("open {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dest)
        .with_context(|| format!("unpack {} into {}", archive.display(), dest.display()))?;
    let manifest_path = dest.join("virga-bundle.json");
    let manifest: serde_json::Value = serde_json::from_str(&read_text(&manifest_path)?)
        .with_context(|| format!("parse {}", manifest_path.display()))?;
    let env = manifest
        .get("env")
        .and_then(|e| e.as_object())
        .with_context(|| format!("{} has no env object", manifest_path.display()))?;
    env.iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .with_context(|| format!("env {k} in the bundle manifest is not a string"))?;
            Ok((k.clone(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_gets_a_free_port_and_keeps_its_path() {
        let u = with_free_port("http://127.0.0.1:5000/base").unwrap();
        assert!(u.starts_with("http://127.0.0.1:") && u.ends_with("/base"));
        assert!(!u.contains(":5000"));
        assert!(with_free_port("https://x").is_err());
    }
}

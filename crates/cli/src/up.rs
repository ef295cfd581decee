//! `virga up`: runs the whole platform in this process: the embedded store in the data
//! directory, the local provider (instances as watchdog child processes) and the gateway.
//! Zero configuration: the admin password is generated on first start and kept 0600.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use virga_gateway::{AppState, Credentials, GatewayConfig, Listeners, ServeConfig};
use virga_provider::SharedProvider;
use virga_provider_local::{IsolationKind, LocalProvider, ProviderConfig, Runc};
use virga_store::{SecretsKey, Store};

use crate::at_rest;

/// Options of `virga up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address the gateway listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of the web console, an origin of its own that never serves function answers
    /// (default: --listen's host, its port + 1, or a free port when that is 0), or `off`.
    #[arg(long, env = "VIRGA_CONSOLE_LISTEN")]
    pub console_listen: Option<String>,
    /// How long a client may take to send a request's head (request line and headers): a
    /// duration (`10s`, `1m`, `2h`) or whole seconds, as for every timeout here.
    #[arg(long, default_value = "10s", value_parser = timeout)]
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    #[arg(long, default_value = "60s", value_parser = timeout)]
    pub idle_timeout: Duration,
    /// How long a request body may stop arriving before the request gets 408 (a function
    /// annotated `virga.http.stream-request` gets its call's own limit instead).
    #[arg(long, default_value = "30s", value_parser = timeout)]
    pub body_read_timeout: Duration,
    /// Connections served at once on all routes (lowered to fit the open-file limit).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Further connections accepted beyond --max-connections, served only for /system/* and
    /// /healthz, so operators get through when the public routes are full.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub reserved_connections: u64,
    /// Directory of the embedded store, bundles and runtime files.
    #[arg(long, default_value = "./.virga", env = "VIRGA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// File holding the key secrets are sealed with, created (0600) at first start
    /// [default: /etc/virga/secrets.key as root, else ~/.config/virga/secrets.key];
    /// `VIRGA_SECRETS_KEY` (the key itself) takes precedence.
    #[arg(long, env = "VIRGA_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Deploy the example functions once the gateway is up.
    #[arg(long)]
    pub with_examples: bool,
    /// Largest request body for a function call, in bytes (413 beyond).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Most bytes one uploaded bundle may unpack to (413 beyond).
    #[arg(long, default_value_t = 1 << 30)]
    pub max_bundle_unpacked_bytes: u64,
    /// Most entries (files, directories, links) one uploaded bundle may hold (413 beyond).
    #[arg(long, default_value_t = 100_000)]
    pub max_bundle_entries: u64,
    /// How long a call may wait for its answer to start through the gateway before it gets
    /// 504; a function whose `exec_timeout` is longer gets that instead (`2h` and more).
    #[arg(long, default_value = "60s", value_parser = timeout)]
    pub upstream_timeout: Duration,
    /// How long a request waits for an instance to become ready before it gets 503.
    #[arg(long, default_value = "30s", value_parser = timeout)]
    pub ready_timeout: Duration,
    /// Milliseconds a call waits for a free slot when every instance is at max_inflight (429 beyond).
    #[arg(long, default_value_t = 1000)]
    pub queue_timeout_ms: u64,
    /// Seconds of lower load before the autoscaler removes replicas (the stabilisation window).
    #[arg(long, default_value_t = 30)]
    pub scale_down_window: u64,
    /// Runtimes kept started per template (python3-http, node20, python3-lambda, node-lambda) so cold starts skip the
    /// interpreter start; 0 turns the warm pool off.
    #[arg(long, default_value_t = 2, env = "VIRGA_WARM_POOL")]
    pub warm_pool: usize,
    /// Do not fork python3-http and node20 runtimes from a pre-forked interpreter (zygote).
    #[arg(long, env = "VIRGA_NO_ZYGOTE")]
    pub no_zygote: bool,
    /// Path of the virga-watchdog binary (default: next to this binary, then PATH).
    #[arg(long, env = "VIRGA_WATCHDOG")]
    pub watchdog: Option<PathBuf>,
    /// How function instances are isolated: runc sandboxes, plain processes, or runc when
    /// usable (root and runc installed) and processes otherwise.
    #[arg(long, value_enum, default_value = "auto", env = "VIRGA_ISOLATION")]
    pub isolation: Isolation,
    /// Queue of async calls: `embedded` (a log in the data directory) or `nats://HOST:PORT`
    /// (NATS JetStream, shareable by several gateways).
    #[arg(long, default_value = "embedded", env = "VIRGA_QUEUE")]
    pub queue: String,
    /// Async calls: body limit, queue limits, callbacks.
    #[command(flatten)]
    pub async_calls: crate::queue::AsyncArgs,
    /// Event triggers: NATS and MQTT brokers and their credentials.
    #[command(flatten)]
    pub triggers: crate::up_triggers::TriggerArgs,
    /// Registry images: insecure registries, credentials, limits.
    #[command(flatten)]
    pub images: crate::up_images::ImageArgs,
    /// Serve HTTPS (and HTTP/2 over TLS) on both listeners with this certificate chain
    /// (PEM, the server's certificate first); needs --tls-key. Plain HTTP without it.
    #[arg(long, requires = "tls_key", env = "VIRGA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "VIRGA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Log format of the platform's own logs.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A timeout option: the platform's duration syntax (`30s`, `1m30s`, `2h`, whole seconds),
/// more than zero.
fn timeout(s: &str) -> Result<Duration, String> {
    match virga_types::duration::parse(s)? {
        Duration::ZERO => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// Isolation of function instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// runc if usable, else processes (said at start and in /system/info).
    Auto,
    /// Always runc; fail to start without it.
    Runc,
    /// Plain processes, no sandbox.
    Process,
}

/// The isolation the chosen mode asks for.
fn isolation(mode: Isolation, data_dir: &Path, watchdog: &Path) -> Result<IsolationKind> {
    if mode == Isolation::Process {
        return Ok(IsolationKind::Process);
    }
    match Runc::new(&data_dir.join("sandbox"), watchdog) {
        Ok(rt) => Ok(IsolationKind::Runc(Arc::new(rt))),
        Err(e) if mode == Isolation::Runc => bail!("runc sandboxes are unavailable: {e}"),
        Err(e) => {
            tracing::warn!(
                "runc sandboxes are unavailable ({e}): functions run as PLAIN PROCESSES, \
                 without isolation"
            );
            Ok(IsolationKind::Process)
        }
    }
}

/// Format of the platform's logs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Run the platform until SIGINT/SIGTERM.
pub fn run(args: UpArgs) -> Result<()> {
    init_logs(args.log_format);
    // Before the runtime's threads exist: the variable is removed from the environment.
    let env_key = crate::at_rest::take_env_key()?;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(serve(args, env_key))
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIRGA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(mut args: UpArgs, env_key: Option<SecretsKey>) -> Result<()> {
    let edge = serve_config(&args)?;
    // Before anything starts: a bad certificate or key stops `virga up` at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(virga_gateway::Tls::load(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (store, key_origin) =
        at_rest::open_store(&args.data_dir, env_key, args.secrets_key_file.as_deref())?;
    let store = Arc::new(store);
    // Sandbox configs, mounts and sockets need absolute paths: `./.virga` is the default.
    args.data_dir = store.dir().to_path_buf();
    let secrets_tmpfs = at_rest::SecretsTmpfs::create(&args.data_dir)?;
    let password = admin_password(&args.data_dir)?;
    let metrics = Arc::new(virga_metrics::Metrics::new());
    let logs = Arc::new(virga_logs::LogHub::new(virga_logs::LogConfig {
        dir: Some(args.data_dir.join("logs")),
        ..virga_logs::LogConfig::default()
    }));
    let images = crate::up_images::open(&args.images, &args.data_dir)?;
    let registry_config = args.images.registry_config(&args.data_dir);
    let pulls = virga_gateway::Pulls::new(logs.clone());
    crate::up_images::ensure(&images, &store, &registry_config, &pulls).await;
    let local = start_provider(
        &args,
        &store,
        &metrics,
        &logs,
        secrets_tmpfs.path(),
        &images,
    )?;
    let restored = local.provider.restore()?;
    let provider: SharedProvider = local.provider.clone();
    let state = AppState::new(
        gateway_config(&args),
        store,
        provider.clone(),
        Credentials::new("admin", &password),
        metrics,
        logs,
    );
    let quotas = state.clone();
    virga_scaler::spawn(
        provider.clone(),
        virga_scaler::ScalerConfig {
            scale_down_window: Duration::from_secs(args.scale_down_window),
            ..virga_scaler::ScalerConfig::default()
        },
        Arc::new(move |key: &str, wanted: u64| virga_gateway::quota_cap(&quotas, key, wanted)),
    );
    let isolation = local.provider.isolation();
    crate::up_images::enable(&state, images, registry_config, pulls, isolation);
    crate::queue::start(&state, &args.queue, &args.data_dir, &args.async_calls).await?;
    let connectors = crate::up_triggers::start(&state, &args.triggers).await?;
    let listeners = bind(&args, tls).await?;
    let addr = listeners.api.local_addr()?;
    let console_addr = listeners.console.as_ref().map(|l| l.local_addr());
    announce(
        scheme,
        addr,
        console_addr.transpose()?,
        &args.data_dir,
        restored,
        isolation,
    );
    println!(
        "  cold starts: {}",
        start_paths(&args, isolation, local.node_addon)
    );
    println!("  connections: {}", connection_limits(&edge));
    println!(
        "  triggers: {} (see `virga triggers`)",
        args.triggers.describe(&connectors)
    );
    println!(
        "  secrets: sealed {key_origin}; instances read them from {}",
        secrets_tmpfs.describe()
    );
    if args.with_examples {
        let url = format!("{scheme}://{addr}");
        let dir = args.data_dir.clone();
        tokio::task::spawn_blocking(move || crate::examples::deploy(&url, &password, &dir));
    }
    virga_gateway::serve(listeners, state, &edge, shutdown_signal())
        .await
        .context("serve HTTP")?;
    tracing::info!("stopping instances");
    local.provider.shutdown().await;
    drop(secrets_tmpfs);
    Ok(())
}

/// The local provider and what `virga up` keeps of its set-up.
struct Local {
    provider: Arc<LocalProvider>,
    /// Whether node's fork addon was found (for the start-up summary).
    node_addon: bool,
}

/// The local provider over `store`, reporting into `metrics` and `logs`, writing instances'
/// secret files under `secrets_dir`.
fn start_provider(
    args: &UpArgs,
    store: &Arc<Store>,
    metrics: &Arc<virga_metrics::Metrics>,
    logs: &Arc<virga_logs::LogHub>,
    secrets_dir: &Path,
    images: &Arc<virga_oci::Images>,
) -> Result<Local> {
    let watchdog = watchdog_path(args.watchdog.as_deref())?;
    let isolation = isolation(args.isolation, &args.data_dir, &watchdog)?;
    let node_addon = node_addon_path();
    let provider = LocalProvider::new(
        ProviderConfig {
            watchdog,
            run_dir: args.data_dir.join("run"),
            secrets_dir: secrets_dir.to_path_buf(),
            ready_timeout: args.ready_timeout,
            queue_timeout: Duration::from_millis(args.queue_timeout_ms),
            isolation,
            warm_pool: args.warm_pool,
            runtimes: crate::templates::embedded_runtimes(),
            zygote: !args.no_zygote,
            node_addon: node_addon.clone(),
            images: Some(images.clone()),
            metrics: metrics.clone(),
            logs: logs.clone(),
        },
        store.clone(),
    )?;
    Ok(Local {
        provider: Arc::new(provider),
        node_addon: node_addon.is_some(),
    })
}

fn gateway_config(args: &UpArgs) -> GatewayConfig {
    GatewayConfig {
        max_body_bytes: args.max_body_bytes,
        bundle_limits: virga_store::UnpackLimits {
            max_bytes: args.max_bundle_unpacked_bytes,
            max_entries: args.max_bundle_entries,
        },
        upstream_timeout: args.upstream_timeout,
        ..GatewayConfig::default()
    }
}

/// File descriptors kept for everything but client connections: the store, logs, instances'
/// pipes and sockets, the async queue.
const OTHER_FDS: u64 = 256;

/// The listeners' settings, with the connection cap lowered to fit the open-file limit, which
/// is first raised as far as the system allows (each API connection may need a second
/// descriptor for its call to an instance).
fn serve_config(args: &UpArgs) -> Result<ServeConfig> {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raise RLIMIT_NOFILE")?;
    let reserved = args.reserved_connections;
    // The API's reserve, and the console listener's cap and reserve.
    let budget = nofile.saturating_sub(OTHER_FDS + 3 * reserved) / 2;
    if budget == 0 {
        bail!(
            "the open-file limit ({nofile}) is too low for --reserved-connections {reserved}: \
             raise it (ulimit -n) or lower --reserved-connections"
        );
    }
    let mut max = args.max_connections;
    if max > budget {
        tracing::warn!(
            "--max-connections {max} lowered to {budget} to fit the open-file limit ({nofile})"
        );
        max = budget;
    }
    Ok(ServeConfig {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        body_read_timeout: args.body_read_timeout,
        max_connections: max as usize,
        reserved_connections: reserved as usize,
    })
}

/// Bind the API's listener, then the console's, both over `tls` if given.
async fn bind(args: &UpArgs, tls: Option<virga_gateway::Tls>) -> Result<Listeners> {
    let api = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "listen on {} (is another virga running? try --listen 127.0.0.1:0)",
                args.listen
            )
        })?;
    let addr = api.local_addr()?;
    let console = bind_console(args.console_listen.as_deref(), &args.listen, addr).await?;
    Ok(Listeners { api, console, tls })
}

/// The connection limits, as `virga up` prints them.
fn connection_limits(edge: &ServeConfig) -> String {
    format!(
        "up to {} at once (+{} for /system and /healthz); request heads within {:?}, bodies \
         without pauses over {:?}, idle connections closed after {:?}",
        edge.max_connections,
        edge.reserved_connections,
        edge.header_read_timeout,
        edge.body_read_timeout,
        edge.idle_timeout
    )
}

/// Bind the console's listener: `given` (`off` for none), else --listen's host at the API's
/// port + 1 (a free port when the API's was picked freely).
async fn bind_console(
    given: Option<&str>,
    listen: &str,
    api: SocketAddr,
) -> Result<Option<tokio::net::TcpListener>> {
    let addr = match given {
        Some("off") => return Ok(None),
        Some(a) => a.to_string(),
        None => {
            let asked_port = listen.rsplit_once(':').map(|(_, p)| p);
            let port = match asked_port {
                Some("0") => 0,
                _ => api.port().checked_add(1).with_context(|| {
                    format!(
                        "the API listens on port {}: pass --console-listen",
                        api.port()
                    )
                })?,
            };
            SocketAddr::new(api.ip(), port).to_string()
        }
    };
    let l = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| {
            format!(
                "listen on {addr} for the web console (is another virga running? pass \
             --console-listen ADDR, or off)"
            )
        })?;
    Ok(Some(l))
}

fn announce(
    scheme: &str,
    addr: SocketAddr,
    console: Option<SocketAddr>,
    data_dir: &Path,
    restored: usize,
    isolation: &str,
) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Virga gateway listening on {scheme}://{addr}");
    match console {
        Some(c) => writeln!(out, "  console: {scheme}://{c}/ui/ (user admin)"),
        None => writeln!(out, "  console: off (--console-listen off)"),
    }
    .ok();
    let _ = writeln!(out, "  data directory: {}", data_dir.display());
    let _ = writeln!(out, "  functions restored: {restored}");
    let how = if isolation == "runc" {
        "each instance in its own runc sandbox"
    } else {
        "plain processes, NO sandbox"
    };
    let _ = writeln!(out, "  isolation: {isolation} ({how})");
    if std::env::var_os("VIRGA_ADMIN_PASSWORD").is_some() {
        let _ = writeln!(out, "  login: admin, password from VIRGA_ADMIN_PASSWORD");
    } else {
        let _ = writeln!(
            out,
            "  login: admin, password in {}",
            data_dir.join(PASSWORD_FILE).display()
        );
    }
    let _ = out.flush();
}

const PASSWORD_FILE: &str = "admin-password";

/// The admin password: from VIRGA_ADMIN_PASSWORD, else the data directory's file (created once).
fn admin_password(data_dir: &Path) -> Result<String> {
    if let Ok(p) = std::env::var("VIRGA_ADMIN_PASSWORD") {
        if p.is_empty() {
            bail!("VIRGA_ADMIN_PASSWORD is set but empty: set a password or unset it");
        }
        return Ok(p);
    }
    let path = data_dir.join(PASSWORD_FILE);
    if let Ok(p) = std::fs::read_to_string(&path) {
        return Ok(p.trim().to_string());
    }
    let bytes: [u8; 16] = rand::random();
    let password = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(f, "{password}")?;
    f.sync_all()?;
    Ok(password)
}

/// The watchdog binary: `given`, else next to this binary, else on PATH.
pub(crate) fn watchdog_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("find the virga binary")?;
    let sibling = exe.with_file_name("virga-watchdog");
    if sibling.exists() {
        return Ok(sibling);
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("virga-watchdog"))
        .find(|p| p.exists())
    {
        return Ok(p);
    }
    bail!("virga-watchdog not found next to {} or on PATH: build it with `cargo build --release` or pass --watchdog", exe.display())
}

/// What makes cold starts fast here: the warm pool and which runtimes have a zygote.
fn start_paths(args: &UpArgs, isolation: &str, node_addon: bool) -> String {
    let pool = match args.warm_pool {
        0 => "warm pool off".to_string(),
        n => format!(
            "warm pool of {n} per runtime ({})",
            virga_provider_local::pooled_templates()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let zygotes = if args.no_zygote {
        "zygotes off"
    } else if isolation == "runc" {
        "no zygotes (each instance is its own sandbox)"
    } else if node_addon {
        "zygotes for python3-http and node20"
    } else {
        "zygote for python3-http (no node addon next to virga)"
    };
    format!("{pool}; {zygotes}")
}

/// The node fork addon, built next to this binary (`cargo build` builds it with the rest).
fn node_addon_path() -> Option<PathBuf> {
    let addon = std::env::current_exe()
        .ok()?
        .with_file_name("libvirga_node_zygote.so");
    if addon.exists() {
        return Some(addon);
    }
    tracing::info!(
        "{} not found: node runtimes start without a zygote",
        addon.display()
    );
    None
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

//! Lambda mode: the AWS Lambda Runtime API on a loopback port of its own, for an unmodified
//! Lambda runtime started once as `fprocess` (`runtime`), which long-polls it for one event at
//! a time (`runtime_api`). Calls on the function port are raw invokes (`raw`, the gateway's
//! Invoke API) or function-URL requests (`event_url`); both go through `invoke` (the queue,
//! the hand-over and the deadline). `logs` keeps a call's log lines for `X-Amz-Log-Type: Tail`,
//! `stream` relays streamed responses. A pooled instance starts no runtime until the platform
//! binds it to a function (`pool`).

mod errors;
mod event_url;
mod invoke;
mod logs;
mod pool;
mod raw;
mod runtime;
mod runtime_api;
mod stream;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::body::ResponseBody;
use crate::config::Config;
use crate::WatchdogError;

/// One event waiting for the runtime (or taken by it).
pub(crate) struct Event {
    /// The request id (`Lambda-Runtime-Aws-Request-Id`).
    id: String,
    /// The payload, passed unchanged.
    body: Bytes,
    /// `Lambda-Runtime-Client-Context` (decoded JSON).
    client_context: Option<HeaderValue>,
    /// Whether the caller asked for the log tail.
    tail: bool,
}

/// How an invocation ended.
pub(crate) enum Outcome {
    /// The runtime posted a (buffered) result.
    Response {
        /// The Content-Type the runtime posted, if any.
        content_type: Option<HeaderValue>,
        /// The result's bytes.
        body: Bytes,
    },
    /// The runtime streams its result.
    Stream {
        /// The Content-Type the runtime posted, if any.
        content_type: Option<HeaderValue>,
        /// The chunks, as they arrive.
        body: stream::Relay,
    },
    /// The function failed: Lambda's error JSON (`errorType`, `errorMessage`, ...).
    Error(Bytes),
}

/// The event handed to the runtime and not answered yet.
struct Current {
    id: String,
    /// Taken by the answer (a streamed answer leaves `Current` until the stream ends).
    reply: Option<tokio::sync::oneshot::Sender<Outcome>>,
    /// When it times out (a stream is cut then).
    deadline: Option<std::time::Instant>,
}

/// An event queued for the next `/next`.
struct Queued {
    event: Event,
    handed: tokio::sync::oneshot::Sender<std::time::Instant>,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// Why the runtime failed to initialise (answered to the calls until it has).
#[derive(Clone)]
enum InitFailure {
    /// The runtime posted `/runtime/init/error` (its error JSON).
    Posted(Bytes),
    /// It exited (or could not start) before asking for an event.
    Exited(String),
    /// It did not ask for an event within the init limit.
    TimedOut(std::time::Duration),
}

/// What the callers wait on: the runtime's generation, whether it has asked for an event,
/// and the init failure.
#[derive(Clone, Default)]
struct RuntimeState {
    /// Counts started runtime processes.
    generation: u64,
    /// The current process has called `/next`.
    initialised: bool,
    /// Some process ever did (the instance's readiness).
    ever_ready: bool,
    /// Set by a failed init, cleared by the next `/next`.
    failure: Option<InitFailure>,
    /// A pooled instance not bound to a function yet (no runtime running).
    unbound: bool,
}

/// Whether a call gets an answer: an event's, or the init failure's (or, unbound in a pool,
/// the bind's).
fn answers(s: &RuntimeState) -> bool {
    s.unbound || s.ever_ready || s.failure.is_some()
}

/// The mutable state under one lock (held only for a few field updates).
#[derive(Default)]
struct Inner {
    queued: Option<Queued>,
    current: Option<Current>,
    /// The running runtime process (its group is killed on a timeout).
    pid: Option<u32>,
}

/// What the function port, the Runtime API and the supervisor share.
pub(crate) struct Shared {
    /// Fixed at start, or at bind for a pooled instance.
    settings: std::sync::RwLock<Arc<runtime::Settings>>,
    /// One event at a time: held from queueing until the answer (or the stream's end).
    slot: Arc<Semaphore>,
    inner: Mutex<Inner>,
    /// Wakes a waiting `/next`.
    queued_notify: Notify,
    state: watch::Sender<RuntimeState>,
    /// A generation number here asks the supervisor to kill that runtime process.
    kill: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    logs: logs::Capture,
}

impl Shared {
    /// What the runtime runs with.
    fn settings(&self) -> Arc<runtime::Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask for the runtime process of `generation` to be killed (and started again).
    fn kill_generation(&self, generation: u64) {
        self.kill.send_if_modified(|k| {
            let newer = generation > *k;
            if newer {
                *k = generation;
            }
            newer
        });
    }

    /// Kill the current runtime process.
    fn kill_current(&self) {
        let generation = self.state.borrow().generation;
        self.kill_generation(generation);
    }
}

/// Resolves once `rx`'s value passes `f` (or its sender is gone); holds no borrow across
/// the await, so the future stays `Send`.
async fn until<T>(rx: &mut watch::Receiver<T>, f: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(f).await;
}

/// The lambda-mode handler of the function port.
pub struct Lambda {
    shared: Arc<Shared>,
    /// Set while a pooled instance waits for its bind.
    pool: Option<pool::Pool>,
    api: Mutex<Option<std::net::TcpListener>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Lambda {
    /// Binds the Runtime API on `127.0.0.1:0` and prepares the runtime's environment.
    pub fn bind(config: &Config) -> Result<Arc<Self>, WatchdogError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| WatchdogError::Bind { addr, source })?;
        listener.set_nonblocking(true)?;
        let api = listener.local_addr()?;
        let cwd = std::env::current_dir()?;
        let settings = runtime::Settings::new(config, api, &Default::default(), cwd);
        let pool = pool::Pool::from_env(config, api);
        let state = RuntimeState {
            unbound: pool.is_some(),
            ..RuntimeState::default()
        };
        Ok(Arc::new(Lambda {
            pool,
            shared: Arc::new(Shared {
                settings: std::sync::RwLock::new(Arc::new(settings)),
                slot: Arc::new(Semaphore::new(1)),
                inner: Mutex::new(Inner::default()),
                queued_notify: Notify::new(),
                state: watch::channel(state).0,
                kill: watch::channel(0).0,
                shutdown: watch::channel(false).0,
                logs: logs::Capture::default(),
            }),
            api: Mutex::new(Some(listener)),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Starts serving the Runtime API and the runtime process.
    pub fn start(&self) -> Result<(), WatchdogError> {
        let listener = self.api.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(listener) = listener {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(tokio::spawn(runtime_api::serve(
                Arc::clone(&self.shared),
                listener,
            )));
        }
        if self.pool.is_none() {
            tasks.push(tokio::spawn(runtime::supervise(Arc::clone(&self.shared))));
        }
        Ok(())
    }

    /// Stops the runtime process and the Runtime API.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Whether calls can be answered: the runtime has initialised (asked for its first
    /// event), or its init failed, whose error every call then gets, as on Lambda (the
    /// platform must not hold callers until its ready timeout).
    pub fn is_ready(&self) -> bool {
        answers(&self.shared.state.borrow())
    }

    /// Resolves once calls can be answered (see [`Self::is_ready`]).
    pub async fn wait_ready(&self) {
        until(&mut self.shared.state.subscribe(), answers).await;
    }

    /// Answers one call: a raw invoke (`X-Virga-Lambda-Invoke`) or a function-URL request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        if let Some(pool) = &self.pool {
            if self.shared.state.borrow().unbound {
                return pool.bind(self, req).await;
            }
        }
        if req
            .headers()
            .contains_key(virga_types::headers::X_VIRGA_LAMBDA_INVOKE)
        {
            raw::handle(&self.shared, req).await
        } else {
            event_url::handle(&self.shared, req, peer).await
        }
    }
}

//! Virga's Prometheus metrics, in one registry served by the gateway at `GET /metrics` in the
//! Prometheus text format (0.0.4). The gateway metrics carry the OpenFaaS names and labels
//! (`function_name` is `NAME.openfaas-fn`) so OpenFaaS dashboards work unchanged; Virga's own
//! are named `virga_*`. The provider records cold starts and OOM kills, the gateway records
//! invocations through per-function handles ([`FunctionMetrics`]) it caches, so the invoke path
//! costs a few atomic operations and no label building. Gauges that describe current state
//! (replicas, instances, log followers) are filled at scrape time from the caller's snapshot.
//!
//! `gateway_function_invocation_started` and `gateway_service_count` are exposed untyped: their
//! OpenFaaS names break Prometheus' naming lint as a counter (no `_total`) and a gauge (`_count`
//! suffix), and `rate()`/`sum()` work the same on untyped series.
//!
//! Hooks for the async queue and warm pools ([`Metrics::set_queue_depth`] and friends) are
//! registered but empty: a series appears once the hook is first called, never as a fake zero.

mod connections;
mod connectors;

pub use connections::OpenConnection;

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use thiserror::Error;
use virga_types::split_key;

/// `Content-Type` of the text [`Metrics::encode`] produces.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Bucket bounds of `gateway_functions_seconds` (client_golang's defaults, as OpenFaaS uses).
const CALL_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of `virga_cold_start_seconds`.
const COLD_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Encoding the registry failed.
#[derive(Debug, Error)]
#[error("cannot encode metrics: {0}")]
pub struct MetricsError(#[from] std::fmt::Error);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnLabels {
    function_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnCodeLabels {
    function_name: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    function_name: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// A counter exposed untyped, under its bare name (no `_total`).
#[derive(Clone, Debug, Default)]
struct UntypedCounter(Counter);

impl TypedMetric for UntypedCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for UntypedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// A gauge exposed untyped.
#[derive(Clone, Debug, Default)]
struct UntypedGauge(Gauge);

impl TypedMetric for UntypedGauge {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for UntypedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

fn cold_histogram() -> Histogram {
    Histogram::new(COLD_BUCKETS)
}

/// `NAME.NAMESPACE` (`NAME.openfaas-fn` in the default one), the `function_name` label
/// OpenFaaS uses, for the function keyed `key`.
pub fn function_label(key: &str) -> String {
    let (name, ns) = split_key(key);
    format!("{name}.{ns}")
}

fn fn_labels(name: &str) -> FnLabels {
    FnLabels {
        function_name: function_label(name),
    }
}

/// Current state of one function, taken by the provider at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionGauges {
    /// Function name (without namespace).
    pub name: String,
    /// Wanted instances (`gateway_service_count`).
    pub replicas: u64,
    /// Instances started but not ready yet.
    pub starting: u64,
    /// Instances serving.
    pub ready: u64,
}

/// The platform's metrics registry.
pub struct Metrics {
    registry: Registry,
    invocations: Family<FnCodeLabels, Counter>,
    seconds: HistogramFamily<FnCodeLabels>,
    started: Family<FnLabels, UntypedCounter>,
    service_count: Family<FnLabels, UntypedGauge>,
    cold_starts: Family<FnLabels, Counter>,
    cold_start_seconds: HistogramFamily<FnLabels>,
    instances: Family<InstanceLabels, Gauge>,
    oom_kills: Family<FnLabels, Counter>,
    timeouts: Family<FnLabels, Counter>,
    log_followers: Gauge,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_inflight: Family<QueueLabels, Gauge>,
    queue_retries: Family<FnLabels, Counter>,
    dead_letters: Family<FnLabels, Counter>,
    async_deliveries: Family<FnCodeLabels, Counter>,
    warm_pool: Family<FnLabels, Gauge>,
    warm_starts: Family<FnLabels, Counter>,
    connectors: connectors::ConnectorMetrics,
    connections: connections::ConnectionMetrics,
    /// Serialises scrapes: they refill the state gauges before encoding.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every Virga metric registered.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            invocations: Family::default(),
            seconds: Family::new_with_constructor(call_histogram),
            started: Family::default(),
            service_count: Family::default(),
            cold_starts: Family::default(),
            cold_start_seconds: Family::new_with_constructor(cold_histogram),
            instances: Family::default(),
            oom_kills: Family::default(),
            timeouts: Family::default(),
            log_followers: Gauge::default(),
            queue_depth: Family::default(),
            queue_inflight: Family::default(),
            queue_retries: Family::default(),
            dead_letters: Family::default(),
            async_deliveries: Family::default(),
            warm_pool: Family::default(),
            warm_starts: Family::default(),
            connectors: connectors::ConnectorMetrics::default(),
            connections: connections::ConnectionMetrics::default(),
            scrape: Mutex::new(()),
        };
        m.register_gateway();
        m.register_instances();
        m.register_queue();
        m.connectors.register(&mut m.registry);
        m.connections.register(&mut m.registry);
        m
    }

    /// The OpenFaaS gateway's metrics (the registry shares each family with `self`).
    fn register_gateway(&mut self) {
        let r = &mut self.registry;
        r.register(
            "gateway_function_invocation",
            "Function invocations by HTTP status code",
            self.invocations.clone(),
        );
        r.register(
            "gateway_functions_seconds",
            "Time a function call took through the gateway, by HTTP status code",
            self.seconds.clone(),
        );
        r.register(
            "gateway_function_invocation_started",
            "Function invocations started (a counter; untyped to keep the OpenFaaS name)",
            self.started.clone(),
        );
        r.register(
            "gateway_service_count",
            "Wanted replicas of a function (a gauge; untyped to keep the OpenFaaS name)",
            self.service_count.clone(),
        );
    }

    /// Virga's metrics of instances and their starts, and of log followers.
    fn register_instances(&mut self) {
        let r = &mut self.registry;
        r.register(
            "virga_cold_starts",
            "Calls that waited for an instance to start",
            self.cold_starts.clone(),
        );
        r.register(
            "virga_cold_start_seconds",
            "How long cold-started calls waited for an instance",
            self.cold_start_seconds.clone(),
        );
        r.register(
            "virga_instances",
            "Function instances by state (starting, ready)",
            self.instances.clone(),
        );
        r.register(
            "virga_instance_oom_kills",
            "Instances killed by SIGKILL the platform did not send (the kernel OOM killer)",
            self.oom_kills.clone(),
        );
        r.register(
            "virga_function_timeouts",
            "Function calls answered 504 (exec_timeout or the gateway's upstream timeout)",
            self.timeouts.clone(),
        );
        r.register(
            "virga_warm_starts",
            "Instances started by binding a pre-started runtime from the warm pool",
            self.warm_starts.clone(),
        );
        r.register(
            "virga_log_followers",
            "Open follow=true streams of /system/logs",
            self.log_followers.clone(),
        );
    }

    /// Virga's metrics of the async queue, and the warm pools' size.
    fn register_queue(&mut self) {
        let r = &mut self.registry;
        r.register(
            "virga_queue_depth",
            "Async calls waiting in a queue",
            self.queue_depth.clone(),
        );
        r.register(
            "virga_queue_inflight",
            "Async calls of a queue being executed",
            self.queue_inflight.clone(),
        );
        r.register(
            "virga_queue_retries",
            "Async calls retried",
            self.queue_retries.clone(),
        );
        r.register(
            "virga_queue_dead_letters",
            "Async calls given up on and dead-lettered",
            self.dead_letters.clone(),
        );
        r.register(
            "virga_async_deliveries",
            "Attempts at delivering async calls, by HTTP status code (also counted in \
             gateway_function_invocation_total, as OpenFaaS's queue worker calls through the gateway)",
            self.async_deliveries.clone(),
        );
        r.register(
            "virga_warm_pool_instances",
            "Idle pre-started runtimes per warm pool (function_name: the template runtime key)",
            self.warm_pool.clone(),
        );
    }

    /// Handles for recording calls of function `name`; cache them, they are cheap to use.
    pub fn function(&self, name: &str) -> FunctionMetrics {
        let labels = fn_labels(name);
        FunctionMetrics {
            started: self.started.get_or_create_owned(&labels),
            timeouts: self.timeouts.get_or_create_owned(&labels),
            connections: self.connections.function(&labels),
            label: labels.function_name,
            codes: RwLock::new(Vec::new()),
            invocations: self.invocations.clone(),
            seconds: self.seconds.clone(),
        }
    }

    /// A call to `name` waited `waited` for an instance to start.
    pub fn cold_start(&self, name: &str, waited: Duration) {
        let labels = fn_labels(name);
        self.cold_starts.get_or_create(&labels).inc();
        self.cold_start_seconds
            .get_or_create(&labels)
            .observe(waited.as_secs_f64());
    }

    /// An instance of `name` was killed for using too much memory.
    pub fn oom_kill(&self, name: &str) {
        self.oom_kills.get_or_create(&fn_labels(name)).inc();
    }

    /// Hook for the async queue: calls waiting in `queue`.
    pub fn set_queue_depth(&self, queue: &str, depth: i64) {
        let labels = QueueLabels {
            queue: queue.to_string(),
        };
        self.queue_depth.get_or_create(&labels).set(depth);
    }

    /// Hook for the async queue: calls of `queue` being executed now.
    pub fn set_queue_inflight(&self, queue: &str, inflight: i64) {
        let labels = QueueLabels {
            queue: queue.to_string(),
        };
        self.queue_inflight.get_or_create(&labels).set(inflight);
    }

    /// Hook for the async queue: an async call of function `name` is retried.
    pub fn queue_retry(&self, name: &str) {
        self.queue_retries.get_or_create(&fn_labels(name)).inc();
    }

    /// Hook for the async queue: an async call of function `name` is dead-lettered.
    pub fn dead_letter(&self, name: &str) {
        self.dead_letters.get_or_create(&fn_labels(name)).inc();
    }

    /// Hook for the async queue: an attempt at delivering a call of `name` ended with `code`.
    pub fn async_delivery(&self, name: &str, code: u16) {
        let labels = FnCodeLabels {
            function_name: function_label(name),
            code: code.to_string(),
        };
        self.async_deliveries.get_or_create(&labels).inc();
    }

    /// Idle pre-started runtimes of warm pool `key` (a template runtime).
    pub fn set_warm_pool(&self, key: &str, idle: i64) {
        self.warm_pool.get_or_create(&fn_labels(key)).set(idle);
    }

    /// An instance of `name` started from the warm pool.
    pub fn warm_start(&self, name: &str) {
        self.warm_starts.get_or_create(&fn_labels(name)).inc();
    }

    /// A connector took a message (or a schedule ticked) for `function`.
    pub fn connector_received(&self, connector: &'static str, function: &str) {
        self.connectors.received(connector, function);
    }

    /// An attempt at a connector's call of `function` ended (`ok`: a 2xx or 3xx), `lag`
    /// seconds after the message arrived.
    pub fn connector_invoked(&self, connector: &'static str, function: &str, ok: bool, lag: f64) {
        self.connectors.invoked(connector, function, ok, lag);
    }

    /// A connector's message for `function` was dead-lettered before any attempt.
    pub fn connector_failed(&self, connector: &'static str, function: &str) {
        self.connectors.failed(connector, function);
    }

    /// A connector's broker connection came up (`true`) or was lost.
    pub fn connector_connected(&self, connector: &'static str, up: bool) {
        self.connectors.connected(connector, up);
    }

    /// The registry in Prometheus text format, with the state gauges set from `functions` and
    /// `log_followers`.
    pub fn encode(
        &self,
        functions: &[FunctionGauges],
        log_followers: usize,
    ) -> Result<String, MetricsError> {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.service_count.clear();
        self.instances.clear();
        for f in functions {
            let labels = fn_labels(&f.name);
            self.service_count
                .get_or_create(&labels)
                .0
                .set(clamp(f.replicas));
            for (state, n) in [("starting", f.starting), ("ready", f.ready)] {
                let labels = InstanceLabels {
                    function_name: labels.function_name.clone(),
                    state,
                };
                self.instances.get_or_create(&labels).set(clamp(n));
            }
        }
        self.log_followers.set(clamp(log_followers as u64));
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One status code's series of one function.
struct CodeSeries {
    code: u16,
    total: Counter,
    seconds: Histogram,
}

/// Cached handles for one function's call metrics; the gateway keeps one per function.
pub struct FunctionMetrics {
    label: String,
    started: UntypedCounter,
    timeouts: Counter,
    connections: connections::FunctionConnections,
    codes: RwLock<Vec<CodeSeries>>,
    invocations: Family<FnCodeLabels, Counter>,
    seconds: HistogramFamily<FnCodeLabels>,
}

impl std::fmt::Debug for FunctionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionMetrics")
            .field("function_name", &self.label)
            .finish_non_exhaustive()
    }
}

impl FunctionMetrics {
    /// A call arrived (`gateway_function_invocation_started`).
    pub fn started(&self) {
        self.started.0.inc();
    }

    /// An upgraded connection (a WebSocket) opened; it counts as open until the handle drops.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.opened()
    }

    /// A call ended with HTTP status `code` after `took`.
    pub fn finished(&self, code: u16, took: Duration) {
        let secs = took.as_secs_f64();
        if code == 504 {
            self.timeouts.inc();
        }
        {
            let codes = self.codes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = codes.iter().find(|s| s.code == code) {
                s.total.inc();
                s.seconds.observe(secs);
                return;
            }
        }
        let mut codes = self.codes.write().unwrap_or_else(|e| e.into_inner());
        if !codes.iter().any(|s| s.code == code) {
            let labels = FnCodeLabels {
                function_name: self.label.clone(),
                code: code.to_string(),
            };
            codes.push(CodeSeries {
                code,
                total: self.invocations.get_or_create_owned(&labels),
                seconds: self.seconds.get_or_create_owned(&labels),
            });
        }
        if let Some(s) = codes.iter().find(|s| s.code == code) {
            s.total.inc();
            s.seconds.observe(secs);
        }
    }

    /// Calls of this function that ended, whatever their status (OpenFaaS `invocationCount`).
    pub fn invocations(&self) -> u64 {
        self.codes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.total.get())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn records_calls_with_openfaas_names() {
        let m = Metrics::new();
        let f = m.function("echo");
        for code in [200, 200, 500, 504] {
            f.started();
            f.finished(code, Duration::from_millis(20));
        }
        assert_eq!(f.invocations(), 4);
        // A second handle for the same function shares the series.
        m.function("echo").finished(200, Duration::from_millis(1));
        let gauges = [FunctionGauges {
            name: "echo".into(),
            replicas: 2,
            starting: 1,
            ready: 1,
        }];
        let text = m.encode(&gauges, 3).unwrap();
        let l = r#"function_name="echo.openfaas-fn""#;
        let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
        assert_eq!(
            v(&format!(
                "gateway_function_invocation_total{{{l},code=\"200\"}}"
            )),
            3.0
        );
        assert_eq!(
            v(&format!(
                "gateway_functions_seconds_count{{{l},code=\"500\"}}"
            )),
            1.0
        );
        assert_eq!(
            v(&format!("gateway_function_invocation_started{{{l}}}")),
            4.0
        );
        assert_eq!(v(&format!("virga_function_timeouts_total{{{l}}}")), 1.0);
        assert_eq!(v(&format!("gateway_service_count{{{l}}}")), 2.0);
        assert_eq!(v(&format!("virga_instances{{{l},state=\"ready\"}}")), 1.0);
        assert_eq!(v("virga_log_followers"), 3.0);
        assert!(text.contains("# TYPE gateway_function_invocation_started untyped\n"));
        // Hooks nobody called yet expose nothing.
        assert!(!text.contains("virga_queue_depth"), "{text}");
    }

    #[test]
    fn state_gauges_follow_the_snapshot() {
        let m = Metrics::new();
        let one = [FunctionGauges {
            name: "a".into(),
            replicas: 1,
            ..FunctionGauges::default()
        }];
        assert!(m.encode(&one, 0).unwrap().contains("a.openfaas-fn"));
        assert!(!m.encode(&[], 0).unwrap().contains("a.openfaas-fn"));
    }

    #[test]
    fn cold_starts_and_hooks() {
        let m = Metrics::new();
        m.cold_start("f", Duration::from_millis(300));
        m.set_queue_depth("default", 4);
        m.dead_letter("f");
        let text = m.encode(&[], 0).unwrap();
        assert_eq!(
            value(
                &text,
                r#"virga_cold_starts_total{function_name="f.openfaas-fn"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"virga_cold_start_seconds_bucket{function_name="f.openfaas-fn",le="0.5"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"virga_queue_depth{queue="default"}"#),
            Some(4.0)
        );
    }
}

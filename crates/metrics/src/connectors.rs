//! The event connectors' metrics (cron, NATS, MQTT): per connector and function, messages
//! received, invocations and failures, and the lag from a message's arrival (or a schedule's
//! tick) to its invocation; per connector, whether its broker is connected and how often it
//! was lost.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::function_label;

/// Bucket bounds of `virga_connector_lag_seconds`.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnFnLabels {
    connector: &'static str,
    function_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    connector: &'static str,
}

fn lag_histogram() -> Histogram {
    Histogram::new(LAG_BUCKETS)
}

/// The connectors' metric families.
#[derive(Debug)]
pub(crate) struct ConnectorMetrics {
    received: Family<ConnFnLabels, Counter>,
    invoked: Family<ConnFnLabels, Counter>,
    failed: Family<ConnFnLabels, Counter>,
    lag: Family<ConnFnLabels, Histogram, fn() -> Histogram>,
    connected: Family<ConnLabels, Gauge>,
    disconnects: Family<ConnLabels, Counter>,
}

impl Default for ConnectorMetrics {
    fn default() -> Self {
        ConnectorMetrics {
            received: Family::default(),
            invoked: Family::default(),
            failed: Family::default(),
            lag: Family::new_with_constructor(lag_histogram),
            connected: Family::default(),
            disconnects: Family::default(),
        }
    }
}

fn labels(connector: &'static str, function: &str) -> ConnFnLabels {
    ConnFnLabels {
        connector,
        function_name: function_label(function),
    }
}

impl ConnectorMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "virga_connector_messages_received",
            "Messages (or schedule ticks) a connector took for a function",
            self.received.clone(),
        );
        r.register(
            "virga_connector_invocations",
            "Attempts at invoking a function for a connector's message",
            self.invoked.clone(),
        );
        r.register(
            "virga_connector_failures",
            "Connector messages that failed: attempts answered with an error status, or \
             messages dead-lettered before any attempt (e.g. over the body limit)",
            self.failed.clone(),
        );
        r.register(
            "virga_connector_lag_seconds",
            "Time from a message's arrival (or a schedule's tick) to the answer of its invocation",
            self.lag.clone(),
        );
        r.register(
            "virga_connector_connected",
            "1 while the connector's broker is connected, else 0",
            self.connected.clone(),
        );
        r.register(
            "virga_connector_disconnects",
            "Times the connector lost (or could not reach) its broker",
            self.disconnects.clone(),
        );
    }

    pub(crate) fn received(&self, connector: &'static str, function: &str) {
        self.received
            .get_or_create(&labels(connector, function))
            .inc();
    }

    pub(crate) fn invoked(&self, connector: &'static str, function: &str, ok: bool, lag: f64) {
        let l = labels(connector, function);
        self.invoked.get_or_create(&l).inc();
        if !ok {
            self.failed.get_or_create(&l).inc();
        }
        self.lag.get_or_create(&l).observe(lag);
    }

    pub(crate) fn failed(&self, connector: &'static str, function: &str) {
        self.failed
            .get_or_create(&labels(connector, function))
            .inc();
    }

    pub(crate) fn connected(&self, connector: &'static str, up: bool) {
        let l = ConnLabels { connector };
        self.connected.get_or_create(&l).set(i64::from(up));
        if !up {
            self.disconnects.get_or_create(&l).inc();
        }
    }
}

//! Upgraded connections (WebSockets, any HTTP/1.1 `Upgrade`) per function: how many are open
//! now (`virga_function_connections_open`), and how many ended, by why
//! (`virga_function_connections_closed_total`: `closed` by a side, `failed`, `idle`,
//! `lifetime`, `drained` when their instance went away).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::FnLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    function_name: String,
    reason: &'static str,
}

/// The connection metric families.
#[derive(Debug, Default)]
pub(crate) struct ConnectionMetrics {
    open: Family<FnLabels, Gauge>,
    closed: Family<ClosedLabels, Counter>,
}

impl ConnectionMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "virga_function_connections_open",
            "Upgraded connections (WebSockets) open now, each also a call in flight",
            self.open.clone(),
        );
        r.register(
            "virga_function_connections_closed",
            "Upgraded connections that ended, by why: closed (by either side), failed, idle \
             (virga.connection.idle-timeout), lifetime (virga.connection.max-lifetime), drained \
             (their instance was removed)",
            self.closed.clone(),
        );
    }

    /// One function's handles.
    pub(crate) fn function(&self, labels: &FnLabels) -> FunctionConnections {
        FunctionConnections {
            open: self.open.get_or_create_owned(labels),
            closed: self.closed.clone(),
            label: labels.function_name.clone(),
        }
    }
}

/// The connection metrics of one function.
#[derive(Debug)]
pub(crate) struct FunctionConnections {
    open: Gauge,
    closed: Family<ClosedLabels, Counter>,
    label: String,
}

impl FunctionConnections {
    /// A connection opened.
    pub(crate) fn opened(&self) -> OpenConnection {
        self.open.inc();
        OpenConnection {
            open: self.open.clone(),
            closed: self.closed.clone(),
            label: self.label.clone(),
            reason: "closed",
        }
    }
}

/// One open connection, counted as open until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    open: Gauge,
    closed: Family<ClosedLabels, Counter>,
    label: String,
    reason: &'static str,
}

impl OpenConnection {
    /// It ended for `reason` (`closed`, `failed`, `idle`, `lifetime` or `drained`).
    pub fn ended(mut self, reason: &'static str) {
        self.reason = reason;
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
        let labels = ClosedLabels {
            function_name: std::mem::take(&mut self.label),
            reason: self.reason,
        };
        self.closed.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use crate::Metrics;

    #[test]
    fn open_and_closed_connections() {
        let m = Metrics::new();
        let f = m.function("ws");
        let value = |series: &str| -> f64 {
            let text = m.encode(&[], 0).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
        };
        let l = r#"function_name="ws.openfaas-fn""#;
        let (a, b) = (f.connection_opened(), f.connection_opened());
        assert_eq!(
            value(&format!("virga_function_connections_open{{{l}}}")),
            2.0
        );
        a.ended("idle");
        drop(b);
        assert_eq!(
            value(&format!("virga_function_connections_open{{{l}}}")),
            0.0
        );
        let closed = "virga_function_connections_closed_total";
        assert_eq!(value(&format!("{closed}{{{l},reason=\"idle\"}}")), 1.0);
        assert_eq!(value(&format!("{closed}{{{l},reason=\"closed\"}}")), 1.0);
    }
}

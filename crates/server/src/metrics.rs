//! Prometheus text exposition, hand-written: a handful of counters do not justify a registry crate.
//! Labels carry route templates and outcomes only, never identifiers or secrets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    key_operations: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// Counts a key operation by kind (e.g. `ctap`, `assign`) and result (`ok`, `error`).
    pub fn record_key_operation(&self, op: &str, result: &str) {
        let mut m = self
            .key_operations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry((op.to_owned(), result.to_owned())).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP keyward_http_requests_total HTTP requests by method, route template and status.\n");
        out.push_str("# TYPE keyward_http_requests_total counter\n");
        for ((method, route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "keyward_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            );
        }
        out.push_str("# HELP keyward_key_operations_total Key operations by kind and result.\n");
        out.push_str("# TYPE keyward_key_operations_total counter\n");
        for ((op, result), n) in self
            .key_operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "keyward_key_operations_total{{op=\"{}\",result=\"{}\"}} {n}",
                escape(op),
                escape(result)
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters_with_escaped_labels() {
        let m = super::Metrics::default();
        m.record_request("GET", "/api/v1/users", 200);
        m.record_request("GET", "/api/v1/users", 200);
        m.record_key_operation("ctap", "ok");
        let text = m.render();
        assert!(text.contains(
            "keyward_http_requests_total{method=\"GET\",route=\"/api/v1/users\",status=\"200\"} 2"
        ));
        assert!(text.contains("keyward_key_operations_total{op=\"ctap\",result=\"ok\"} 1"));
        assert_eq!(super::escape("a\"b"), "a\\\"b");
    }
}

//! The agent's end of weir-cni's metrics reports (see weir-cni's
//! `metrics_report`): a unix datagram socket in the run dir, one JSON
//! object per CNI command, aggregated here into the Prometheus families
//! rendered by `/metrics`:
//!
//! - `weir_cni_operations_total{command,result}` (counter)
//! - `weir_cni_operation_duration_seconds{command}` (histogram)
//! - `weir_cni_errors_total{command,code}` (counter)
//! - `weir_cni_reports_unreadable_total` (counter: datagrams that were not a report)
//!
//! weir-cni never waits for the agent: if the agent is down, reports are
//! lost, and the counters start again from zero with the next agent, as
//! any Prometheus counter does on a restart.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::UnixDatagram;

use crate::observe::histogram::Histogram;
use tracing::{debug, warn};

pub const SOCKET_FILE: &str = "cni-metrics.sock";

/// Upper bounds of the duration histogram, in seconds.
pub const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The commands weir-cni reports; anything else is refused, so a stray
/// sender cannot make up label values.
const COMMANDS: [&str; 6] = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"];

/// One command's outcome as weir-cni sends it.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub command: String,
    pub result: String,
    /// The CNI error code; 0 when the command succeeded.
    #[serde(default)]
    pub code: u32,
    pub seconds: f64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }
}

/// Reads one datagram; why not, when it is not a report.
pub fn parse(datagram: &[u8]) -> Result<Report, String> {
    let report: Report = serde_json::from_slice(datagram).map_err(|e| e.to_string())?;
    if !COMMANDS.contains(&report.command.as_str()) {
        return Err(format!("unknown command {:?}", report.command));
    }
    if report.result != "ok" && report.result != "error" {
        return Err(format!("result {:?} is neither \"ok\" nor \"error\"", report.result));
    }
    if !report.seconds.is_finite() || report.seconds < 0.0 {
        return Err(format!("seconds {} is not a duration", report.seconds));
    }
    Ok(report)
}

#[derive(Debug, Default)]
struct Aggregate {
    operations: BTreeMap<(String, &'static str), u64>,
    durations: BTreeMap<String, Histogram>,
    errors: BTreeMap<(String, u32), u64>,
    unreadable: u64,
}

/// The counters, shared between the socket task and `/metrics`.
#[derive(Debug, Default)]
pub struct CniMetrics {
    inner: Mutex<Aggregate>,
}

impl CniMetrics {
    pub fn record(&self, report: &Report) {
        let mut a = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = if report.ok() { "ok" } else { "error" };
        *a.operations.entry((report.command.clone(), result)).or_default() += 1;
        a.durations.entry(report.command.clone()).or_insert_with(|| Histogram::new(&BUCKETS)).observe(report.seconds);
        if !report.ok() {
            *a.errors.entry((report.command.clone(), report.code)).or_default() += 1;
        }
    }

    pub fn record_unreadable(&self) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).unreadable += 1;
    }

    /// Appends the families in Prometheus text format. HELP and TYPE are
    /// always there; samples appear once a command has been seen.
    pub fn render(&self, out: &mut String) {
        let a = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP weir_cni_operations_total CNI commands weir-cni ran on this node, by command and result.\n# TYPE weir_cni_operations_total counter"
        );
        for ((command, result), n) in &a.operations {
            let _ = writeln!(out, "weir_cni_operations_total{{command=\"{command}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP weir_cni_operation_duration_seconds How long weir-cni took per command, from start to outcome.\n# TYPE weir_cni_operation_duration_seconds histogram"
        );
        for (command, h) in &a.durations {
            h.render(out, "weir_cni_operation_duration_seconds", &format!("command=\"{command}\""));
        }
        let _ = writeln!(
            out,
            "# HELP weir_cni_errors_total Failed CNI commands by command and CNI error code (see weir-cni's error.rs).\n# TYPE weir_cni_errors_total counter"
        );
        for ((command, code), n) in &a.errors {
            let _ = writeln!(out, "weir_cni_errors_total{{command=\"{command}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP weir_cni_reports_unreadable_total Datagrams on the CNI metrics socket that were not a report.\n# TYPE weir_cni_reports_unreadable_total counter\nweir_cni_reports_unreadable_total {}",
            a.unreadable
        );
    }
}

/// Binds `<run_dir>/cni-metrics.sock`, replacing a stale one from an earlier
/// agent. Needs a tokio runtime.
pub fn bind(run_dir: &Path) -> std::io::Result<(UnixDatagram, PathBuf)> {
    let path = crate::node::files::socket_path(run_dir, SOCKET_FILE)?;
    Ok((UnixDatagram::bind(&path)?, path))
}

/// Receives reports until the task is aborted.
pub async fn serve(socket: UnixDatagram, metrics: Arc<CniMetrics>) {
    // Reports are ~80 bytes; a longer datagram is cut and then unreadable.
    let mut buf = [0u8; 1024];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => match parse(&buf[..n]) {
                Ok(report) => metrics.record(&report),
                Err(why) => {
                    debug!(%why, "unreadable CNI metrics report");
                    metrics.record_unreadable();
                }
            },
            Err(e) => {
                warn!(error = %e, "CNI metrics socket: receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(command: &str, result: &str, code: u32, seconds: f64) -> Report {
        Report { command: command.into(), result: result.into(), code, seconds }
    }

    fn rendered(m: &CniMetrics) -> String {
        let mut out = String::new();
        m.render(&mut out);
        out
    }

    #[test]
    fn parses_what_weir_cni_sends_and_refuses_the_rest() {
        assert_eq!(
            parse(br#"{"command":"ADD","result":"ok","code":0,"seconds":0.0123}"#),
            Ok(report("ADD", "ok", 0, 0.0123))
        );
        assert_eq!(
            parse(br#"{"command":"DEL","result":"error","code":109,"seconds":1}"#),
            Ok(report("DEL", "error", 109, 1.0))
        );
        for bad in [
            &br#"{"command":"add","result":"ok","code":0,"seconds":0.1}"#[..],
            br#"{"command":"ADD","result":"maybe","code":0,"seconds":0.1}"#,
            br#"{"command":"ADD","result":"ok","code":0,"seconds":-1}"#,
            br#"{"command":"ADD","result":"ok","code":-3,"seconds":0.1}"#,
            br#"{"command":"ADD","result":"ok","seconds":0.1,"extra":1}"#,
            br#"{"command":"ADD","result":"ok","code":0}"#,
            br#"{"command":"ADD","result":"ok","code":0,"seconds":0.1"#,
            b"",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn aggregates_into_counters_and_a_histogram() {
        let m = CniMetrics::default();
        let empty = rendered(&m);
        assert!(empty.contains("# TYPE weir_cni_operations_total counter"), "{empty}");
        assert!(empty.contains("# TYPE weir_cni_operation_duration_seconds histogram"));
        assert!(empty.contains("# TYPE weir_cni_errors_total counter"));
        assert!(empty.contains("weir_cni_reports_unreadable_total 0"));
        assert!(!empty.contains("weir_cni_operations_total{"));

        m.record(&report("ADD", "ok", 0, 0.004)); // first bucket
        m.record(&report("ADD", "ok", 0, 0.01)); // on a bound: that bucket
        m.record(&report("ADD", "error", 100, 0.3)); // 0.5
        m.record(&report("ADD", "error", 100, 7.0)); // only +Inf
        m.record(&report("DEL", "ok", 0, 0.02));
        m.record(&report("DEL", "error", 109, 0.02));
        m.record(&report("STATUS", "ok", 3, 0.001)); // ok: its code is not an error
        m.record_unreadable();

        let out = rendered(&m);
        for line in [
            "weir_cni_operations_total{command=\"ADD\",result=\"error\"} 2",
            "weir_cni_operations_total{command=\"ADD\",result=\"ok\"} 2",
            "weir_cni_operations_total{command=\"DEL\",result=\"error\"} 1",
            "weir_cni_operations_total{command=\"DEL\",result=\"ok\"} 1",
            "weir_cni_operations_total{command=\"STATUS\",result=\"ok\"} 1",
            "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"0.005\"} 1",
            "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"0.01\"} 2",
            "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"0.25\"} 2",
            "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"0.5\"} 3",
            "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"5\"} 3",
            "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"+Inf\"} 4",
            "weir_cni_operation_duration_seconds_count{command=\"ADD\"} 4",
            "weir_cni_operation_duration_seconds_bucket{command=\"DEL\",le=\"0.025\"} 2",
            "weir_cni_operation_duration_seconds_count{command=\"DEL\"} 2",
            "weir_cni_errors_total{command=\"ADD\",code=\"100\"} 2",
            "weir_cni_errors_total{command=\"DEL\",code=\"109\"} 1",
            "weir_cni_reports_unreadable_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains("code=\"3\""), "{out}");
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("weir_cni_operation_duration_seconds_sum{command=\"ADD\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 7.314).abs() < 1e-9, "{sum}");
        // Every bucket line of a command, in order, never decreasing.
        let add: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("weir_cni_operation_duration_seconds_bucket{command=\"ADD\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(add.len(), BUCKETS.len() + 1);
        assert!(add.windows(2).all(|w| w[0] <= w[1]), "{add:?}");
    }

    #[test]
    fn the_agents_metrics_endpoint_serves_them() {
        let status = crate::observe::status::Status::default();
        status.cni_metrics().record(&report("ADD", "ok", 0, 0.03));
        let (code, _, body) = crate::observe::status::respond(&status, "/metrics", Path::new("/nonexistent"));
        assert_eq!(code, "200 OK");
        assert!(body.lines().any(|l| l == "weir_cni_operations_total{command=\"ADD\",result=\"ok\"} 1"), "{body}");
        assert!(
            body.lines().any(|l| l == "weir_cni_operation_duration_seconds_bucket{command=\"ADD\",le=\"0.05\"} 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn reports_over_the_socket_are_counted_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file left by an earlier agent.
        drop(std::os::unix::net::UnixDatagram::bind(dir.path().join(SOCKET_FILE)).unwrap());
        let (socket, path) = bind(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(SOCKET_FILE));
        let metrics = Arc::new(CniMetrics::default());
        let server = tokio::spawn(serve(socket, metrics.clone()));

        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        tx.send_to(br#"{"command":"ADD","result":"ok","code":0,"seconds":0.002}"#, &path).unwrap();
        tx.send_to(br#"{"command":"GC","result":"error","code":109,"seconds":0.2}"#, &path).unwrap();
        tx.send_to(b"not json", &path).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let out = rendered(&metrics);
            if out.contains("weir_cni_reports_unreadable_total 1") {
                assert!(out.contains("weir_cni_operations_total{command=\"ADD\",result=\"ok\"} 1"), "{out}");
                assert!(out.contains("weir_cni_errors_total{command=\"GC\",code=\"109\"} 1"), "{out}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "reports not counted:\n{out}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.abort();
    }
}

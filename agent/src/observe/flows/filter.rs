//! What a client of the flows socket asks for: one JSON line with the
//! filters, how much history, and whether to follow new flows.
use serde::{Deserialize, Serialize};

use super::flow::{Flow, Peer};

/// Which flows a client wants; every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `namespace/name`, or a name (in `namespace` if given, else any):
    /// either end, or the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Either end, or the backend, is a pod of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `namespace/name` (or a name) of a translated flow's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `allowed`, `dropped`, `translated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// A drop reason (`policy-denied-ingress`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `tcp`, `udp`, `icmp`, `sctp` (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Either end's port, or the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The one line a client sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub filter: Filter,
    /// Keep the connection and send new flows as they come.
    #[serde(default)]
    pub follow: bool,
    /// At most this many flows of the history (None: all it holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    /// Only flows of the last this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
}

pub const VERDICTS: [&str; 3] = ["allowed", "dropped", "translated"];
pub const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "sctp"];

impl Request {
    /// Parses and checks one request line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let req: Request = serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
        req.filter.check()?;
        Ok(req)
    }
}

impl Filter {
    /// Rejects values no flow can have (a typo would show nothing).
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.verdict
            && !VERDICTS.contains(&v.to_ascii_lowercase().as_str())
        {
            return Err(format!("verdict {v:?} is not one of {}", VERDICTS.join(", ")));
        }
        if let Some(p) = &self.protocol
            && !PROTOCOLS.contains(&p.to_ascii_lowercase().as_str())
        {
            return Err(format!("protocol {p:?} is not one of {}", PROTOCOLS.join(", ")));
        }
        if let Some(r) = &self.reason {
            let known: Vec<&str> =
                weir_common::DropReason::ALL.iter().skip(1).map(|r| r.name()).chain(["unknown"]).collect();
            if !known.contains(&r.to_ascii_lowercase().as_str()) {
                return Err(format!("reason {r:?} is not one of {}", known.join(", ")));
            }
        }
        Ok(())
    }

    pub fn matches(&self, f: &Flow) -> bool {
        let peers = || [Some(&f.source), Some(&f.destination), f.backend.as_ref()].into_iter().flatten();
        let eq = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have));
        if !eq(&self.verdict, &f.verdict) || !eq(&self.protocol, &f.protocol) {
            return false;
        }
        if let Some(r) = &self.reason
            && !f.reason.as_ref().is_some_and(|have| have.eq_ignore_ascii_case(r))
        {
            return false;
        }
        if let Some(port) = self.port
            && !peers().any(|p| p.port == port)
        {
            return false;
        }
        if let Some(svc) = &self.service
            && !f.service.as_ref().is_some_and(|have| names_match(svc, None, have))
        {
            return false;
        }
        match (&self.pod, &self.namespace) {
            (Some(pod), ns) => peers().any(|p| pod_matches(p, pod, ns.as_deref())),
            (None, Some(ns)) => peers().any(|p| p.namespace.as_deref() == Some(ns.as_str())),
            (None, None) => true,
        }
    }
}

fn pod_matches(p: &Peer, want: &str, namespace: Option<&str>) -> bool {
    p.name().is_some_and(|have| p.pod.is_some() && names_match(want, namespace, &have))
}

/// `want` (`namespace/name`, or a name in `namespace` or any) names `have`
/// (`namespace/name`).
fn names_match(want: &str, namespace: Option<&str>, have: &str) -> bool {
    if want.contains('/') {
        return want == have;
    }
    match have.split_once('/') {
        Some((ns, name)) => name == want && namespace.is_none_or(|n| n == ns),
        None => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;

    /// A TCP flow from `src` (10.0.0.1:40000) to `dst` (10.0.0.2:80).
    pub(crate) fn flow(src: &str, dst: &str, verdict: &str) -> Flow {
        Flow {
            time: "2026-12-05T22:00:01.123000000Z".into(),
            time_unix_ns: 1,
            node: "n1".into(),
            verdict: verdict.into(),
            reason: (verdict == "dropped").then(|| "policy-denied-ingress".into()),
            direction: "ingress".into(),
            protocol: "TCP".into(),
            source: Peer::new(Ipv4Addr::new(10, 0, 0, 1), 40000).with_pod(Some(src)),
            destination: Peer::new(Ipv4Addr::new(10, 0, 0, 2), 80).with_pod(Some(dst)),
            service: None,
            backend: None,
            policies: Arc::from([]),
            ifindex: 5,
        }
    }

    fn filter(json: &str) -> Filter {
        Request::parse(&format!(r#"{{"filter":{json}}}"#)).unwrap().filter
    }

    #[test]
    fn every_field_given_must_match() {
        let f = flow("x/a", "y/b", "dropped");
        assert!(Filter::default().matches(&f));
        for (json, want) in [
            (r#"{"pod":"y/b"}"#, true),
            (r#"{"pod":"b"}"#, true),
            (r#"{"pod":"b","namespace":"y"}"#, true),
            (r#"{"pod":"b","namespace":"x"}"#, false),
            (r#"{"pod":"x/b"}"#, false),
            (r#"{"namespace":"x"}"#, true),
            (r#"{"namespace":"z"}"#, false),
            (r#"{"verdict":"DROPPED"}"#, true),
            (r#"{"verdict":"allowed"}"#, false),
            (r#"{"reason":"policy-denied-ingress"}"#, true),
            (r#"{"reason":"policy-denied-egress"}"#, false),
            (r#"{"protocol":"tcp"}"#, true),
            (r#"{"protocol":"udp"}"#, false),
            (r#"{"port":80}"#, true),
            (r#"{"port":40000}"#, true),
            (r#"{"port":81}"#, false),
            (r#"{"service":"y/web"}"#, false),
            (r#"{"pod":"y/b","verdict":"dropped","port":80}"#, true),
        ] {
            assert_eq!(filter(json).matches(&f), want, "{json}");
        }
        let mut t = flow("x/a", "y/b", "translated");
        t.service = Some("y/web".into());
        t.backend = Some(Peer::new(Ipv4Addr::new(10, 0, 0, 9), 8080).with_pod(Some("y/web-1")));
        assert!(filter(r#"{"service":"y/web"}"#).matches(&t));
        assert!(filter(r#"{"service":"web"}"#).matches(&t));
        assert!(filter(r#"{"pod":"web-1"}"#).matches(&t));
        assert!(filter(r#"{"port":8080}"#).matches(&t));
        assert!(!filter(r#"{"reason":"policy-denied-ingress"}"#).matches(&t), "no reason: no match");
    }

    #[test]
    fn requests_parse_and_reject_what_matches_nothing() {
        assert_eq!(Request::parse("{}\n").unwrap(), Request::default());
        let r = Request::parse(r#"{"follow":true,"last":100,"since_ms":30000,"filter":{"pod":"x/a"}}"#).unwrap();
        assert!(r.follow);
        assert_eq!((r.last, r.since_ms, r.filter.pod.as_deref()), (Some(100), Some(30000), Some("x/a")));
        // What the CLI sends comes back the same.
        assert_eq!(Request::parse(&serde_json::to_string(&r).unwrap()).unwrap(), r);
        for bad in [
            r#"{"filter":{"verdict":"nope"}}"#,
            r#"{"filter":{"protocol":"gre"}}"#,
            r#"{"filter":{"reason":"policy-ingress"}}"#,
            r#"{"folow":true}"#,
            r#"{"last":-1}"#,
            "not json",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }
}

//! The sandbox's connectivity matrix: who reaches whom, by ping and HTTP.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Node,
}

/// A row/column of the matrix: a pod or a node.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub label: String,
    pub node: String,
    pub kind: Kind,
}

/// The outcome of probing `to` from `from` (indices into the endpoints).
#[derive(Clone, Debug)]
pub struct Probe {
    pub from: usize,
    pub to: usize,
    pub ping: Result<(), String>,
    pub http: Result<(), String>,
}

impl Probe {
    pub fn ok(&self) -> bool {
        self.ping.is_ok() && self.http.is_ok()
    }
}

/// What kind of path a probe exercises.
pub fn category(from: &Endpoint, to: &Endpoint) -> &'static str {
    let same = from.node == to.node;
    match (from.kind, to.kind, same) {
        (Kind::Pod, Kind::Pod, true) => "pod -> pod, same node",
        (Kind::Pod, Kind::Pod, false) => "pod -> pod, cross node",
        (Kind::Pod, Kind::Node, true) => "pod -> own node",
        (Kind::Pod, Kind::Node, false) => "pod -> other node",
        (Kind::Node, Kind::Pod, true) => "node -> own pod",
        (Kind::Node, Kind::Pod, false) => "node -> other node's pod",
        (Kind::Node, Kind::Node, _) => "node -> node",
    }
}

fn mark(r: &Result<(), String>) -> char {
    if r.is_ok() { '✔' } else { '✘' }
}

/// The grid (cells "ping http"), a per-category summary and the failures.
pub fn render(endpoints: &[Endpoint], probes: &[Probe]) -> String {
    let width = endpoints.iter().map(|e| e.label.chars().count()).max().unwrap_or(4).max(9);
    let mut out = String::new();
    let _ = write!(out, "{:<width$}", "from \\ to");
    for e in endpoints {
        let _ = write!(out, "  {:^width$}", e.label);
    }
    out.push('\n');
    for (i, from) in endpoints.iter().enumerate() {
        let _ = write!(out, "{:<width$}", from.label);
        for j in 0..endpoints.len() {
            let cell = match probes.iter().find(|p| p.from == i && p.to == j) {
                Some(p) => format!("{} {}", mark(&p.ping), mark(&p.http)),
                None => "-".to_string(),
            };
            let _ = write!(out, "  {cell:^width$}");
        }
        out.push('\n');
    }
    out.push_str("cells: ping http\n\n");

    let mut categories: Vec<&str> = Vec::new();
    for p in probes {
        let c = category(&endpoints[p.from], &endpoints[p.to]);
        if !categories.contains(&c) {
            categories.push(c);
        }
    }
    for c in categories {
        let in_cat: Vec<&Probe> =
            probes.iter().filter(|p| category(&endpoints[p.from], &endpoints[p.to]) == c).collect();
        let passed = in_cat.iter().filter(|p| p.ok()).count();
        let m = if passed == in_cat.len() { '✔' } else { '✘' };
        let _ = writeln!(out, "{m} {c:<26} {passed}/{} ok", in_cat.len());
    }

    let failures: Vec<String> = probes
        .iter()
        .flat_map(|p| {
            let (f, t) = (&endpoints[p.from].label, &endpoints[p.to].label);
            [("ping", &p.ping), ("http", &p.http)]
                .into_iter()
                .filter_map(move |(what, r)| r.as_ref().err().map(|e| format!("  {what} {f} -> {t}: {e}")))
        })
        .collect();
    if !failures.is_empty() {
        out.push_str("\nfailures:\n");
        for f in failures {
            out.push_str(&f);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(label: &str, node: &str, kind: Kind) -> Endpoint {
        Endpoint { label: label.into(), node: node.into(), kind }
    }

    #[test]
    fn categories() {
        let (a, b, n1, n2) = (
            ep("n1/a", "n1", Kind::Pod),
            ep("n2/a", "n2", Kind::Pod),
            ep("n1", "n1", Kind::Node),
            ep("n2", "n2", Kind::Node),
        );
        assert_eq!(category(&a, &ep("n1/b", "n1", Kind::Pod)), "pod -> pod, same node");
        assert_eq!(category(&a, &b), "pod -> pod, cross node");
        assert_eq!(category(&a, &n1), "pod -> own node");
        assert_eq!(category(&n2, &a), "node -> other node's pod");
        assert_eq!(category(&n1, &n2), "node -> node");
    }

    #[test]
    fn renders_marks_summary_and_failures() {
        let eps = vec![ep("n1/a", "n1", Kind::Pod), ep("n2/a", "n2", Kind::Pod)];
        let probes = vec![
            Probe { from: 0, to: 1, ping: Ok(()), http: Ok(()) },
            Probe { from: 1, to: 0, ping: Ok(()), http: Err("timeout".into()) },
        ];
        let text = render(&eps, &probes);
        assert!(text.contains("✔ ✔"), "{text}");
        assert!(text.contains("✔ ✘"), "{text}");
        assert!(text.contains("✘ pod -> pod, cross node"), "{text}");
        assert!(text.contains("1/2 ok"), "{text}");
        assert!(text.contains("http n2/a -> n1/a: timeout"), "{text}");
        // The diagonal has no probe.
        assert!(text.lines().nth(1).unwrap().contains(" - "), "{text}");
    }
}

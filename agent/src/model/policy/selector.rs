//! Label selectors (metav1.LabelSelector): matchLabels AND every
//! matchExpression. The empty selector matches everything.
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// Labels from (key, value) pairs: `labels(&[("app", "web")])` (tests,
/// benchmarks).
pub fn labels<V: AsRef<str>>(kv: &[(&str, V)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.as_ref().to_string())).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                // NotIn matches objects without the key too (upstream).
                Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&Labels::new()));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            expressions: vec![
                Requirement::In("tier".into(), vec!["fe".into(), "be".into()]),
                Requirement::NotIn("env".into(), vec!["prod".into()]),
                Requirement::Exists("team".into()),
                Requirement::DoesNotExist("legacy".into()),
            ],
        };
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("team", "x"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("team", "x"), ("legacy", "1")])));
        assert!(!s.matches(&labels(&[("tier", "fe"), ("team", "x")])));
    }
}

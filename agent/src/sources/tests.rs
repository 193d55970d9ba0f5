//! The sources' tests: the kube source against scripted API answers
//! (`kube`), the ClusterRole against what the code reads (`rbac`), and the
//! small pieces below.
mod kube;
mod rbac;

use super::*;

#[test]
fn parses_source_specs() {
    assert_eq!("kube".parse(), Ok(SourceSpec::Kube { kubeconfig: None }));
    assert_eq!("kube:/k".parse(), Ok(SourceSpec::Kube { kubeconfig: Some("/k".into()) }));
    assert_eq!("dir:/m".parse(), Ok(SourceSpec::Dir("/m".into())));
    assert!("dir:".parse::<SourceSpec>().is_err());
    assert!("etcd".parse::<SourceSpec>().is_err());
}

#[test]
fn problem_log_counts_changes_only() {
    let mut log = ProblemLog::new("NetworkPolicy");
    assert_eq!(log.update(), None, "nothing to say at first");
    log.set("x/a", Some("bad port".into()));
    log.set("x/a", Some("bad port".into()));
    log.set("x/b", Some("bad cidr".into()));
    assert_eq!(log.update(), Some(Update::Problems { kind: "NetworkPolicy".into(), count: 2 }));
    assert_eq!(log.update(), None);
    // Another problem for the same object: same count.
    log.set("x/a", Some("bad selector".into()));
    assert_eq!(log.update(), None);
    // A relist: what it does not name has no problem any more.
    log.relisted([("x/c".to_string(), "bad".to_string())].into());
    assert_eq!(log.update(), Some(Update::Problems { kind: "NetworkPolicy".into(), count: 1 }));
    log.set("x/c", None);
    assert_eq!(log.update(), Some(Update::Problems { kind: "NetworkPolicy".into(), count: 0 }));
}

//! The agent's view of the cluster, updated per kind with apply / delete /
//! reset (a reset replaces everything of that kind after a relist, so objects
//! deleted while a watch was down disappear too).
use std::collections::BTreeMap;

use super::NodeInfo;

/// Which kinds of object have delivered their initial list. Pruning anything
/// (routes, map entries) before that would delete state that is merely not
/// listed yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub nodes: bool,
}

#[derive(Debug, Default)]
pub struct ClusterIndex {
    nodes: BTreeMap<String, NodeInfo>,
    synced: Synced,
}

impl ClusterIndex {
    /// Returns whether anything changed.
    pub fn apply_node(&mut self, node: NodeInfo) -> bool {
        match self.nodes.get(&node.name) {
            Some(old) if *old == node => false,
            _ => {
                self.nodes.insert(node.name.clone(), node);
                true
            }
        }
    }

    pub fn delete_node(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }

    /// Replace all nodes with a fresh list and mark nodes as synced.
    pub fn reset_nodes(&mut self, nodes: impl IntoIterator<Item = NodeInfo>) -> bool {
        let fresh: BTreeMap<_, _> = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        let changed = fresh != self.nodes || !self.synced.nodes;
        self.nodes = fresh;
        self.synced.nodes = true;
        changed
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn synced(&self) -> Synced {
        self.synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::build::node;

    #[test]
    fn apply_reports_changes_only() {
        let mut idx = ClusterIndex::default();
        assert!(idx.apply_node(node("a").with_pod_cidr("10.244.1.0/24")));
        assert!(!idx.apply_node(node("a").with_pod_cidr("10.244.1.0/24")));
        assert!(idx.apply_node(node("a").with_pod_cidr("10.244.2.0/24")));
        assert_eq!(
            idx.node("a").unwrap().pod_cidr.unwrap().to_string(),
            "10.244.2.0/24"
        );
    }

    #[test]
    fn reset_prunes_nodes_missing_from_relist_and_marks_synced() {
        let mut idx = ClusterIndex::default();
        idx.apply_node(node("a"));
        idx.apply_node(node("b"));
        assert!(!idx.synced().nodes);
        assert!(idx.reset_nodes([node("b")]));
        assert!(idx.node("a").is_none());
        assert!(idx.node("b").is_some());
        assert!(idx.synced().nodes);
        // Same list again: nothing changed.
        assert!(!idx.reset_nodes([node("b")]));
    }

    #[test]
    fn first_reset_counts_as_change_even_if_empty() {
        let mut idx = ClusterIndex::default();
        assert!(idx.reset_nodes([]));
    }

    #[test]
    fn delete_unknown_is_no_change() {
        let mut idx = ClusterIndex::default();
        assert!(!idx.delete_node("ghost"));
    }
}

//! Keeping the service maps equal to the cluster's Services and
//! EndpointSlices, one dirty Service at a time.
use std::collections::BTreeSet;

use tracing::{error, info};

use crate::{
    datapath::{Datapath, lb::programmer::LbProgrammer},
    model::{ClusterIndex, lb, service::ObjectKey},
    node::health_check::HealthChecks,
};

pub struct ServiceSync {
    lb: LbProgrammer,
    health: HealthChecks,
    /// Desired frontends, updated one Service at a time.
    desired: lb::DesiredLb,
    /// The maps have been pruned against a complete desired state.
    pruned: bool,
    dirty: BTreeSet<ObjectKey>,
    /// A map write failed: reprogram every desired frontend.
    retry: bool,
}

impl ServiceSync {
    /// `lb` carries the IDs restored from the pinned maps.
    pub fn new(lb: LbProgrammer) -> Self {
        Self {
            lb,
            health: HealthChecks::default(),
            desired: lb::DesiredLb::default(),
            pruned: false,
            dirty: BTreeSet::new(),
            retry: false,
        }
    }

    pub fn mark_dirty(&mut self, keys: impl IntoIterator<Item = ObjectKey>) {
        self.dirty.extend(keys);
    }

    pub fn needs_work(&self, index: &ClusterIndex) -> bool {
        !self.dirty.is_empty() || self.retry || (!self.pruned && index.services_synced())
    }

    pub fn problems(&self) -> impl Iterator<Item = &crate::model::plan::Problem> {
        self.desired.problems()
    }

    pub fn frontends(&self) -> usize {
        self.desired.frontends.len()
    }

    pub async fn reconcile(&mut self, index: &ClusterIndex, node: &lb::LbNode, datapath: &mut Datapath) {
        let dirty = std::mem::take(&mut self.dirty);
        let changed = self.desired.update(dirty, |k| index.services.get(k), |k| index.slices_of(k), node);
        let full = self.retry || (!self.pruned && index.services_synced());
        let report = if full {
            // After a failed write, and once every list is in (which prunes
            // what a previous agent left and nobody wants now).
            let prune = index.services_synced();
            self.pruned |= prune;
            self.lb.apply(&self.desired.frontends, prune, datapath)
        } else {
            self.lb.apply_changed(&self.desired.frontends, &changed, datapath)
        };
        if report.frontends_written + report.frontends_deleted + report.backends_deleted > 0 {
            info!(
                frontends = self.desired.frontends.len(),
                written = report.frontends_written,
                deleted = report.frontends_deleted,
                backends_written = report.backends_written,
                backends_deleted = report.backends_deleted,
                "service maps synced"
            );
        }
        for e in &report.errors {
            error!(error = %e, "service map write failed; will retry");
        }
        self.retry = !report.errors.is_empty();
        for e in self.health.sync(self.desired.health_checks()).await {
            error!(error = %e, "health check server");
            self.retry = true;
        }
    }
}

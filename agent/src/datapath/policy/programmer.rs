//! Writes the compiled NetworkPolicy into the maps in an order the datapath
//! can run through at any moment without passing a forbidden packet:
//!
//! 1. new and changed policy entries (they only allow more for identities
//!    that nothing maps to yet, or for endpoints not yet enforced);
//! 2. new and changed ipcache entries (addresses move to identities whose
//!    entries are already there);
//! 3. endpoint flags: an endpoint becoming enforced finds its entries in
//!    place; a pending endpoint (just created by weir-cni) first loses any
//!    stale entries of an earlier pod on the same interface index;
//! 4. stale ipcache entries, then stale policy entries (nothing enforced
//!    relies on them any more).
//!
//! The first failed write stops the pass: what was written is remembered,
//! the rest is retried by the next pass, and nothing is deleted before
//! everything it would have been replaced by is in place.
use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use weir_common::EndpointInfo;

use crate::{
    datapath::{
        MapError,
        policy::maps::{PolicyDump, PolicyMaps, RuleKey},
    },
    model::policy::compile::IpcacheDelta,
};

/// The maps' desired contents (from the policy compiler).
pub struct PolicyTarget<'a> {
    pub rules: &'a BTreeMap<RuleKey, u32>,
    pub ipcache: &'a BTreeMap<IpNetwork, u32>,
    /// ifindex -> policy bits (`EndpointInfo::FLAGS_POLICY`). Endpoints
    /// not listed keep "pending" if they have it and lose the other bits.
    pub endpoint_flags: &'a BTreeMap<u32, u32>,
    /// Which ipcache `ipcache` is: when it says what changed since the
    /// one last written in full, only that is compared.
    pub ipcache_delta: &'a IpcacheDelta,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub rules_set: usize,
    pub rules_deleted: usize,
    pub ipcache_set: usize,
    pub ipcache_deleted: usize,
    pub endpoints_updated: usize,
}

impl ApplyStats {
    pub fn writes(&self) -> usize {
        self.rules_set + self.rules_deleted + self.ipcache_set + self.ipcache_deleted + self.endpoints_updated
    }
}

/// What the programmer believes the maps hold.
#[derive(Debug, Default)]
pub struct PolicyProgrammer {
    written: PolicyDump,
    /// The version of the target ipcache the last pass wrote in full
    /// (`written.ipcache` is that ipcache).
    ipcache_version: Option<u64>,
}

impl PolicyProgrammer {
    /// Starts from what the pinned maps hold (after an agent restart the
    /// first pass rewrites only what changed while it was away).
    pub fn restore(dump: PolicyDump) -> Self {
        Self { written: dump, ipcache_version: None }
    }

    pub fn rules(&self) -> usize {
        self.written.rules.len()
    }

    pub fn identities(&self) -> usize {
        self.written.ipcache.len()
    }

    /// One pass towards `target`, against the endpoints as weir-cni wrote
    /// them (read just before).
    pub fn apply(
        &mut self,
        maps: &mut impl PolicyMaps,
        target: &PolicyTarget<'_>,
        endpoints: &BTreeMap<u32, EndpointInfo>,
    ) -> Result<ApplyStats, MapError> {
        let mut stats = ApplyStats::default();
        // Only what changed since the ipcache written in full, if known.
        let changed_nets = match (&target.ipcache_delta.since, self.ipcache_version.take()) {
            (Some((since, nets)), Some(written)) if *since == written => Some(nets.as_slice()),
            _ => None,
        };
        for (key, slot) in differing(target.rules, &self.written.rules) {
            maps.set_rule(key, slot)?;
            self.written.rules.insert(key, slot);
            stats.rules_set += 1;
        }
        let ipcache_sets = match changed_nets {
            Some(nets) => nets
                .iter()
                .filter_map(|net| Some((*net, *target.ipcache.get(net)?)))
                .filter(|(net, id)| self.written.ipcache.get(net) != Some(id))
                .collect(),
            None => differing(target.ipcache, &self.written.ipcache),
        };
        for (net, identity) in ipcache_sets {
            maps.set_identity(net, identity)?;
            self.written.ipcache.insert(net, identity);
            stats.ipcache_set += 1;
        }
        for (ifindex, ep) in endpoints {
            let current = ep.flags & EndpointInfo::FLAGS_POLICY;
            let want =
                target.endpoint_flags.get(ifindex).copied().unwrap_or(current & EndpointInfo::FLAG_POLICY_PENDING)
                    & EndpointInfo::FLAGS_POLICY;
            if current == want {
                continue;
            }
            let leaves_pending =
                current & EndpointInfo::FLAG_POLICY_PENDING != 0 && want & EndpointInfo::FLAG_POLICY_PENDING == 0;
            if leaves_pending {
                // The interface index may have served an earlier pod.
                let stale: Vec<RuleKey> = self
                    .written
                    .rules
                    .keys()
                    .filter(|k| k.1.ifindex == *ifindex && !target.rules.contains_key(k))
                    .copied()
                    .collect();
                for key in stale {
                    maps.delete_rule(key)?;
                    self.written.rules.remove(&key);
                    stats.rules_deleted += 1;
                }
            }
            let ip = std::net::Ipv4Addr::from(ep.ipv4_octets());
            if maps.set_endpoint_policy_flags(*ifindex, ip, want)? {
                stats.endpoints_updated += 1;
            }
        }
        let ipcache_deletes = match changed_nets {
            Some(nets) => nets
                .iter()
                .filter(|net| !target.ipcache.contains_key(net) && self.written.ipcache.contains_key(net))
                .copied()
                .collect(),
            None => missing(&self.written.ipcache, target.ipcache),
        };
        for net in ipcache_deletes {
            maps.delete_identity(net)?;
            self.written.ipcache.remove(&net);
            stats.ipcache_deleted += 1;
        }
        self.ipcache_version = Some(target.ipcache_delta.version);
        for key in missing(&self.written.rules, target.rules) {
            maps.delete_rule(key)?;
            self.written.rules.remove(&key);
            stats.rules_deleted += 1;
        }
        Ok(stats)
    }
}

/// The entries of `want` that `have` lacks or holds otherwise, in order:
/// one walk over both sorted maps (a lookup per entry cost a tenth of a
/// pass at 15,000 pods, most of it for an ipcache that did not change).
fn differing<K: Ord + Copy, V: PartialEq + Copy>(want: &BTreeMap<K, V>, have: &BTreeMap<K, V>) -> Vec<(K, V)> {
    let mut have = have.iter().peekable();
    let mut out = Vec::new();
    for (k, v) in want {
        while have.next_if(|(h, _)| *h < k).is_some() {}
        match have.next_if(|(h, _)| *h == k) {
            Some((_, hv)) if hv == v => {}
            _ => out.push((*k, *v)),
        }
    }
    out
}

/// The keys of `have` that `want` lacks, in order.
fn missing<K: Ord + Copy, V>(have: &BTreeMap<K, V>, want: &BTreeMap<K, V>) -> Vec<K> {
    let mut want = want.keys().peekable();
    let mut out = Vec::new();
    for k in have.keys() {
        while want.next_if(|w| *w < k).is_some() {}
        if want.next_if(|w| *w == k).is_none() {
            out.push(*k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use weir_common::policy::{DIR_INGRESS, PolicyKey};

    use super::*;
    use crate::datapath::{fault::FailPlan, policy::maps::FakePolicyMaps};

    #[test]
    fn differing_and_missing_walk_both_maps() {
        let have: BTreeMap<u32, u32> = [(1, 10), (2, 20), (4, 40), (6, 60)].into();
        let want: BTreeMap<u32, u32> = [(0, 1), (2, 20), (4, 41), (5, 50), (7, 70)].into();
        assert_eq!(differing(&want, &have), vec![(0, 1), (4, 41), (5, 50), (7, 70)]);
        assert_eq!(missing(&have, &want), vec![1, 6]);
        assert!(differing(&have, &have).is_empty() && missing(&have, &have).is_empty());
    }

    const PENDING: u32 = EndpointInfo::FLAG_POLICY_PENDING;
    const INGRESS: u32 = EndpointInfo::FLAG_INGRESS_ENFORCED;

    fn rule(ifindex: u32, identity: u32) -> RuleKey {
        (PolicyKey::PREFIX_ANY_PROTO, PolicyKey { ifindex, identity, dir: DIR_INGRESS, proto: 0, port: 0 })
    }

    fn ep(ip: [u8; 4], flags: u32) -> EndpointInfo {
        EndpointInfo::new(ip, EndpointInfo::FLAG_VERIFY_SOURCE | flags)
    }

    struct Target {
        rules: BTreeMap<RuleKey, u32>,
        ipcache: BTreeMap<IpNetwork, u32>,
        flags: BTreeMap<u32, u32>,
        delta: IpcacheDelta,
    }

    impl Target {
        fn get(&self) -> PolicyTarget<'_> {
            PolicyTarget {
                rules: &self.rules,
                ipcache: &self.ipcache,
                endpoint_flags: &self.flags,
                ipcache_delta: &self.delta,
            }
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// Pod on ifindex 7 isolated for ingress, allowing identity 300.
    fn first() -> Target {
        Target {
            rules: [(rule(7, 300), 1), (rule(8, 301), 2)].into(),
            ipcache: [(net("10.244.1.5/32"), 300), (net("10.244.1.6/32"), 301), (net("0.0.0.0/0"), 256)].into(),
            flags: [(7, INGRESS), (8, INGRESS)].into(),
            delta: IpcacheDelta::default(),
        }
    }

    /// Pod 8 is gone; a new pod on the reused ifindex 8 allows identity
    /// 302; 10.244.1.5 moved to identity 303.
    fn second() -> Target {
        Target {
            rules: [(rule(7, 303), 1), (rule(8, 302), 3)].into(),
            ipcache: [(net("10.244.1.5/32"), 303), (net("10.244.1.9/32"), 302), (net("0.0.0.0/0"), 256)].into(),
            flags: [(7, INGRESS), (8, INGRESS)].into(),
            delta: IpcacheDelta::default(),
        }
    }

    #[test]
    fn entries_go_in_before_enforcement_and_out_after() {
        let mut maps = FakePolicyMaps::default();
        maps.endpoints.insert(7, ep([10, 244, 1, 5], PENDING));
        maps.endpoints.insert(8, ep([10, 244, 1, 6], PENDING));
        let mut p = PolicyProgrammer::default();
        let t = first();
        let eps = maps.endpoints.clone();
        let stats = p.apply(&mut maps, &t.get(), &eps).unwrap();
        assert_eq!(stats.endpoints_updated, 2);
        assert_eq!(maps.maps.rules, t.rules);
        assert_eq!(maps.endpoints[&7].flags & EndpointInfo::FLAGS_POLICY, INGRESS);
        let first_ep = maps.log.iter().position(|l| l.starts_with("ep ")).unwrap();
        assert!(maps.log[..first_ep].iter().all(|l| l.starts_with("rule+") || l.starts_with("ip+")), "{:?}", maps.log);

        // ifindex 8 now holds a new pod, pending again: the old pod's entry
        // must be gone before the new pod is let out of pending.
        maps.endpoints.insert(8, ep([10, 244, 1, 9], PENDING));
        maps.log.clear();
        let t = second();
        let eps = maps.endpoints.clone();
        p.apply(&mut maps, &t.get(), &eps).unwrap();
        let old_rule = maps.log.iter().position(|l| l.starts_with("rule-") && l.contains("identity: 301")).unwrap();
        let ep8 = maps.log.iter().position(|l| l.starts_with("ep 8 ")).unwrap();
        assert!(old_rule < ep8, "{:?}", maps.log);
        // Pod 7's old entry (identity 300) outlives the ipcache move.
        let moved = maps.log.iter().position(|l| l.starts_with("ip+ 10.244.1.5/32 303")).unwrap();
        let old7 = maps.log.iter().position(|l| l.starts_with("rule-") && l.contains("identity: 300")).unwrap();
        assert!(moved < old7);
        assert_eq!(maps.maps.rules, t.rules);
        assert_eq!(maps.maps.ipcache, t.ipcache);
    }

    #[test]
    fn an_ipcache_delta_is_compared_alone_unless_it_follows_another_ipcache() {
        let mut maps = FakePolicyMaps::default();
        maps.endpoints.insert(7, ep([10, 244, 1, 5], 0));
        maps.endpoints.insert(8, ep([10, 244, 1, 6], 0));
        let eps = maps.endpoints.clone();
        let mut p = PolicyProgrammer::default();
        let mut t = first();
        t.delta = IpcacheDelta { version: 1, since: None };
        p.apply(&mut maps, &t.get(), &eps).unwrap();

        // Version 2: .6 moved to 302, .5 went; those two are compared.
        t.ipcache.insert(net("10.244.1.6/32"), 302);
        t.ipcache.remove(&net("10.244.1.5/32"));
        t.delta = IpcacheDelta { version: 2, since: Some((1, vec![net("10.244.1.5/32"), net("10.244.1.6/32")])) };
        maps.log.clear();
        let stats = p.apply(&mut maps, &t.get(), &eps).unwrap();
        assert_eq!((stats.ipcache_set, stats.ipcache_deleted), (1, 1));
        let ipcache_log: Vec<&String> = maps.log.iter().filter(|l| l.starts_with("ip")).collect();
        assert_eq!(ipcache_log, ["ip+ 10.244.1.6/32 302", "ip- 10.244.1.5/32"]);
        assert_eq!(maps.maps.ipcache, t.ipcache);

        // A delta since a version this programmer did not write (a pass
        // it missed): the whole map is compared, unlisted changes too.
        t.ipcache.insert(net("10.244.1.7/32"), 303);
        t.delta = IpcacheDelta { version: 4, since: Some((3, vec![])) };
        p.apply(&mut maps, &t.get(), &eps).unwrap();
        assert_eq!(maps.maps.ipcache, t.ipcache);

        // A failed pass leaves no version behind: the next delta, though it
        // follows the failed target, is not trusted either.
        t.ipcache.insert(net("10.244.1.8/32"), 304);
        t.delta = IpcacheDelta { version: 5, since: Some((4, vec![net("10.244.1.8/32")])) };
        maps.faults.set(FailPlan::Nth(0));
        assert!(p.apply(&mut maps, &t.get(), &eps).is_err());
        maps.faults.set(FailPlan::Never);
        t.ipcache.insert(net("10.244.1.9/32"), 305);
        t.delta = IpcacheDelta { version: 6, since: Some((5, vec![net("10.244.1.9/32")])) };
        p.apply(&mut maps, &t.get(), &eps).unwrap();
        assert_eq!(maps.maps.ipcache, t.ipcache, ".8 is written although only .9 was listed");
    }

    #[test]
    fn unknown_endpoints_stay_pending_and_others_lose_enforcement() {
        let mut maps = FakePolicyMaps::default();
        maps.endpoints.insert(7, ep([10, 244, 1, 5], PENDING));
        maps.endpoints.insert(9, ep([10, 244, 1, 7], INGRESS));
        let empty = BTreeMap::new();
        let mut p = PolicyProgrammer::default();
        let t = PolicyTarget {
            rules: &empty,
            ipcache: &BTreeMap::new(),
            endpoint_flags: &BTreeMap::new(),
            ipcache_delta: &IpcacheDelta::default(),
        };
        let eps = maps.endpoints.clone();
        p.apply(&mut maps, &t, &eps).unwrap();
        assert_eq!(maps.endpoints[&7].flags & EndpointInfo::FLAGS_POLICY, PENDING);
        assert_eq!(maps.endpoints[&9].flags & EndpointInfo::FLAGS_POLICY, 0);
        assert!(maps.endpoints[&9].flags & EndpointInfo::FLAG_VERIFY_SOURCE != 0, "weir-cni's bits are kept");
    }

    #[test]
    fn restored_state_rewrites_nothing() {
        let mut maps = FakePolicyMaps::default();
        maps.endpoints.insert(7, ep([10, 244, 1, 5], 0));
        maps.endpoints.insert(8, ep([10, 244, 1, 6], 0));
        let t = first();
        let eps = maps.endpoints.clone();
        PolicyProgrammer::default().apply(&mut maps, &t.get(), &eps).unwrap();
        let mut again = PolicyProgrammer::restore(maps.dump_policy().unwrap());
        let eps = maps.endpoints.clone();
        let stats = again.apply(&mut maps, &t.get(), &eps).unwrap();
        assert_eq!(stats.writes(), 0);
    }

    /// Fails every write position in turn: no pass ever lets an endpoint
    /// out of pending with entries of another pod, or enforces one without
    /// its entries; a clean pass afterwards converges.
    #[test]
    fn every_fault_is_safe_and_recovers() {
        let endpoints: BTreeMap<u32, EndpointInfo> =
            [(7, ep([10, 244, 1, 5], INGRESS)), (8, ep([10, 244, 1, 9], PENDING))].into();
        let mut position = 0;
        loop {
            let mut maps = FakePolicyMaps {
                endpoints: [(7, ep([10, 244, 1, 5], 0)), (8, ep([10, 244, 1, 6], 0))].into(),
                ..Default::default()
            };
            let mut p = PolicyProgrammer::default();
            let t1 = first();
            let eps = maps.endpoints.clone();
            p.apply(&mut maps, &t1.get(), &eps).unwrap();
            maps.endpoints.insert(8, endpoints[&8]);
            maps.faults.set(FailPlan::Nth(position));
            let t2 = second();
            let eps = maps.endpoints.clone();
            let result = p.apply(&mut maps, &t2.get(), &eps);
            // Pod on 8 never sees pod 8's old entry once out of pending.
            let e8 = maps.endpoints[&8].flags;
            if e8 & PENDING == 0 {
                assert!(!maps.maps.rules.contains_key(&rule(8, 301)), "position {position}");
                assert!(maps.maps.rules.contains_key(&rule(8, 302)), "position {position}");
            }
            // Whatever 10.244.1.5 maps to, pod 7 allows exactly that.
            let id = maps.maps.ipcache[&net("10.244.1.5/32")];
            assert!(maps.maps.rules.contains_key(&rule(7, id)), "position {position}");
            maps.faults.set(FailPlan::Never);
            let eps = maps.endpoints.clone();
            p.apply(&mut maps, &t2.get(), &eps).unwrap();
            assert_eq!(maps.maps.rules, t2.rules);
            assert_eq!(maps.maps.ipcache, t2.ipcache);
            assert_eq!(maps.endpoints[&8].flags & EndpointInfo::FLAGS_POLICY, INGRESS);
            if result.is_ok() {
                break;
            }
            position += 1;
        }
        assert!(position > 5, "the second pass has several writes");
    }
}

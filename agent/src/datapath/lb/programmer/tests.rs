use super::*;
use crate::datapath::{fault::FailPlan, lb::maps::FakeLbMaps};

fn backend(ip: &str, port: u16) -> BackendRef {
    BackendRef {
        addr: BackendAddr { addr: ip.parse().unwrap(), port, proto: Protocol::Tcp },
        local: false,
        terminating: false,
    }
}

fn fe(ip: &str, port: u16) -> Frontend {
    Frontend { addr: ip.parse().unwrap(), port, proto: Protocol::Tcp, scope: Scope::Default }
}

fn state(svc: &str, backends: &[(&str, u16)]) -> FrontendState {
    FrontendState {
        service: svc.into(),
        kind: FrontendKind::ClusterIp,
        backends: backends.iter().map(|(ip, p)| backend(ip, *p)).collect(),
        affinity_timeout: 0,
        source_ranges: vec![],
        local_only: false,
    }
}

fn desired(entries: &[(Frontend, FrontendState)]) -> BTreeMap<Frontend, FrontendState> {
    entries.iter().cloned().collect()
}

/// The IPv4 map key of an IPv4 frontend.
fn key4(f: &Frontend) -> ServiceKey {
    match service_key(f) {
        SvcKey::V4(k) => k,
        SvcKey::V6(k) => panic!("{k:?} is IPv6"),
    }
}

/// Every slot 0 with count c has slots 1..=c pointing at existing backends
/// of its family, and its rev-NAT entry exists in its family's map. This
/// must hold after every single write.
fn check_consistent(d: &LbDump) -> Result<(), String> {
    for (k, v) in d.services.iter().filter(|(k, _)| k.slot == 0) {
        for s in 1..=v.count {
            let slot = d.services.get(&k.with_slot(s)).ok_or(format!("{k:?}: slot {s} of {} missing", v.count))?;
            if !d.backends.contains_key(&slot.backend_id) {
                return Err(format!("{k:?}: slot {s} points at missing backend {}", slot.backend_id));
            }
        }
        if !d.rev_nats.contains_key(&v.rev_nat_id) {
            return Err(format!("{k:?}: rev-NAT {} missing", v.rev_nat_id));
        }
    }
    for (k, v) in d.services6.iter().filter(|(k, _)| k.slot == 0) {
        for s in 1..=v.count {
            let slot = d.services6.get(&k.with_slot(s)).ok_or(format!("{k:?}: slot {s} of {} missing", v.count))?;
            if !d.backends6.contains_key(&slot.backend_id) {
                return Err(format!("{k:?}: slot {s} points at missing IPv6 backend {}", slot.backend_id));
            }
        }
        if !d.rev_nats6.contains_key(&v.rev_nat_id) {
            return Err(format!("{k:?}: IPv6 rev-NAT {} missing", v.rev_nat_id));
        }
    }
    Ok(())
}

/// Frontend -> backend addresses of both families, independent of IDs.
fn resolve(d: &LbDump) -> BTreeMap<(IpAddr, u16), Vec<(IpAddr, u16)>> {
    let v4 = |a: u32| IpAddr::from(Ipv4Addr::from(a.to_ne_bytes()));
    let v6 = |a| IpAddr::from(Ipv6Addr::from(ip6_octets(a)));
    let mut out = BTreeMap::new();
    for (k, v) in d.services.iter().filter(|(k, _)| k.slot == 0) {
        let mut bs: Vec<_> = (1..=v.count)
            .map(|s| d.backends[&d.services[&k.with_slot(s)].backend_id])
            .map(|b| (v4(b.addr), b.port))
            .collect();
        bs.sort();
        out.insert((v4(k.addr), k.port), bs);
    }
    for (k, v) in d.services6.iter().filter(|(k, _)| k.slot == 0) {
        let mut bs: Vec<_> = (1..=v.count)
            .map(|s| d.backends6[&d.services6[&k.with_slot(s)].backend_id])
            .map(|b| (v6(b.addr), b.port))
            .collect();
        bs.sort();
        out.insert((v6(k.addr), k.port), bs);
    }
    out
}

#[test]
fn programs_slots_backends_and_rev_nat() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    let want = desired(&[(fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 8080), ("10.244.2.7", 8080)]))]);
    let r = p.apply(&want, true, &mut maps);
    assert!(r.errors.is_empty());
    assert_eq!((r.frontends_written, r.backends_written), (1, 2));
    check_consistent(&maps.maps).unwrap();
    let key0 = key4(&fe("10.96.0.10", 80));
    assert_eq!(maps.maps.services[&key0].count, 2);
    assert_eq!(key0.port, 80u16.to_be());
    assert_eq!(maps.maps.rev_nats.len(), 1);
    // Idempotent: a second pass writes nothing.
    let before = maps.ops;
    let r = p.apply(&want, true, &mut maps);
    assert_eq!((r, maps.ops), (ApplyReport::default(), before));
}

#[test]
fn one_endpoint_change_touches_only_its_frontend() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    let mut want = BTreeMap::new();
    for i in 0..100u16 {
        want.insert(
            fe(&format!("10.96.1.{}", i % 250), 80 + i),
            state("ns/x", &[("10.244.1.5", 8080), ("10.244.2.7", 8080)]),
        );
    }
    let target = fe("10.96.9.9", 443);
    want.insert(target, state("ns/t", &[("10.244.3.3", 8443)]));
    p.apply(&want, true, &mut maps);
    let before = maps.ops;
    want.insert(target, state("ns/t", &[("10.244.3.3", 8443), ("10.244.3.4", 8443)]));
    let r = p.apply(&want, true, &mut maps);
    // New backend, new slot 2, slot 0 count.
    assert_eq!(maps.ops - before, 3, "{r:?}");
    check_consistent(&maps.maps).unwrap();
}

#[test]
fn shrinking_deletes_extra_slots_and_unused_backends() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    let a = fe("10.96.0.10", 80);
    p.apply(
        &desired(&[(a, state("ns/a", &[("10.244.1.5", 80), ("10.244.1.6", 80), ("10.244.1.7", 80)]))]),
        true,
        &mut maps,
    );
    let r = p.apply(&desired(&[(a, state("ns/a", &[("10.244.1.5", 80)]))]), true, &mut maps);
    assert!(r.errors.is_empty());
    assert_eq!(r.backends_deleted, 2);
    assert_eq!(maps.maps.services.len(), 2, "slot 0 and slot 1 only");
    assert_eq!(maps.maps.backends.len(), 1);
    check_consistent(&maps.maps).unwrap();
}

#[test]
fn prune_only_after_sync() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    p.apply(&desired(&[(fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 80)]))]), true, &mut maps);
    // Before every list has arrived, a missing frontend is kept.
    p.apply(&BTreeMap::new(), false, &mut maps);
    assert_eq!(maps.maps.services.len(), 2);
    let r = p.apply(&BTreeMap::new(), true, &mut maps);
    assert_eq!(r.frontends_deleted, 1);
    assert_eq!(maps.maps, LbDump::default());
}

#[test]
fn restore_keeps_ids_and_rewrites_nothing() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    let want = desired(&[
        (fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 80), ("10.244.2.5", 80)])),
        (fe("10.96.0.11", 53), state("ns/b", &[("10.244.1.9", 53)])),
    ]);
    p.apply(&want, true, &mut maps);
    let snapshot = maps.maps.clone();

    let mut restarted = LbProgrammer::restore(&maps.dump().unwrap());
    let before = maps.ops;
    let r = restarted.apply(&want, true, &mut maps);
    assert_eq!(r, ApplyReport::default());
    assert_eq!(maps.ops, before);
    assert_eq!(maps.maps, snapshot);

    // A new backend after restart gets a fresh ID, not a reused one.
    let mut more = want.clone();
    more.insert(fe("10.96.0.12", 80), state("ns/c", &[("10.244.3.1", 80)]));
    restarted.apply(&more, true, &mut maps);
    let max_before = snapshot.backends.keys().max().unwrap();
    assert!(maps.maps.backends.keys().any(|id| id > max_before));
}

#[test]
fn restore_cleans_up_half_written_state() {
    let mut maps = FakeLbMaps::default();
    // A slot 0 claiming 2 backends with only one slot, and an orphan slot.
    let k = key4(&fe("10.96.0.10", 80));
    maps.maps.backends.insert(1, Backend { addr: 1, port: 80u16.to_be(), proto: 6, flags: 0 });
    maps.maps.rev_nats.insert(1, RevNat { addr: k.addr, port: k.port, _pad: 0 });
    maps.maps.services.insert(k, ServiceValue { count: 2, rev_nat_id: 1, ..Default::default() });
    maps.maps.services.insert(k.with_slot(1), ServiceValue { backend_id: 1, rev_nat_id: 1, ..Default::default() });
    let orphan = key4(&fe("10.96.0.99", 99)).with_slot(3);
    maps.maps.services.insert(orphan, ServiceValue { backend_id: 1, ..Default::default() });

    let mut p = LbProgrammer::restore(&maps.dump().unwrap());
    let want = desired(&[(fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 80)]))]);
    let r = p.apply(&want, true, &mut maps);
    assert!(r.errors.is_empty(), "{r:?}");
    check_consistent(&maps.maps).unwrap();
    assert!(!maps.maps.services.contains_key(&orphan));
    assert_eq!(maps.maps.services.len(), 2);
    assert_eq!(maps.maps.backends.len(), 1);
}

/// Fail at every possible write in turn: the maps stay consistent at the
/// failure, and the next clean pass converges to the right contents.
#[test]
fn every_fault_leaves_consistent_maps_and_recovers() {
    let first = desired(&[
        (fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 80), ("10.244.1.6", 80), ("10.244.1.7", 80)])),
        (fe("10.96.0.11", 80), state("ns/b", &[("10.244.2.5", 80)])),
    ]);
    let second = desired(&[
        (fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.6", 80)])),
        (fe("10.96.0.12", 80), state("ns/c", &[("10.244.3.5", 80), ("10.244.1.6", 80)])),
    ]);
    let mut reference = FakeLbMaps::default();
    let mut rp = LbProgrammer::default();
    rp.apply(&first, true, &mut reference);
    rp.apply(&second, true, &mut reference);
    let expected = resolve(&reference.maps);

    let mut faults_injected = 0;
    for fail_at in 0..39 {
        let mut maps = FakeLbMaps::default();
        let mut p = LbProgrammer::default();
        p.apply(&first, true, &mut maps);
        maps.faults.set(FailPlan::FromNth(fail_at));
        let r = p.apply(&second, true, &mut maps);
        check_consistent(&maps.maps).unwrap_or_else(|e| panic!("fail_at {fail_at}: {e}"));
        let failed = !r.errors.is_empty();
        faults_injected += usize::from(failed);
        maps.faults.set(FailPlan::Never);
        let r = p.apply(&second, true, &mut maps);
        assert!(r.errors.is_empty());
        check_consistent(&maps.maps).unwrap();
        assert_eq!(resolve(&maps.maps), expected, "fail_at {fail_at}");
        assert_eq!(maps.maps.backends.len(), reference.maps.backends.len(), "fail_at {fail_at}: leaked backends");
        assert_eq!(maps.maps.rev_nats.len(), reference.maps.rev_nats.len(), "fail_at {fail_at}: leaked rev-NAT");
        if !failed {
            break; // past the last write: every fault position was covered
        }
    }
    // second over first: 2 backends, 1 rev-NAT, slots and counts, deletes.
    assert!(faults_injected >= 8, "only {faults_injected} fault positions exercised");
}

#[test]
fn apply_changed_touches_only_the_changed_frontends() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    let mut want = BTreeMap::new();
    for i in 0..50u16 {
        want.insert(fe("10.96.1.1", 1000 + i), state("ns/x", &[("10.244.1.5", 8080)]));
    }
    p.apply(&want, true, &mut maps);
    let before = maps.ops;

    let moved = fe("10.96.1.1", 1007);
    let gone = fe("10.96.1.1", 1008);
    want.insert(moved, state("ns/x", &[("10.244.2.5", 8080)]));
    want.remove(&gone);
    let changed: BTreeSet<Frontend> = [moved, gone].into_iter().collect();
    let r = p.apply_changed(&want, &changed, &mut maps);
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.frontends_deleted, 1);
    // backend + slot 1 + slot 0 for `moved`; slot 0 + slot 1 for `gone`.
    assert_eq!(maps.ops - before, 5);
    check_consistent(&maps.maps).unwrap();
    // Same result as a full pass over the same desired state.
    let mut reference = FakeLbMaps::default();
    LbProgrammer::default().apply(&want, true, &mut reference);
    assert_eq!(resolve(&maps.maps), resolve(&reference.maps));
}

/// A dual-stack Service: its IPv4 frontend in the IPv4 maps, its IPv6 one
/// in the IPv6 maps, with IDs from one space (no ID in both maps).
#[test]
fn each_family_goes_to_its_own_maps_with_ids_from_one_space() {
    let mut maps = FakeLbMaps::default();
    let mut p = LbProgrammer::default();
    let mut ranged = state("ns/a", &[("fd00:10:244:1::5", 8080)]);
    ranged.source_ranges = vec!["2001:db8::/32".parse().unwrap()];
    let want = desired(&[
        (fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 8080), ("10.244.2.7", 8080)])),
        (fe("fd00:10:96::a", 80), state("ns/a", &[("fd00:10:244:1::5", 8080), ("fd00:10:244:2::7", 8080)])),
        (fe("2001:db8:ffff::1", 80), ranged),
    ]);
    let r = p.apply(&want, true, &mut maps);
    assert!(r.errors.is_empty(), "{r:?}");
    check_consistent(&maps.maps).unwrap();
    let d = &maps.maps;
    assert_eq!((d.services.len(), d.backends.len(), d.rev_nats.len()), (3, 2, 1));
    assert_eq!((d.services6.len(), d.backends6.len(), d.rev_nats6.len()), (5, 2, 2));
    assert!(d.backends.keys().all(|id| !d.backends6.contains_key(id)), "backend IDs shared across families");
    assert!(d.rev_nats.keys().all(|id| !d.rev_nats6.contains_key(id)), "rev-NAT IDs shared across families");
    let key6 = match service_key(&fe("fd00:10:96::a", 80)) {
        SvcKey::V6(k) => k,
        k => panic!("{k:?}"),
    };
    assert_eq!(ip6_octets(key6.addr), "fd00:10:96::a".parse::<Ipv6Addr>().unwrap().octets());
    let rn = d.rev_nats6[&d.services6[&key6].rev_nat_id];
    assert_eq!((ip6_octets(rn.addr), rn.port), (ip6_octets(key6.addr), 80u16.to_be()));
    let ranges: Vec<_> = d.source_ranges.values().flatten().map(|r| r.to_string()).collect();
    assert_eq!(ranges, ["2001:db8::/32"]);
    assert_eq!(
        resolve(d)[&("fd00:10:96::a".parse().unwrap(), 80u16.to_be())],
        [
            ("fd00:10:244:1::5".parse().unwrap(), 8080u16.to_be()),
            ("fd00:10:244:2::7".parse().unwrap(), 8080u16.to_be())
        ]
    );

    // A restart keeps every ID of both families and rewrites nothing.
    let snapshot = maps.maps.clone();
    let mut restarted = LbProgrammer::restore(&maps.dump().unwrap());
    let before = maps.ops;
    assert_eq!(restarted.apply(&want, true, &mut maps), ApplyReport::default());
    assert_eq!((maps.ops, &maps.maps), (before, &snapshot));

    // And the IPv6 frontends go when no longer wanted, IPv4 untouched.
    let v4_only = desired(&[want.first_key_value().map(|(k, v)| (*k, v.clone())).unwrap()]);
    let r = restarted.apply(&v4_only, true, &mut maps);
    assert!(r.errors.is_empty(), "{r:?}");
    let d = &maps.maps;
    assert_eq!((d.services6.len(), d.backends6.len(), d.rev_nats6.len(), d.source_ranges.len()), (0, 0, 0, 0));
    assert_eq!((d.services.len(), d.backends.len(), d.rev_nats.len()), (3, 2, 1));
}

/// As `every_fault_leaves_consistent_maps_and_recovers`, over frontends of
/// both families changing at once.
#[test]
fn every_fault_in_a_dual_stack_change_leaves_consistent_maps_and_recovers() {
    let first = desired(&[
        (fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.5", 80), ("10.244.1.6", 80)])),
        (fe("fd00:10:96::a", 80), state("ns/a", &[("fd00::5", 80), ("fd00::6", 80), ("fd00::7", 80)])),
        (fe("fd00:10:96::b", 80), state("ns/b", &[("fd00::8", 80)])),
    ]);
    let second = desired(&[
        (fe("10.96.0.10", 80), state("ns/a", &[("10.244.1.6", 80)])),
        (fe("fd00:10:96::a", 80), state("ns/a", &[("fd00::6", 80)])),
        (fe("fd00:10:96::c", 80), state("ns/c", &[("fd00::9", 80), ("fd00::6", 80)])),
    ]);
    let mut reference = FakeLbMaps::default();
    let mut rp = LbProgrammer::default();
    rp.apply(&first, true, &mut reference);
    rp.apply(&second, true, &mut reference);
    let expected = resolve(&reference.maps);

    let mut faults_injected = 0;
    for fail_at in 0..100 {
        let mut maps = FakeLbMaps::default();
        let mut p = LbProgrammer::default();
        p.apply(&first, true, &mut maps);
        maps.faults.set(FailPlan::FromNth(fail_at));
        let r = p.apply(&second, true, &mut maps);
        check_consistent(&maps.maps).unwrap_or_else(|e| panic!("fail_at {fail_at}: {e}"));
        let failed = !r.errors.is_empty();
        faults_injected += usize::from(failed);
        maps.faults.set(FailPlan::Never);
        let r = p.apply(&second, true, &mut maps);
        assert!(r.errors.is_empty());
        check_consistent(&maps.maps).unwrap();
        assert_eq!(resolve(&maps.maps), expected, "fail_at {fail_at}");
        assert_eq!(maps.maps.backends6.len(), reference.maps.backends6.len(), "fail_at {fail_at}: leaked backends");
        assert_eq!(maps.maps.rev_nats6.len(), reference.maps.rev_nats6.len(), "fail_at {fail_at}: leaked rev-NAT");
        if !failed {
            break;
        }
    }
    assert!(faults_injected >= 10, "only {faults_injected} fault positions exercised");

    // Every write to one IPv6 map failing: IPv4 is still programmed.
    let mut maps = FakeLbMaps::default();
    maps.faults.set(FailPlan::Map(weir_common::pin::MAP_SVC6));
    let r = LbProgrammer::default().apply(&second, true, &mut maps);
    assert!(!r.errors.is_empty());
    check_consistent(&maps.maps).unwrap();
    assert_eq!(maps.maps.services.len(), 2);
}

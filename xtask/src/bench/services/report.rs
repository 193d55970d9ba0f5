//! The tables and goal lines printed at the end of `bench services`.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::{
    Column, ENDPOINTS, GOAL_CHANGE_P99_US, GOAL_COLD_MS, GOAL_DIRECT_RATIO, GOAL_RSS_MIB, REQUEST, ServicesBenchArgs,
    control_plane::ControlPlane, data_path::DataPath, load::Load, manifests::iptables_rules,
};

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

pub(super) fn print_data_path(args: &ServicesBenchArgs, d: &DataPath) {
    print_setup(args, d);
    print_rates(args, d);
    print_latencies(args, d);
    print_rates_v6(args, d);
    print_checks(args, d);
    print_failures(d);
    print_goals(args, d);
}

/// The connection rate of one cell, if it was measured.
/// A rate as the tables show it: "-" for a column not asked for
/// (`--columns`), FAILED for one that could not be measured.
fn rate_text(d: &DataPath, size: usize, col: Column) -> String {
    match d.cells.get(&(size, col)) {
        None => "-".into(),
        Some(Err(_)) => "FAILED".into(),
        Some(Ok(l)) => format!("{:.0}", l.rate()),
    }
}

/// p50 / p99 as the tables show them, "-" and FAILED as in `rate_text`.
fn latency_text(d: &DataPath, size: usize, col: Column) -> String {
    match d.cells.get(&(size, col)) {
        None => "-".into(),
        Some(Err(_)) => "FAILED".into(),
        Some(Ok(l)) => {
            let (p50, p99) = l.latency_us();
            format!("{p50:.0} / {p99:.0}")
        }
    }
}

fn rate(d: &DataPath, size: usize, col: Column) -> Option<f64> {
    d.cells.get(&(size, col)).and_then(|c| c.as_ref().ok()).map(Load::rate)
}

fn ipvs_na(d: &DataPath) -> bool {
    d.ipvs != "available"
}

/// The IPVS column: why it is not measured (never a number).
fn ipvs_cell(d: &DataPath) -> String {
    if ipvs_na(d) { d.ipvs.clone() } else { "NOT MEASURED".into() }
}

/// What one connection is, where the processes run, what the columns are.
fn print_setup(args: &ServicesBenchArgs, d: &DataPath) {
    println!(
        "\nData path: TCP connect + {}-byte request + reply + close, {} stream(s); load generator on CPU {}, \
         echo servers on CPU {} (nice {}); {:.1} s per cell in {} interleaved slices, {:.2} s warm-up first",
        REQUEST.len(),
        args.streams,
        args.common.client_cpu,
        args.common.server_cpu,
        args.common.nice,
        args.common.secs,
        args.common.rounds,
        args.warmup
    );
    println!(
        "direct = the Service's {ENDPOINTS} backend pods by IP, one per connection in turn, on the weir node (the \
         limit); weir tc = ClusterIP, per-packet tc path; weir sock = ClusterIP, connect-time socket LB; direct@ipt \
         = the same on the iptables node; iptables = ClusterIP via kube-proxy-style chains ({})",
        d.iptables_version
    );
}

/// The new-connection rate table, with its ratios.
fn print_rates(args: &ServicesBenchArgs, d: &DataPath) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let ipvs_cell = ipvs_cell(d);

    println!("\nNew connections per second (higher is better)");
    println!(
        "{:>8} {:>8} {:>8} {:>9} {:>10} {:>8}  {:<25} | {:>7} {:>8} {:>8} {:>8} {:>8}",
        "services",
        "direct",
        "weir tc",
        "weir sock",
        "direct@ipt",
        "iptables",
        "IPVS",
        "tc/dir",
        "sock/dir",
        "ipt/dir",
        "sock/ipt",
        "tc/ipt"
    );
    for &size in &args.sizes {
        let r: BTreeMap<Column, Option<f64>> = Column::ALL.iter().map(|&p| (p, rate(d, size, p))).collect();
        println!(
            "{:>8} {:>8} {:>8} {:>9} {:>10} {:>8}  {:<25} | {:>7} {:>8} {:>8} {:>8} {:>8}",
            size,
            rate_text(d, size, Column::Direct),
            rate_text(d, size, Column::WeirTc),
            rate_text(d, size, Column::WeirSock),
            rate_text(d, size, Column::DirectIpt),
            rate_text(d, size, Column::Iptables),
            ipvs_cell,
            ratio(r[&Column::WeirTc], r[&Column::Direct]),
            ratio(r[&Column::WeirSock], r[&Column::Direct]),
            ratio(r[&Column::Iptables], r[&Column::Direct]),
            ratio(r[&Column::WeirSock], r[&Column::Iptables]),
            ratio(r[&Column::WeirTc], r[&Column::Iptables]),
        );
    }
}

/// The IPv6 columns: the rates, each path against direct over IPv6.
fn print_rates_v6(args: &ServicesBenchArgs, d: &DataPath) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    println!("\nOver IPv6 (the same node, every Service dual-stack): new connections per second, p50 / p99 us");
    println!(
        "{:>8} {:>8} {:>9} {:>10} | {:>7} {:>8} | {:>13} {:>13} {:>13}",
        "services", "direct6", "weir tc6", "weir sock6", "tc/dir", "sock/dir", "direct6", "weir tc6", "weir sock6"
    );
    for &size in &args.sizes {
        let r = |c: Column| rate(d, size, c);
        let lat = |c: Column| latency_text(d, size, c);
        println!(
            "{:>8} {:>8} {:>9} {:>10} | {:>7} {:>8} | {:>13} {:>13} {:>13}",
            size,
            rate_text(d, size, Column::Direct6),
            rate_text(d, size, Column::WeirTc6),
            rate_text(d, size, Column::WeirSock6),
            ratio(r(Column::WeirTc6), r(Column::Direct6)),
            ratio(r(Column::WeirSock6), r(Column::Direct6)),
            lat(Column::Direct6),
            lat(Column::WeirTc6),
            lat(Column::WeirSock6),
        );
    }
}

/// The p50 / p99 latency table.
fn print_latencies(args: &ServicesBenchArgs, d: &DataPath) {
    let ipvs_cell = ipvs_cell(d);
    println!("\nLatency socket() -> first reply byte, p50 / p99 in us (lower is better)");
    println!(
        "{:>8} {:>15} {:>15} {:>15} {:>15} {:>15}  {:<25}",
        "services", "direct", "weir tc", "weir sock", "direct@ipt", "iptables", "IPVS"
    );
    for &size in &args.sizes {
        let lat = |c: Column| latency_text(d, size, c);
        println!(
            "{:>8} {:>15} {:>15} {:>15} {:>15} {:>15}  {:<25}",
            size,
            lat(Column::Direct),
            lat(Column::WeirTc),
            lat(Column::WeirSock),
            lat(Column::DirectIpt),
            lat(Column::Iptables),
            ipvs_cell
        );
    }
}

/// Per size: each cell's backends, conntrack entries and spread; then how
/// long programming took and the agent's idle CPU.
fn print_checks(args: &ServicesBenchArgs, d: &DataPath) {
    println!(
        "\nChecks per cell: backends that answered / conntrack entries from the cell's client pod in its node's \
         table at the end (tracked in every column) / slice-to-slice spread of the rate"
    );
    for &size in &args.sizes {
        let mut line = format!("{size:>8}");
        for p in Column::ALL {
            let _ = match d.cells.get(&(size, p)) {
                Some(Ok(l)) => write!(
                    line,
                    "  {}: {} bk / ct {} / ±{}",
                    p.label(),
                    l.backends.len(),
                    l.conntrack.map_or("?".into(), |c| c.to_string()),
                    l.spread().map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
                ),
                Some(Err(_)) | None => write!(line, "  {}: -", p.label()),
            };
        }
        println!("{line}");
        if args.slices {
            for p in Column::ALL {
                if let Some(Ok(l)) = d.cells.get(&(size, p)) {
                    let rates: Vec<String> = l.slice_rates.iter().map(|r| format!("{r:.0}")).collect();
                    println!("{:>8}  {:>10} slices: {}", "", p.label(), rates.join(" "));
                }
            }
        }
        if let Some((weir, ipt)) = d.programming.get(&size) {
            let t = |x: &Option<Duration>| x.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
            let idle = d.agent_idle_cpu.get(&size).copied().flatten();
            println!(
                "{:>8}  programming: weir manifest dir -> ClusterIP answers {}; iptables-restore of {} rules {}; \
                 weir-agent idle afterwards: {} of a core{}",
                "",
                t(weir),
                iptables_rules(size),
                t(ipt),
                idle.map_or("?".into(), |c| format!("{c:.1}%")),
                if args.agent_running { "" } else { " (paused with SIGSTOP during the cells)" }
            );
        }
    }
}

/// Failed cells, socket LB not attached, conntrack at the end, IPVS.
fn print_failures(d: &DataPath) {
    for ((size, p), c) in &d.cells {
        if let Err(e) = c {
            println!("FAILED {size} Services, {}: {e}", p.label());
        }
    }
    if let Err(e) = &d.socket_lb {
        println!("weir sock: {e}");
    }
    for (node, ct) in &d.conntrack_end {
        if let Some((all, unreplied)) = ct {
            println!(
                "conntrack on {node} at the end: {all} TCP entries, {unreplied} [UNREPLIED] (never matched by a reply: \
                 the flow was seen translated in one direction only)"
            );
        }
    }
    if ipvs_na(d) {
        println!(
            "IPVS: NOT MEASURED, {} (ipvsadm -Ln in the node namespace: \"Can't initialize ipvs: Protocol not \
             available\"; CONFIG_IP_VS is not set and this kernel loads no modules). No numbers are shown for it.",
            d.ipvs
        );
    }
}

/// The new-connection rate goals, met or not.
fn print_goals(args: &ServicesBenchArgs, d: &DataPath) {
    let rate = |size: usize, p: Column| rate(d, size, p);
    println!("\nGoals (new-connection rate)");
    for (p, name) in [(Column::WeirSock6, "weir socket LB"), (Column::WeirTc6, "weir per-packet tc")] {
        let ratios: Vec<Option<f64>> =
            args.sizes.iter().map(|&s| rate(s, p).zip(rate(s, Column::Direct6)).map(|(a, b)| a / b)).collect();
        let met = ratios.iter().all(|r| r.is_some_and(|r| r >= GOAL_DIRECT_RATIO));
        println!(
            "  IPv6 ClusterIP >= {GOAL_DIRECT_RATIO} x direct over IPv6 at every size, {name}: {} -> {}",
            fmt_ratios(&ratios),
            verdict(met)
        );
    }
    for (p, name) in [(Column::WeirSock, "weir socket LB"), (Column::WeirTc, "weir per-packet tc")] {
        let ratios: Vec<Option<f64>> =
            args.sizes.iter().map(|&s| rate(s, p).zip(rate(s, Column::Direct)).map(|(a, b)| a / b)).collect();
        let met = ratios.iter().all(|r| r.is_some_and(|r| r >= GOAL_DIRECT_RATIO));
        println!(
            "  ClusterIP >= {GOAL_DIRECT_RATIO} x direct at every size, {name}: {} -> {}",
            fmt_ratios(&ratios),
            verdict(met)
        );
        let vs_ipt: Vec<Option<f64>> =
            args.sizes.iter().map(|&s| rate(s, p).zip(rate(s, Column::Iptables)).map(|(a, b)| a / b)).collect();
        let met = vs_ipt.iter().all(|r| r.is_some_and(|r| r > 1.0));
        println!("  ahead of iptables at every size, {name}: {} -> {}", fmt_ratios(&vs_ipt), verdict(met));
    }
    println!(
        "  ahead of IPVS at every size: {}",
        if ipvs_na(d) { format!("NOT MEASURED ({})", d.ipvs) } else { "NOT MEASURED".into() }
    );
    if let Some(rss) = d.agent_rss_mib {
        println!(
            "(info) the live agent on n1 with {} Services via the manifest dir: RSS {rss:.1} MiB",
            args.sizes.last().copied().unwrap_or(0)
        );
    }
}

fn fmt_ratios(r: &[Option<f64>]) -> String {
    r.iter().map(|r| r.map_or("-".into(), |r| format!("{r:.2}"))).collect::<Vec<_>>().join(" / ")
}

pub(super) fn print_control_plane(args: &ServicesBenchArgs, c: &ControlPlane) {
    println!(
        "\nControl plane: weir-dev bench-control-plane --services {} --endpoints {ENDPOINTS} --changes {} (release, real pinned maps)",
        args.cp_services, args.changes
    );
    let v = match &c.report {
        Ok(v) => v,
        Err(e) => {
            println!("  FAILED: {e}");
            return;
        }
    };
    let f = |k: &str| v[k].as_f64();
    let row = |what: &str, value: Option<f64>, unit: &str, goal: Option<(f64, &str)>| {
        let shown = value.map_or("-".into(), |x| format!("{x:.1} {unit}"));
        match goal {
            Some((limit, goal_text)) => println!(
                "  {what:<34} {shown:>14}   goal {goal_text:<12} {}",
                verdict(value.is_some_and(|x| x < limit))
            ),
            None => println!("  {what:<34} {shown:>14}"),
        }
    };
    println!("  frontends programmed: {}", v["frontends"]);
    row("cold programming", f("cold_ms"), "ms", Some((GOAL_COLD_MS, "< 1 s")));
    row("EndpointSlice change p50", f("change_p50_us"), "us", None);
    row("EndpointSlice change p99", f("change_p99_us"), "us", Some((GOAL_CHANGE_P99_US, "< 10 ms")));
    row("EndpointSlice change max", f("change_max_us"), "us", None);
    row("resident memory", f("rss_mib"), "MiB", Some((GOAL_RSS_MIB, "< 150 MiB")));
}

//! The sandbox's address families (`--ip-family`): which the cluster has,
//! which the ping/HTTP matrix probes, and which demos can run. Services and
//! NetworkPolicy over IPv6 are not built yet (issue #12), so their demos
//! need IPv4 and the run says so rather than skipping them silently.

use std::net::IpAddr;

use clap::ValueEnum;
use weir_testbed::topology::Families;

/// The cluster's families, as kind's `networking.ipFamily` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IpFamily {
    Ipv4,
    Dual,
    Ipv6,
}

/// One address family the matrix probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl IpFamily {
    /// The test bed's topology for this choice (ULA IPv6 addresses, inside
    /// the sandbox's namespaces only).
    pub fn families(self) -> Families {
        match self {
            IpFamily::Ipv4 => Families::Ipv4,
            IpFamily::Dual => Families::DualStack,
            IpFamily::Ipv6 => Families::Ipv6,
        }
    }

    /// The families the ping/HTTP matrix runs for, IPv4 first.
    pub fn probed(self) -> Vec<Family> {
        match self {
            IpFamily::Ipv4 => vec![Family::V4],
            IpFamily::Dual => vec![Family::V4, Family::V6],
            IpFamily::Ipv6 => vec![Family::V6],
        }
    }

    /// Whether the Service and NetworkPolicy demos (IPv4 only) can run.
    pub fn has_ipv4(self) -> bool {
        self != IpFamily::Ipv6
    }

    /// What the run says about IPv6 beyond pod-to-pod, if anything.
    pub fn scope_note(self) -> Option<&'static str> {
        match self {
            IpFamily::Ipv4 => None,
            IpFamily::Dual => Some(
                "The Service demo runs over IPv4 (IPv6 Services: tests/tests/services_ipv6.rs); the policy \
                 demo runs over IPv4, then shows the same policy deciding over IPv6.",
            ),
            IpFamily::Ipv6 => Some(
                "IPv6-only run: the ping/HTTP matrix only. The Service and policy demos need IPv4 \
                 (run with --ip-family dual or ipv4 to see them; dual shows the policy over IPv6 too).",
            ),
        }
    }
}

/// `http://<ip>:<port>/`, with an IPv6 address in brackets.
pub fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("http://{ip}:{port}/"),
        IpAddr::V6(ip) => format!("http://[{ip}]:{port}/"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[arg(long, value_enum, default_value_t = IpFamily::Dual)]
        ip_family: IpFamily,
    }

    #[test]
    fn parses_the_three_choices_and_defaults_to_dual() {
        assert_eq!(Cli::parse_from(["x"]).ip_family, IpFamily::Dual);
        for (arg, want) in [("ipv4", IpFamily::Ipv4), ("dual", IpFamily::Dual), ("ipv6", IpFamily::Ipv6)] {
            assert_eq!(Cli::parse_from(["x", "--ip-family", arg]).ip_family, want);
        }
        assert!(Cli::try_parse_from(["x", "--ip-family", "both"]).is_err());
    }

    #[test]
    fn families_probed_and_demos() {
        assert_eq!(IpFamily::Dual.families(), Families::DualStack);
        assert_eq!(IpFamily::Ipv6.families(), Families::Ipv6);
        assert_eq!(IpFamily::Ipv4.probed(), [Family::V4]);
        assert_eq!(IpFamily::Dual.probed(), [Family::V4, Family::V6]);
        assert_eq!(IpFamily::Ipv6.probed(), [Family::V6]);
        assert!(IpFamily::Dual.has_ipv4() && !IpFamily::Ipv6.has_ipv4());
        assert!(IpFamily::Ipv4.scope_note().is_none());
        assert!(IpFamily::Dual.scope_note().unwrap().contains("same policy deciding over IPv6"));
        assert!(IpFamily::Ipv6.scope_note().unwrap().contains("ping/HTTP matrix only"));
    }

    #[test]
    fn urls_bracket_ipv6() {
        assert_eq!(url("10.244.1.2".parse().unwrap(), 80), "http://10.244.1.2:80/");
        assert_eq!(url("fd00:10:244:1::2".parse().unwrap(), 80), "http://[fd00:10:244:1::2]:80/");
    }
}

//! The CNI spec versions weir-cni speaks, and what each one allows.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const SUPPORTED: [CniVersion; 5] = [Self::V0_3_0, Self::V0_3_1, Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];
    pub const LATEST: CniVersion = Self::V1_1_0;

    pub fn parse(s: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    pub fn supported_list() -> String {
        Self::SUPPORTED.map(Self::as_str).join(", ")
    }

    /// Results before 1.0.0 carry `"version": "4"` in each `ips` entry.
    pub fn ips_carry_version(self) -> bool {
        self < Self::V1_0_0
    }

    /// GC, STATUS, interface `mtu` and route `scope` appeared in 1.1.0.
    pub fn has_1_1_features(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_supported_version() {
        for v in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(CniVersion::parse("0.2.0"), None);
        assert_eq!(CniVersion::parse("1.1"), None);
        assert_eq!(CniVersion::parse("2.0.0"), None);
    }

    #[test]
    fn features_by_version() {
        assert!(CniVersion::V0_3_1.ips_carry_version());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.has_1_1_features());
        assert!(CniVersion::V1_1_0.has_1_1_features());
    }
}

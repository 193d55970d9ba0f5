//! The identity of one attachment: `(containerID, ifname)` within a network,
//! which is the key the plugin stores state under (CNI spec, "General
//! considerations").

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self { container_id: container_id.into(), ifname: ifname.into() }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Container IDs and network names: an alphanumeric first character followed
/// by alphanumerics, `_`, `.` or `-` (CNI spec). This also keeps them safe as
/// path components and as single lines in the IPAM store.
pub fn check_identifier(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("{value:?} must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("{value:?} contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"));
    }
    Ok(())
}

/// Linux interface names: 1..=15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace (CNI spec, `CNI_IFNAME`).
pub fn check_ifname(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 15 {
        return Err(format!("{value:?} is {} bytes long; interface names have at most 15", value.len()));
    }
    if value == "." || value == ".." {
        return Err(format!("{value:?} is not a valid interface name"));
    }
    if let Some(bad) = value.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace()) {
        return Err(format!("{value:?} contains {bad:?}, which interface names cannot contain"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(check_identifier("abc-1.2_3").is_ok());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("-abc").is_err());
        assert!(check_identifier("a/b").is_err());
        assert!(check_identifier("a\nb").is_err());
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("123456789012345").is_ok());
        assert!(check_ifname("1234567890123456").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_ifname("a:b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}

//! An allowlist entry as the operator writes it: a source prefix, optionally bound to the
//! source MAC address a packet must carry and to the interface it must arrive on.
//!
//! ```text
//! 10.0.1.10/32
//! 10.0.1.10/32,mac=02:00:0a:00:01:0a
//! 10.0.1.10/32,mac=02:00:0a:00:01:0a,interface=eth0
//! fd00:1::10/128,interface=wg0
//! ```
//!
//! The address alone is forgeable by anyone on the database's L2 segment (claim the gateway's
//! address, answer for it in ARP or neighbour discovery). Binding the MAC shuts out a neighbour
//! that does so with its own card; binding the interface shuts out a source that should never
//! arrive there. Neither helps against a neighbour that also forges its MAC: see the README's
//! deployment premises.

use std::{fmt, str::FromStr};

use crate::cidr::{Cidr, CidrError};

#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error("`{0}` is not a MAC address (six hex pairs separated by ':', e.g. 02:00:0a:00:01:0a)")]
    Mac(String),
    #[error(
        "`{0}`: after the prefix only `mac=ADDRESS` and `interface=NAME` may follow, comma-separated, each at most once"
    )]
    Option(String),
    #[error("a MAC binding needs an Ethernet source; `{0}` is not a unicast address")]
    MacNotUnicast(String),
}

/// A prefix and what else a packet from it must match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowSpec {
    pub cidr: Cidr,
    pub mac: Option<[u8; 6]>,
    /// An interface name, resolved to its index in the loader's network namespace when the
    /// entry is written.
    pub interface: Option<String>,
}

impl From<Cidr> for AllowSpec {
    fn from(cidr: Cidr) -> Self {
        Self {
            cidr,
            mac: None,
            interface: None,
        }
    }
}

pub fn parse_mac(text: &str) -> Result<[u8; 6], AllowError> {
    let bad = || AllowError::Mac(text.to_owned());
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FromStr for AllowSpec {
    type Err = AllowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',').map(str::trim);
        let cidr: Cidr = parts.next().unwrap_or_default().parse()?;
        let mut spec = AllowSpec::from(cidr);
        for part in parts {
            let option = || AllowError::Option(text.to_owned());
            match part.split_once('=') {
                Some(("mac", v)) if spec.mac.is_none() => {
                    let mac = parse_mac(v)?;
                    // A group address never appears as a source: a typo, not a binding.
                    if mac[0] & 1 != 0 || mac == [0; 6] {
                        return Err(AllowError::MacNotUnicast(v.to_owned()));
                    }
                    spec.mac = Some(mac);
                }
                Some(("interface", v)) if spec.interface.is_none() && !v.is_empty() => {
                    spec.interface = Some(v.to_owned());
                }
                _ => return Err(option()),
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for AllowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if let Some(mac) = &self.mac {
            write!(f, ",mac={}", format_mac(mac))?;
        }
        if let Some(i) = &self.interface {
            write!(f, ",interface={i}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for AllowSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AllowSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bindings_and_prints_them_back() {
        for text in [
            "10.0.1.10/32",
            "10.0.1.10/32,mac=02:00:0a:00:01:0a",
            "10.0.1.10/32,mac=02:00:0a:00:01:0a,interface=eth0",
            "fd00:1::10/128,interface=wg0",
        ] {
            let spec: AllowSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        let spec: AllowSpec = "10.0.1.10, mac=02:AA:0a:00:01:0a".parse().unwrap();
        assert_eq!(spec.mac, Some([2, 0xaa, 0x0a, 0, 1, 0x0a]));
        assert_eq!(spec.cidr.to_string(), "10.0.1.10/32");
    }

    #[test]
    fn says_what_is_wrong() {
        let err = |t: &str| t.parse::<AllowSpec>().unwrap_err().to_string();
        assert!(err("10.0.1.10,mac=02:00:0a").contains("not a MAC address"));
        assert!(err("10.0.1.10,mac=01:00:5e:00:00:01").contains("not a unicast"));
        assert!(err("10.0.1.10,iface=eth0").contains("only `mac=ADDRESS`"));
        assert!(err("10.0.1.10,interface=a,interface=b").contains("at most once"));
        assert!(err("10.0.1.300").contains("not an IP address"));
    }
}

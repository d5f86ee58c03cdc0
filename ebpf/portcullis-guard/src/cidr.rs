//! CIDR prefixes as the allowlist holds them: parsed from text, normalised (host bits cleared,
//! so `10.0.0.7/8` and `10.0.0.0/8` are one entry), and turned into LPM-trie keys.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use aya::maps::lpm_trie::Key;

#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address or CIDR prefix (e.g. 10.0.0.0/24, fd00::1/128)")]
    Syntax(String),
    #[error("prefix length {len} is too long for `{text}` (at most {max})")]
    PrefixTooLong { text: String, len: u32, max: u32 },
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u32,
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u32) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::PrefixTooLong {
                text: format!("{addr}/{len}"),
                len,
                max,
            });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn v4_key(&self) -> Option<Key<[u8; 4]>> {
        match self.addr {
            IpAddr::V4(a) => Some(Key::new(self.len, a.octets())),
            IpAddr::V6(_) => None,
        }
    }

    pub fn v6_key(&self) -> Option<Key<[u8; 16]>> {
        match self.addr {
            IpAddr::V6(a) => Some(Key::new(self.len, a.octets())),
            IpAddr::V4(_) => None,
        }
    }

    pub fn from_v4_key(key: &Key<[u8; 4]>) -> Self {
        Self {
            addr: Ipv4Addr::from(key.data()).into(),
            len: key.prefix_len(),
        }
    }

    pub fn from_v6_key(key: &Key<[u8; 16]>) -> Self {
        Self {
            addr: Ipv6Addr::from(key.data()).into(),
            len: key.prefix_len(),
        }
    }
}

fn mask(addr: IpAddr, len: u32) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - len).unwrap_or(0);
            Ipv4Addr::from(bits).into()
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - len).unwrap_or(0);
            Ipv6Addr::from(bits).into()
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (
                a.parse::<IpAddr>().map_err(|_| syntax())?,
                Some(l.parse::<u32>().map_err(|_| syntax())?),
            ),
            None => (text.parse::<IpAddr>().map_err(|_| syntax())?, None),
        };
        let len = len.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Self::new(addr, len).map_err(|e| match e {
            CidrError::PrefixTooLong { len, max, .. } => CidrError::PrefixTooLong {
                text: text.to_owned(),
                len,
                max,
            },
            other => other,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "fd00::1".parse::<Cidr>().unwrap().to_string(),
            "fd00::1/128"
        );
        assert_eq!(
            "fd00::1/16".parse::<Cidr>().unwrap().to_string(),
            "fd00::/16"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "fd00::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "nonsense".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
    }

    #[test]
    fn keys_round_trip() {
        let c: Cidr = "192.168.7.0/24".parse().unwrap();
        assert_eq!(Cidr::from_v4_key(&c.v4_key().unwrap()), c);
        assert!(c.v6_key().is_none());
        let c: Cidr = "fd00:1::/32".parse().unwrap();
        assert_eq!(Cidr::from_v6_key(&c.v6_key().unwrap()), c);
    }
}

//! Where the guard keeps its state in bpffs, so any loader (a restarted `run`, `status`,
//! `allow`, `detach`) finds the same maps, programs and links:
//!
//! ```text
//! <root>/maps/<MAP>            every map (see portcullis_common::maps)
//! <root>/progs/<program>       the programs last attached
//! <root>/links/xdp@<iface>     one link per attachment; its name says what it is
//! <root>/links/tc@<iface>
//! <root>/links/connect4        local mode
//! <root>/links/connect6
//! ```
//!
//! A pinned link keeps its program attached while no process holds it: that is what makes
//! enforcement survive the loader (fail closed).

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// The default root; one guard per host normally needs no other.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/portcullis";

/// What a pinned link attaches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Attachment {
    Xdp { interface: String },
    Tc { interface: String },
    Connect4,
    Connect6,
}

impl Attachment {
    fn file_name(&self) -> String {
        match self {
            Self::Xdp { interface } => format!("xdp@{interface}"),
            Self::Tc { interface } => format!("tc@{interface}"),
            Self::Connect4 => "connect4".into(),
            Self::Connect6 => "connect6".into(),
        }
    }

    fn from_file_name(name: &str) -> Option<Self> {
        match name.split_once('@') {
            Some(("xdp", i)) => Some(Self::Xdp {
                interface: i.into(),
            }),
            Some(("tc", i)) => Some(Self::Tc {
                interface: i.into(),
            }),
            None if name == "connect4" => Some(Self::Connect4),
            None if name == "connect6" => Some(Self::Connect6),
            _ => None,
        }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// Paths under one pin root.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, attachment: &Attachment) -> PathBuf {
        self.links_dir().join(attachment.file_name())
    }

    /// Whether a guard has pinned its maps here (a guard is, or was, running).
    pub fn exists(&self) -> bool {
        self.map(portcullis_common::maps::PORTS).exists()
    }

    /// The attachments currently pinned, sorted.
    pub fn attachments(&self) -> Vec<Attachment> {
        let mut found: Vec<_> = std::fs::read_dir(self.links_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| Attachment::from_file_name(e.file_name().to_str()?))
            .collect();
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        for a in [
            Attachment::Xdp {
                interface: "eth0".into(),
            },
            Attachment::Tc {
                interface: "veth-db".into(),
            },
            Attachment::Connect4,
            Attachment::Connect6,
        ] {
            assert_eq!(Attachment::from_file_name(&a.file_name()), Some(a));
        }
        assert_eq!(Attachment::from_file_name("junk"), None);
    }
}

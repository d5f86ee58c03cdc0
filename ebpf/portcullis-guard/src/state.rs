//! The guard's live state, read and changed through the pinned maps: allowlist, protected
//! ports, local-mode tables, counters. Any process can do this while `run` is running or
//! after it died, which is how `allow add` works without restarting anything.

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::links::{FdLink, PinnedLink},
};
use portcullis_common::{DropStats, maps, stat};

use crate::{
    cidr::Cidr,
    events::{boot_ns_to_wall, rfc3339},
    netif::{addr_key, key_addr},
    pins::{Attachment, Pins},
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no guard state under {0}: start one with `portcullis-guard run`")]
    NotRunning(String),
    #[error("opening pinned map {name}: {source}")]
    Open {
        name: &'static str,
        source: MapError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
}

/// Open handles to the pinned maps under one pin root.
pub struct State {
    pins: Pins,
}

/// Drops counted for one source address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceDrops {
    pub source: IpAddr,
    pub packets: u64,
    pub syns: u64,
    pub last_seen: String,
}

/// One pinned attachment and the kernel ids behind it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachmentStatus {
    #[serde(flatten)]
    pub attachment: Attachment,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// Everything `status` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub attachments: Vec<AttachmentStatus>,
    pub ports: Vec<u16>,
    pub allowlist: Vec<Cidr>,
    pub local_allowed_cgroups: Vec<u64>,
    pub counters: BTreeMap<&'static str, u64>,
    pub drops: Vec<SourceDrops>,
}

impl State {
    pub fn open(pins: &Pins) -> Result<Self, StateError> {
        if !pins.exists() {
            return Err(StateError::NotRunning(pins.root().display().to_string()));
        }
        Ok(Self { pins: pins.clone() })
    }

    fn map(&self, name: &'static str) -> Result<Map, StateError> {
        let open = |source| StateError::Open { name, source };
        let data = MapData::from_pin(self.pins.map(name)).map_err(open)?;
        Map::from_map_data(data).map_err(open)
    }

    fn typed<T: TryFrom<Map, Error = MapError>>(
        &self,
        name: &'static str,
    ) -> Result<T, StateError> {
        T::try_from(self.map(name)?).map_err(|source| StateError::Map { name, source })
    }

    pub fn allow_add(&self, cidr: Cidr) -> Result<(), StateError> {
        let err = |name| move |source| StateError::Map { name, source };
        if let Some(key) = cidr.v4_key() {
            let mut trie: LpmTrie<MapData, [u8; 4], u8> = self.typed(maps::ALLOW_V4)?;
            trie.insert(&key, 1, 0).map_err(err(maps::ALLOW_V4))?;
        } else if let Some(key) = cidr.v6_key() {
            let mut trie: LpmTrie<MapData, [u8; 16], u8> = self.typed(maps::ALLOW_V6)?;
            trie.insert(&key, 1, 0).map_err(err(maps::ALLOW_V6))?;
        }
        Ok(())
    }

    /// Removes an entry; `Ok(false)` when it was not there.
    pub fn allow_remove(&self, cidr: Cidr) -> Result<bool, StateError> {
        let result = if let Some(key) = cidr.v4_key() {
            let mut trie: LpmTrie<MapData, [u8; 4], u8> = self.typed(maps::ALLOW_V4)?;
            trie.remove(&key)
        } else if let Some(key) = cidr.v6_key() {
            let mut trie: LpmTrie<MapData, [u8; 16], u8> = self.typed(maps::ALLOW_V6)?;
            trie.remove(&key)
        } else {
            return Ok(false);
        };
        match result {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(StateError::Map {
                name: maps::ALLOW_V4,
                source,
            }),
        }
    }

    pub fn allowlist(&self) -> Result<Vec<Cidr>, StateError> {
        let v4: LpmTrie<MapData, [u8; 4], u8> = self.typed(maps::ALLOW_V4)?;
        let v6: LpmTrie<MapData, [u8; 16], u8> = self.typed(maps::ALLOW_V6)?;
        let mut out: Vec<Cidr> = v4.keys().flatten().map(|k| Cidr::from_v4_key(&k)).collect();
        out.extend(v6.keys().flatten().map(|k| Cidr::from_v6_key(&k)));
        out.sort();
        Ok(out)
    }

    /// Makes the set of protected ports exactly `ports`.
    pub fn set_ports(&self, ports: &[u16]) -> Result<(), StateError> {
        let mut map: HashMap<MapData, u16, u8> = self.typed(maps::PORTS)?;
        sync_set(&mut map, ports.iter().copied(), maps::PORTS)
    }

    pub fn ports(&self) -> Result<Vec<u16>, StateError> {
        let map: HashMap<MapData, u16, u8> = self.typed(maps::PORTS)?;
        let mut out: Vec<u16> = map.keys().flatten().collect();
        out.sort();
        Ok(out)
    }

    /// Makes the set of cgroups allowed to connect locally exactly `ids`.
    pub fn set_allowed_cgroups(&self, ids: &[u64]) -> Result<(), StateError> {
        let mut map: HashMap<MapData, u64, u8> = self.typed(maps::CGROUP_ALLOW)?;
        sync_set(&mut map, ids.iter().copied(), maps::CGROUP_ALLOW)
    }

    pub fn allowed_cgroups(&self) -> Result<Vec<u64>, StateError> {
        let map: HashMap<MapData, u64, u8> = self.typed(maps::CGROUP_ALLOW)?;
        let mut out: Vec<u64> = map.keys().flatten().collect();
        out.sort();
        Ok(out)
    }

    /// Makes the host's own address set exactly `addrs`.
    pub fn set_local_addresses(&self, addrs: &[IpAddr]) -> Result<(), StateError> {
        let mut map: HashMap<MapData, [u8; 16], u8> = self.typed(maps::LOCAL_ADDRS)?;
        sync_set(
            &mut map,
            addrs.iter().map(|a| addr_key(*a)),
            maps::LOCAL_ADDRS,
        )
    }

    /// Drops per source, summed over CPUs, most packets first.
    pub fn drops(&self) -> Result<Vec<SourceDrops>, StateError> {
        let map: PerCpuHashMap<MapData, [u8; 16], DropStats> = self.typed(maps::DROPS)?;
        let mut out = Vec::new();
        for entry in map.iter() {
            // An entry evicted between listing and reading is simply skipped.
            let Ok((key, per_cpu)) = entry else { continue };
            let mut sum = DropStats::default();
            for s in per_cpu.iter() {
                sum.packets += s.packets;
                sum.syns += s.syns;
                sum.last_ns = sum.last_ns.max(s.last_ns);
            }
            out.push(SourceDrops {
                source: key_addr(key),
                packets: sum.packets,
                syns: sum.syns,
                last_seen: rfc3339(boot_ns_to_wall(sum.last_ns)),
            });
        }
        out.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.source.cmp(&b.source)));
        Ok(out)
    }

    /// The global counters, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, StateError> {
        let map: PerCpuArray<MapData, u64> = self.typed(maps::STATS)?;
        let mut out = BTreeMap::new();
        for (i, name) in stat::NAMES.iter().enumerate() {
            let values = map.get(&(i as u32), 0).map_err(|source| StateError::Map {
                name: maps::STATS,
                source,
            })?;
            out.insert(*name, values.iter().sum());
        }
        Ok(out)
    }

    pub fn status(&self) -> Result<Status, StateError> {
        let attachments = self
            .pins
            .attachments()
            .into_iter()
            .map(|attachment| {
                let info = PinnedLink::from_pin(self.pins.link(&attachment))
                    .ok()
                    .and_then(|l| FdLink::from(l).info().ok());
                AttachmentStatus {
                    attachment,
                    link_id: info.as_ref().map(|i| i.id()),
                    program_id: info.as_ref().map(|i| i.program_id()),
                }
            })
            .collect();
        Ok(Status {
            pin_dir: self.pins.root().display().to_string(),
            attachments,
            ports: self.ports()?,
            allowlist: self.allowlist()?,
            local_allowed_cgroups: self.allowed_cgroups()?,
            counters: self.counters()?,
            drops: self.drops()?,
        })
    }
}

/// Inserts `want` and removes every other key, leaving entries that stay untouched so the
/// kernel never sees a moment with the set half-built.
fn sync_set<K: aya::Pod + Ord>(
    map: &mut HashMap<MapData, K, u8>,
    want: impl Iterator<Item = K>,
    name: &'static str,
) -> Result<(), StateError> {
    let err = |source| StateError::Map { name, source };
    let want: std::collections::BTreeSet<K> = want.collect();
    for k in &want {
        map.insert(k, 1, 0).map_err(err)?;
    }
    let stale: Vec<K> = map.keys().flatten().filter(|k| !want.contains(k)).collect();
    for k in stale {
        match map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(err(source)),
        }
    }
    Ok(())
}

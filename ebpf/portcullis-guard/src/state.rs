//! The guard's live state, read and changed through the pinned maps: allowlist, protected
//! ports, local-mode tables, counters. Any process can do this while `run` is running or
//! after it died, which is how `allow add` works without restarting anything.
//!
//! Each allowlist entry remembers where it came from (the map's value, which the kernel does
//! not read): `run` owns the entries of its configuration and makes them exactly the
//! configured set at every start, so an entry taken out of the config is revoked; entries
//! added with `allow add` are left alone, and `status` names them.

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::links::{FdLink, PinnedLink},
};
use portcullis_common::{AllowValue, DropStats, bind, maps, origin, stat};

use crate::{
    allow::{AllowSpec, format_mac},
    cidr::Cidr,
    events::{boot_ns_to_wall, rfc3339},
    netif::{addr_key, key_addr},
    pins::{Attachment, Pins},
    preflight::{PreflightError, check_interface},
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
    #[error(
        "{cidr} is not in the allowlist (map {map}), so nothing was removed; entries are matched exactly as listed, prefix length included: see `portcullis-guard allow list`"
    )]
    NotAllowed { cidr: Cidr, map: &'static str },
    #[error("allowlist entry {spec}: {source}")]
    Interface {
        spec: String,
        source: PreflightError,
    },
}

/// Who put an entry in the allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `run`'s configuration (file or flags): reconciled at every start.
    Config,
    /// `allow add` on a running guard: kept across restarts until `allow remove`.
    Runtime,
}

impl Origin {
    const fn value(self) -> u8 {
        match self {
            Origin::Config => origin::CONFIG,
            Origin::Runtime => origin::RUNTIME,
        }
    }

    /// Anything but the run-time mark counts as configuration, so an unknown value is revoked
    /// by the next restart rather than kept (fail closed).
    fn from_value(v: u8) -> Self {
        if v == origin::RUNTIME {
            Origin::Runtime
        } else {
            Origin::Config
        }
    }
}

/// One allowlist entry as `status` and `allow list` show it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct AllowEntry {
    pub cidr: Cidr,
    pub origin: Origin,
    /// The source MAC address the entry binds, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The ingress interface the entry binds, if any (its name now, or `ifindex N` when no
    /// interface has that index any more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl AllowEntry {
    fn from_value(cidr: Cidr, v: &AllowValue) -> Self {
        AllowEntry {
            cidr,
            origin: Origin::from_value(v.origin),
            mac: (v.bind & bind::MAC != 0).then(|| format_mac(&v.mac)),
            interface: (v.bind & bind::IFINDEX != 0).then(|| interface_name(v.ifindex)),
        }
    }
}

fn interface_name(index: u32) -> String {
    let mut buf = [0u8; libc::IFNAMSIZ];
    // SAFETY: the buffer holds IFNAMSIZ bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return format!("ifindex {index}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What [`State::reconcile_allowlist`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    /// Configured entries that were not in the map before.
    pub added: Vec<Cidr>,
    /// Entries of an earlier configuration that this one no longer lists: revoked.
    pub revoked: Vec<Cidr>,
    /// Entries added at run time, left in place.
    pub runtime: Vec<Cidr>,
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
    pub allowlist: Vec<AllowEntry>,
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

    fn v4(&self) -> Result<LpmTrie<MapData, [u8; 4], AllowValue>, StateError> {
        self.typed(maps::ALLOW_V4)
    }

    fn v6(&self) -> Result<LpmTrie<MapData, [u8; 16], AllowValue>, StateError> {
        self.typed(maps::ALLOW_V6)
    }

    /// Adds an entry, or replaces the one for the same prefix (binding and origin included).
    pub fn allow_add(&self, spec: &AllowSpec, origin: Origin) -> Result<(), StateError> {
        let mut value = AllowValue {
            origin: origin.value(),
            ..AllowValue::default()
        };
        if let Some(mac) = spec.mac {
            value.bind |= bind::MAC;
            value.mac = mac;
        }
        if let Some(name) = &spec.interface {
            value.bind |= bind::IFINDEX;
            value.ifindex = check_interface(name).map_err(|source| StateError::Interface {
                spec: spec.to_string(),
                source,
            })?;
        }
        let err = |name| move |source| StateError::Map { name, source };
        if let Some(key) = spec.cidr.v4_key() {
            self.v4()?
                .insert(&key, value, 0)
                .map_err(err(maps::ALLOW_V4))?;
        } else if let Some(key) = spec.cidr.v6_key() {
            self.v6()?
                .insert(&key, value, 0)
                .map_err(err(maps::ALLOW_V6))?;
        }
        Ok(())
    }

    /// Removes an entry; [`StateError::NotAllowed`] when it was not there.
    pub fn allow_remove(&self, cidr: Cidr) -> Result<(), StateError> {
        let (result, map) = match (cidr.v4_key(), cidr.v6_key()) {
            (Some(key), _) => (self.v4()?.remove(&key), maps::ALLOW_V4),
            (None, Some(key)) => (self.v6()?.remove(&key), maps::ALLOW_V6),
            // A Cidr is one or the other; nothing to remove otherwise.
            (None, None) => {
                return Err(StateError::NotAllowed {
                    cidr,
                    map: maps::ALLOW_V4,
                });
            }
        };
        match result {
            Ok(()) => Ok(()),
            // bpf_map_delete_elem says ENOENT, which aya reports as a syscall error rather
            // than KeyNotFound: both mean the same to the operator.
            Err(MapError::KeyNotFound) => Err(StateError::NotAllowed { cidr, map }),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Err(StateError::NotAllowed { cidr, map })
            }
            Err(source) => Err(StateError::Map { name: map, source }),
        }
    }

    pub fn allowlist(&self) -> Result<Vec<AllowEntry>, StateError> {
        let v4 = self.v4()?;
        let v6 = self.v6()?;
        let mut out = Vec::new();
        for (key, value) in v4.iter().flatten() {
            out.push(AllowEntry::from_value(Cidr::from_v4_key(&key), &value));
        }
        for (key, value) in v6.iter().flatten() {
            out.push(AllowEntry::from_value(Cidr::from_v6_key(&key), &value));
        }
        out.sort();
        Ok(out)
    }

    /// Makes the configuration's part of the allowlist exactly `want`: every entry in it is
    /// present (marked as configured), every configured entry not in it is removed, and
    /// entries added at run time stay. Additions go first, so an entry that stays is never
    /// missing for a moment.
    pub fn reconcile_allowlist(&self, want: &[AllowSpec]) -> Result<Reconciled, StateError> {
        let before = self.allowlist()?;
        let mut report = Reconciled::default();
        for spec in want {
            if !before.iter().any(|e| e.cidr == spec.cidr) {
                report.added.push(spec.cidr);
            }
            self.allow_add(spec, Origin::Config)?;
        }
        for e in &before {
            if want.iter().any(|w| w.cidr == e.cidr) {
                continue;
            }
            match e.origin {
                Origin::Runtime => report.runtime.push(e.cidr),
                Origin::Config => match self.allow_remove(e.cidr) {
                    // Gone meanwhile (a concurrent `allow remove`): revoked all the same.
                    Ok(()) | Err(StateError::NotAllowed { .. }) => report.revoked.push(e.cidr),
                    Err(other) => return Err(other),
                },
            }
        }
        Ok(report)
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

//! Attaching per a [`Config`], adopting what an earlier loader pinned, and detaching.
//!
//! `attach` is idempotent: run it twice, or after a crash, and every attachment whose link is
//! still pinned is adopted as is, never attached a second time. The maps are reused through
//! their pins, so counters, events and runtime `allow add`s survive too.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::MapData,
    pin::PinError,
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, Xdp,
        XdpMode,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use portcullis_common::{AllowValue, globals, maps, progs};

use crate::{
    OBJECT,
    cgroup::{self, CgroupError},
    config::{Config, ConfigError, Mode},
    netif::{self, Framing, NetifError},
    pins::{Attachment, Pins},
    preflight::{self, PreflightError},
    state::{Reconciled, State, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Netif(#[from] NetifError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "this portcullis-guard was built with AYA_BUILD_SKIP=1 and holds no eBPF object; rebuild it with the BPF toolchain (`cargo xtask setup`)"
    )]
    NoObject,
    // aya's errors are large; boxed so every Result here stays small.
    #[error("loading the eBPF object: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<ProgramError>,
    },
    #[error(
        "XDP does not attach to {interface} (native: {native}; generic: {generic}); use TC mode instead (`--mode tc`, or mode = \"tc\")"
    )]
    XdpUnsupported {
        interface: String,
        native: Box<ProgramError>,
        generic: Box<ProgramError>,
    },
    #[error(
        "TC attach on {interface} did not give a tcx link (kernel 6.6 or later is needed to pin it): {source}"
    )]
    TcxUnsupported {
        interface: String,
        source: Box<LinkError>,
    },
    #[error("link {what}: {source}")]
    Link {
        what: String,
        source: Box<LinkError>,
    },
    #[error("pinning {what}: {source}")]
    Pin { what: String, source: Box<PinError> },
    #[error(
        "the state pinned under {root} was written by an older portcullis-guard (map {map} holds {found}-byte entries, this one needs {want}); save its allowlist (`portcullis-guard allow list`), then `portcullis-guard detach` and `run` again (the database is unguarded in between)"
    )]
    OldPins {
        root: String,
        map: &'static str,
        found: u32,
        want: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What one `attach` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Already pinned by an earlier loader, kept as is.
    pub adopted: Vec<Attachment>,
    /// Attached now.
    pub attached: Vec<Attachment>,
    /// Unpinned because the config no longer asks for them (other mode, local mode off).
    pub removed: Vec<Attachment>,
    /// For XDP attachments made now: "native" or "generic".
    pub xdp_modes: Vec<(String, &'static str)>,
    /// Each configured interface's framing, i.e. which program variant guards it.
    pub framings: Vec<(String, Framing)>,
    /// How the pinned allowlist was brought in line with the configuration.
    pub allowlist: Reconciled,
    /// Ports the pinned state protected before this run and no longer does.
    pub ports_removed: Vec<u16>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoaderError + '_ {
    move |source| LoaderError::Io {
        path: path.into(),
        source,
    }
}

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> LoaderError {
    move |source| LoaderError::Program {
        name,
        source: Box::new(source),
    }
}

/// Runs every check `run` needs, without touching the kernel.
pub fn preflight(cfg: &Config) -> Result<(), LoaderError> {
    cfg.validate()?;
    preflight::check_root()?;
    preflight::check_btf()?;
    preflight::check_bpffs(&cfg.pin_dir, cfg.mount_bpffs)?;
    for iface in &cfg.interfaces {
        preflight::check_interface(iface)?;
        // Before anything is attached: an interface whose packets the parser cannot read
        // would be guarded in name only.
        netif::framing(iface)?;
    }
    if OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    Ok(())
}

/// Loads, configures and attaches per `cfg`, adopting whatever is already pinned.
pub fn attach(cfg: &Config) -> Result<Report, LoaderError> {
    preflight(cfg)?;
    let pins = Pins::new(&cfg.pin_dir);
    for dir in [pins.maps_dir(), pins.progs_dir(), pins.links_dir()] {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    check_pinned_layout(&pins)?;
    let maps_dir = pins.maps_dir();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .override_global(globals::EVENT_RATE, &cfg.event_rate, true)
        .override_global(globals::EVENT_BURST, &cfg.event_burst, true)
        .load(OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))?;

    // Maps first: a program attached below must see the configured state from its first packet.
    let state = State::open(&pins)?;
    let before = state.ports()?;
    state.set_ports(&cfg.ports)?;
    let ports_removed: Vec<u16> = before
        .into_iter()
        .filter(|p| !cfg.ports.contains(p))
        .collect();
    let allowlist = state.reconcile_allowlist(&cfg.allow)?;
    let local_root = match &cfg.local.cgroup {
        Some(p) => p.clone(),
        None => cgroup::cgroup2_root()?,
    };
    if cfg.local.enabled {
        let ids = cfg
            .local
            .allow_cgroups
            .iter()
            .map(|p| cgroup::cgroup_id(p))
            .collect::<Result<Vec<_>, _>>()?;
        state.set_allowed_cgroups(&ids)?;
        state.set_local_addresses(&netif::local_addresses()?)?;
    }

    let mut report = Report {
        allowlist,
        ports_removed,
        ..Report::default()
    };
    for iface in &cfg.interfaces {
        let framing = netif::framing(iface)?;
        report.framings.push((iface.clone(), framing));
        let (xdp_name, tc_name) = match framing {
            Framing::Ethernet => (progs::XDP, progs::TC),
            Framing::RawIp => (progs::XDP_IP, progs::TC_IP),
        };
        let (want, other) = match cfg.mode {
            Mode::Xdp => (
                Attachment::Xdp {
                    interface: iface.clone(),
                },
                Attachment::Tc {
                    interface: iface.clone(),
                },
            ),
            Mode::Tc => (
                Attachment::Tc {
                    interface: iface.clone(),
                },
                Attachment::Xdp {
                    interface: iface.clone(),
                },
            ),
        };
        if is_attached(&pins, &want) {
            report.adopted.push(want);
        } else {
            let link = match cfg.mode {
                Mode::Xdp => {
                    let prog: &mut Xdp = ebpf
                        .program_mut(xdp_name)
                        .ok_or(ProgramError::NotLoaded)
                        .and_then(|p| p.try_into())
                        .map_err(program_err(xdp_name))?;
                    load_once(prog.fd().is_ok(), || prog.load(), xdp_name)?;
                    let (id, how) = match prog.attach(iface, XdpMode::Driver) {
                        Ok(id) => (id, "native"),
                        Err(native) => match prog.attach(iface, XdpMode::Skb) {
                            Ok(id) => (id, "generic"),
                            Err(generic) => {
                                return Err(LoaderError::XdpUnsupported {
                                    interface: iface.clone(),
                                    native: Box::new(native),
                                    generic: Box::new(generic),
                                });
                            }
                        },
                    };
                    report.xdp_modes.push((iface.clone(), how));
                    let link = prog.take_link(id).map_err(program_err(xdp_name))?;
                    repin_program(&pins, xdp_name, |p| prog.pin(p))?;
                    FdLink::try_from(link).map_err(|source| LoaderError::Link {
                        what: format!("xdp@{iface}"),
                        source: Box::new(source),
                    })?
                }
                Mode::Tc => {
                    let prog: &mut SchedClassifier = ebpf
                        .program_mut(tc_name)
                        .ok_or(ProgramError::NotLoaded)
                        .and_then(|p| p.try_into())
                        .map_err(program_err(tc_name))?;
                    load_once(prog.fd().is_ok(), || prog.load(), tc_name)?;
                    let id = prog
                        .attach(iface, TcAttachType::Ingress)
                        .map_err(program_err(tc_name))?;
                    let link = prog.take_link(id).map_err(program_err(tc_name))?;
                    repin_program(&pins, tc_name, |p| prog.pin(p))?;
                    FdLink::try_from(link).map_err(|source| LoaderError::TcxUnsupported {
                        interface: iface.clone(),
                        source: Box::new(source),
                    })?
                }
            };
            pin_link(&pins, &want, link)?;
            report.attached.push(want);
        }
        // Switching modes: the new hook is in place before the old one goes, so no gap.
        if pins.link(&other).exists() {
            unpin_link(&pins, &other)?;
            report.removed.push(other);
        }
    }

    for (att, name) in [
        (Attachment::Connect4, progs::CONNECT4),
        (Attachment::Connect6, progs::CONNECT6),
    ] {
        if !cfg.local.enabled {
            if pins.link(&att).exists() {
                unpin_link(&pins, &att)?;
                report.removed.push(att);
            }
            continue;
        }
        if is_attached(&pins, &att) {
            report.adopted.push(att);
            continue;
        }
        let cg = fs::File::open(&local_root).map_err(io(&local_root))?;
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(ProgramError::NotLoaded)
            .and_then(|p| p.try_into())
            .map_err(program_err(name))?;
        load_once(prog.fd().is_ok(), || prog.load(), name)?;
        // A cgroup bpf_link always coexists with other programs on the cgroup; the kernel
        // rejects any attach flag on link creation, so the mode must be the flagless one.
        let id = prog
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(program_err(name))?;
        let link = prog.take_link(id).map_err(program_err(name))?;
        repin_program(&pins, name, |p| prog.pin(p))?;
        let link = FdLink::try_from(link).map_err(|source| LoaderError::Link {
            what: att.to_string(),
            source: Box::new(source),
        })?;
        pin_link(&pins, &att, link)?;
        report.attached.push(att);
    }
    Ok(report)
}

/// aya adopts a pinned map without comparing its layout with the object's, so a map left by
/// a guard whose allowlist values were smaller would only fail in the verifier, with a
/// message nobody can act on. Say what it is instead.
fn check_pinned_layout(pins: &Pins) -> Result<(), LoaderError> {
    for map in [maps::ALLOW_V4, maps::ALLOW_V6] {
        let path = pins.map(map);
        let Ok(info) = MapData::from_pin(&path).and_then(|d| d.info()) else {
            continue;
        };
        let want = std::mem::size_of::<AllowValue>();
        if info.value_size() as usize != want {
            return Err(LoaderError::OldPins {
                root: pins.root().display().to_string(),
                map,
                found: info.value_size(),
                want,
            });
        }
    }
    Ok(())
}

fn load_once(
    loaded: bool,
    load: impl FnOnce() -> Result<(), ProgramError>,
    name: &'static str,
) -> Result<(), LoaderError> {
    if loaded {
        return Ok(());
    }
    load().map_err(program_err(name))
}

/// A pin that opens is a live link; a stale file (e.g. copied bpffs) is not.
fn is_attached(pins: &Pins, att: &Attachment) -> bool {
    PinnedLink::from_pin(pins.link(att)).is_ok()
}

fn pin_link(pins: &Pins, att: &Attachment, link: FdLink) -> Result<(), LoaderError> {
    // The returned handle is dropped here on purpose: the pin alone keeps the link, so
    // `detach` can end it without asking this process.
    link.pin(pins.link(att))
        .map(drop)
        .map_err(|source| LoaderError::Pin {
            what: att.to_string(),
            source: Box::new(source),
        })
}

fn repin_program(
    pins: &Pins,
    name: &'static str,
    pin: impl FnOnce(&Path) -> Result<(), PinError>,
) -> Result<(), LoaderError> {
    let path = pins.prog(name);
    if path.exists() {
        fs::remove_file(&path).map_err(io(&path))?;
    }
    pin(&path).map_err(|source| LoaderError::Pin {
        what: name.to_string(),
        source: Box::new(source),
    })
}

/// Ends an attachment even if some process still holds the link open, then removes its pin.
fn unpin_link(pins: &Pins, att: &Attachment) -> Result<(), LoaderError> {
    let path = pins.link(att);
    force_detach(&path);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// `BPF_LINK_DETACH` on the pinned link: without it a link stays attached for as long as any
/// process (a hung old loader) keeps a descriptor. aya exposes neither this call nor a link's
/// descriptor, hence the two raw syscalls. Best effort: the unpin that follows is the
/// fallback.
fn force_detach(pin: &Path) {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let Ok(path) = std::ffi::CString::new(pin.as_os_str().as_bytes()) else {
        return;
    };
    // `union bpf_attr` as BPF_OBJ_GET reads it: pathname, bpf_fd, file_flags.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `get` and the path it points to outlive the call; its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: the kernel just returned this descriptor to us; OwnedFd closes it once.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let detach: [u32; 2] = [fd.as_raw_fd() as u32, 0];
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            detach.as_ptr(),
            std::mem::size_of_val(&detach) as u32,
        );
    }
}

/// Removes every attachment and all pinned state under `pins`. Returns what was attached.
pub fn detach(pins: &Pins) -> Result<Vec<Attachment>, LoaderError> {
    preflight::check_root()?;
    if !pins.root().exists() {
        return Err(StateError::NotRunning(pins.root().display().to_string()).into());
    }
    let attachments = pins.attachments();
    for att in &attachments {
        unpin_link(pins, att)?;
    }
    // With the links gone the programs only hold on through their pins and the maps through
    // the programs: removing the tree frees everything.
    let root = pins.root();
    fs::remove_dir_all(root).map_err(io(root))?;
    Ok(attachments)
}

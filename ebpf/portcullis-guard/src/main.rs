//! `portcullis-guard`: the command line. Everything real is in the library; this file maps
//! flags onto a config and errors onto exit codes.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_guard::{
    allow::AllowSpec,
    audit::Audit,
    cidr::Cidr,
    config::{Config, Mode},
    discover,
    events::{FollowEnd, follow},
    loader, netif,
    pins::{DEFAULT_ROOT, Pins},
    preflight,
    state::{Origin, State},
};

#[derive(Parser)]
#[command(
    name = "portcullis-guard",
    about = "Drop, in the kernel, every connection to PostgreSQL that does not come from a gateway"
)]
struct Cli {
    /// bpffs directory holding the guard's pinned programs, links and maps.
    #[arg(long, global = true, env = "PORTCULLIS_GUARD_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach (or adopt what is pinned), then stream bypass events as JSON lines on stdout.
    Run(RunArgs),
    /// Attachments, allowlist, ports and counters per source.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Change the allowlist of a running (or crashed) guard.
    Allow {
        #[command(subcommand)]
        cmd: AllowCmd,
    },
    /// Remove every attachment and all pinned state; a running `run` then exits.
    Detach,
}

#[derive(Subcommand)]
enum AllowCmd {
    /// Allow a source: `CIDR[,mac=MAC][,interface=NAME]`.
    Add {
        spec: AllowSpec,
    },
    /// Revoke the entry for exactly this prefix (whatever it binds).
    Remove {
        cidr: Cidr,
    },
    List,
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config; flags below add to or override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Interface to guard (repeatable).
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Extra protected TCP port (repeatable); every port a `postgres` process listens on
    /// here is protected anyway.
    #[arg(long = "port", short = 'p')]
    ports: Vec<u16>,
    /// Protect only the ports listed, not those PostgreSQL is found listening on.
    #[arg(long)]
    no_discover_ports: bool,
    /// Allowed source, i.e. a gateway: `CIDR[,mac=MAC][,interface=NAME]` (repeatable).
    #[arg(long = "allow", short = 'a')]
    allow: Vec<AllowSpec>,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Refuse local connect() to the protected ports from cgroups not allowed.
    #[arg(long)]
    local: bool,
    /// Cgroup the local hooks attach to (default: the cgroup v2 root).
    #[arg(long)]
    local_cgroup: Option<PathBuf>,
    /// Cgroup whose processes may connect locally (repeatable).
    #[arg(long = "local-allow-cgroup")]
    local_allow_cgroups: Vec<PathBuf>,
    /// Mount bpffs on the pin directory's parent if it is not mounted.
    #[arg(long)]
    mount_bpffs: bool,
    /// Attach, print what was done, and exit without streaming events.
    #[arg(long)]
    no_follow: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Xdp,
    Tc,
}

fn pins(cli_dir: &Option<PathBuf>) -> Pins {
    Pins::new(cli_dir.clone().unwrap_or_else(|| DEFAULT_ROOT.into()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => run(cli.pin_dir, args),
        Cmd::Status { json } => {
            // bpffs pins are root-only: say so rather than fail on the first map.
            preflight::check_root()?;
            let status = State::open(&pins(&cli.pin_dir))?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Cmd::Allow { cmd } => {
            preflight::check_root()?;
            let state = State::open(&pins(&cli.pin_dir))?;
            match cmd {
                AllowCmd::Add { spec } => {
                    state.allow_add(&spec, Origin::Runtime)?;
                    println!(
                        "allowed {spec} (added at run time: a restart keeps it; `allow remove` revokes it)"
                    );
                }
                AllowCmd::Remove { cidr } => {
                    state.allow_remove(cidr)?;
                    println!("removed {cidr}");
                }
                AllowCmd::List => {
                    for e in state.allowlist()? {
                        println!("{}", allow_line(&e));
                    }
                }
            }
            Ok(())
        }
        Cmd::Detach => {
            let removed = loader::detach(&pins(&cli.pin_dir))?;
            let names: Vec<String> = removed.iter().map(ToString::to_string).collect();
            println!("detached: {}", names.join(", "));
            Ok(())
        }
    }
}

fn run(pin_dir: Option<PathBuf>, args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = pin_dir {
        cfg.pin_dir = dir;
    }
    cfg.interfaces.extend(args.interfaces);
    cfg.ports.extend(args.ports);
    cfg.discover_ports &= !args.no_discover_ports;
    cfg.allow.extend(args.allow);
    if let Some(mode) = args.mode {
        cfg.mode = match mode {
            ModeArg::Xdp => Mode::Xdp,
            ModeArg::Tc => Mode::Tc,
        };
    }
    cfg.local.enabled |= args.local;
    if args.local_cgroup.is_some() {
        cfg.local.cgroup = args.local_cgroup;
    }
    cfg.local.allow_cgroups.extend(args.local_allow_cgroups);
    cfg.mount_bpffs |= args.mount_bpffs;
    let listeners = discover::postgres_listeners()?;
    let discovered: Vec<u16> = {
        let mut p: Vec<u16> = listeners.iter().map(|(_, p)| *p).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let unguarded =
        discover::unguarded_interfaces(&listeners, &netif::interface_addresses()?, &cfg.interfaces);
    if !unguarded.is_empty() {
        eprintln!(
            "portcullis-guard: WARNING: PostgreSQL is reachable through interface(s) {} (they carry an address it listens on) which this guard does not watch: add them with --interface, or narrow listen_addresses",
            unguarded.join(", ")
        );
    }
    let port_sources = cfg.resolve_ports(&discovered);
    if port_sources.fallback {
        eprintln!(
            "portcullis-guard: WARNING: no postgres process listens in this network namespace and no port is configured: protecting {} only; start the guard after PostgreSQL, or list its ports",
            portcullis_guard::config::DEFAULT_PG_PORT
        );
    }
    cfg.validate()?;

    // Before attaching: a log that cannot be opened stops the guard before it touches the
    // kernel.
    let audit = cfg.audit.as_ref().map(Audit::open).transpose()?;
    let audit_line = audit.as_ref().map(
        |a| serde_json::json!({ "dir": a.dir(), "origin": a.origin(), "signed": a.is_signed() }),
    );
    let report = loader::attach(&cfg)?;
    let audit = audit.map(|a| Audit::start(a, &cfg, &report)).transpose()?;
    let started = serde_json::json!({
        "event": "guard_started",
        "pin_dir": cfg.pin_dir,
        "mode": cfg.mode,
        "ports": cfg.ports,
        "port_sources": port_sources,
        "unguarded_interfaces": unguarded,
        "ports_no_longer_protected": report.ports_removed,
        "attached": report.attached,
        "adopted": report.adopted,
        "removed": report.removed,
        "xdp_modes": report.xdp_modes,
        "framings": report.framings,
        "allowlist": report.allowlist,
        "audit": audit_line,
    });
    println!("{started}");
    // On stderr as well as in the start line: narrower coverage, or a shrinking or drifting
    // allowlist, is what an operator must not miss.
    if !report.ports_removed.is_empty() {
        let ports: Vec<String> = report.ports_removed.iter().map(u16::to_string).collect();
        eprintln!(
            "portcullis-guard: WARNING: port(s) {} protected by the previous run are NOT protected any more: this run neither found PostgreSQL listening on them nor was told to protect them; add them with --port (or `ports`) if PostgreSQL will listen there again",
            ports.join(", ")
        );
    }
    for c in &report.allowlist.revoked {
        eprintln!("portcullis-guard: revoked {c}: no longer in the configuration");
    }
    for c in &report.allowlist.runtime {
        eprintln!(
            "portcullis-guard: kept {c}, added at run time with `allow add` and not in the configuration (`allow remove {c}` revokes it)"
        );
    }
    let pins = Pins::new(&cfg.pin_dir);
    if args.no_follow {
        stop_audit(audit, "no_follow", &pins)?;
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut stdout = std::io::stdout().lock();
    let end = runtime.block_on(follow(&pins, &mut stdout, |e| {
        if let Some(a) = &audit {
            a.event(e);
        }
    }));
    let end = match end {
        Ok(end) => end,
        Err(e) => {
            stop_audit(audit, &format!("error: {e}"), &pins)?;
            return Err(e.into());
        }
    };
    let (why, reason) = match end {
        FollowEnd::Detached => ("detached", "detached"),
        FollowEnd::Signalled => ("signalled; enforcement stays pinned", "signalled"),
    };
    let summary = stop_audit(audit, reason, &pins)?;
    println!(
        "{}",
        serde_json::json!({ "event": "guard_stopped", "why": why, "audit": summary })
    );
    Ok(())
}

/// Closes the audit log: open windows, `guard_stop` with the kernel's counters (when the
/// pins are still there), a final checkpoint.
fn stop_audit(
    audit: Option<Audit>,
    reason: &str,
    pins: &Pins,
) -> anyhow::Result<Option<portcullis_guard::audit::Summary>> {
    let Some(audit) = audit else {
        return Ok(None);
    };
    let kernel = State::open(pins).and_then(|s| s.counters()).ok();
    let summary = audit.stop(reason, kernel)?;
    if summary.unwritten > 0 {
        eprintln!(
            "portcullis-guard: audit log: {} records could not be written before exit",
            summary.unwritten
        );
    }
    Ok(Some(summary))
}

fn print_status(s: &portcullis_guard::state::Status) {
    println!("pin dir:   {}", s.pin_dir);
    println!("attached:");
    for a in &s.attachments {
        let ids = match (a.link_id, a.program_id) {
            (Some(l), Some(p)) => format!("link {l}, program {p}"),
            _ => "stale pin".into(),
        };
        println!("  {:<24} {ids}", a.attachment.to_string());
    }
    let ports: Vec<String> = s.ports.iter().map(ToString::to_string).collect();
    println!("ports:     {}", ports.join(", "));
    println!("allowlist:");
    for e in &s.allowlist {
        println!("  {}", allow_line(e));
    }
    if !s.local_allowed_cgroups.is_empty() {
        println!("local cgroups allowed: {:?}", s.local_allowed_cgroups);
    }
    println!("counters:");
    for (k, v) in &s.counters {
        println!("  {k:<22} {v}");
    }
    println!("drops by source:");
    for d in &s.drops {
        println!(
            "  {:<40} {:>10} packets {:>8} SYNs  last {}",
            d.source.to_string(),
            d.packets,
            d.syns,
            d.last_seen
        );
    }
}

fn allow_line(e: &portcullis_guard::state::AllowEntry) -> String {
    let mut what = e.cidr.to_string();
    if let Some(mac) = &e.mac {
        what.push_str(&format!(",mac={mac}"));
    }
    if let Some(i) = &e.interface {
        what.push_str(&format!(",interface={i}"));
    }
    match e.origin {
        Origin::Config => what,
        Origin::Runtime => format!("{what:<43} added at run time"),
    }
}

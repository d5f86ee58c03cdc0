//! Ports and network namespaces for tests that need a listener of their own or a second host.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no free TCP port: {0}")]
    NoPort(std::io::Error),
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
}

/// A TCP port free on loopback right now. The kernel picks it; between this call and the
/// caller's bind another process could take it, which in practice only matters under heavy
/// parallel churn, so callers retry start-up rather than this function reserving anything.
pub fn free_port() -> Result<u16, NetError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(NetError::NoPort)?;
    Ok(l.local_addr().map_err(NetError::NoPort)?.port())
}

/// A throwaway network namespace joined to the host by a veth pair: the host side gets
/// `host_addr`, the namespace side `ns_addr` (both /30 in 10.x so nothing routes outside
/// this machine). Deleted on drop, which also removes the veth pair.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
}

impl NetNs {
    /// Creates namespace `pc<tag>` with a /30 link; `subnet` picks `10.201.<subnet>.0/30` so
    /// tests running in parallel can use distinct ones. Needs root (CI is root).
    pub fn create(tag: &str, subnet: u8) -> Result<NetNs, NetError> {
        let name = format!("pc{tag}");
        // Interface names are limited to 15 bytes.
        let host_if: String = format!("pch{tag}").chars().take(15).collect();
        let ns_if: String = format!("pcn{tag}").chars().take(15).collect();
        let host_addr = Ipv4Addr::new(10, 201, subnet, 1);
        let ns_addr = Ipv4Addr::new(10, 201, subnet, 2);
        // A leftover from a crashed run would make `add` fail; removing it first keeps
        // re-runs idempotent.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_addr,
            ns_addr,
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ns.exec_ip(&["addr", "add", &format!("{ns_addr}/30"), "dev", &ns_if])?;
        ns.exec_ip(&["link", "set", &ns_if, "up"])?;
        ns.exec_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec_ip(&self, args: &[&str]) -> Result<(), NetError> {
        let mut full = vec!["netns", "exec", &self.name, "ip"];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip netns exec NAME` followed by `program`: the prefix to run a command inside.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Command {
            cmd: format!("ip {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            cmd: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

//! `weft-proxy init`: the traffic capture rules of a meshed pod.
//!
//! Run once as an init container with NET_ADMIN in the pod's network namespace, it
//! writes nat-table rules that send the pod's TCP through the proxy:
//!
//! - inbound: every TCP connection to the pod goes to the proxy's inbound port, except
//!   the proxy's admin port (probes, metrics) and the skipped inbound ports;
//! - outbound: every TCP connection the pod opens goes to the proxy's outbound port,
//!   except the proxy's own (by its user id: this is how the proxy's connections escape
//!   capture), loopback, skipped outbound ports and skipped subnets.
//!
//! The rules live in chains of their own (`WEFT_*`), which `iptables-restore --noflush`
//! replaces whole on every run; the jumps into them are added only when missing. So a
//! rerun gives the same rules, never duplicates. [`plan`] is the pure part: it turns the
//! current `iptables-save -t nat` output and the configuration into the restore script.
//!
//! The rules are IPv4 only. A pod with an IPv6 address other than loopback and
//! link-local (a dual-stack or IPv6 cluster) would send and receive IPv6 traffic past
//! the proxy, so `init` refuses it, loudly ([`InitError::Ipv6`]): its init container
//! fails with the addresses named, and the pod does not start. Nothing is written then.

use std::fmt::Write as _;

/// The chains Weft owns.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
pub const INBOUND_REDIRECT_CHAIN: &str = "WEFT_INBOUND_REDIRECT";
pub const OUTBOUND_CHAIN: &str = "WEFT_OUTBOUND";
pub const OUTBOUND_REDIRECT_CHAIN: &str = "WEFT_OUTBOUND_REDIRECT";

/// What the capture rules depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    /// IPv4 CIDRs, already validated.
    pub skip_outbound_subnets: Vec<String>,
}

impl Capture {
    /// The capture a proxy configuration asks for.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            proxy_uid: config.uid,
            inbound_port: config.inbound_addr.port(),
            outbound_port: config.outbound_addr.port(),
            admin_port: config.admin_addr.port(),
            skip_inbound_ports: config.skip_inbound_ports.clone(),
            skip_outbound_ports: config.skip_outbound_ports.clone(),
            skip_outbound_subnets: config.skip_outbound_subnets.clone(),
        }
    }
}

/// Why the rules could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed {
        command: &'static str,
        stderr: String,
    },
    #[error(
        "the pod has IPv6 addresses ({}), and Weft's capture rules are IPv4 only: its IPv6 \
         traffic would bypass the proxy, so it is not meshed (annotate it weft.dev/inject: \
         disabled to run it without the mesh)",
        .0.join(", ")
    )]
    Ipv6(Vec<String>),
}

/// Where the kernel lists the network namespace's IPv6 addresses (absent when IPv6 is
/// off).
const IF_INET6: &str = "/proc/net/if_inet6";

/// The addresses in `if_inet6` (the text of `/proc/net/if_inet6`) that traffic could
/// reach the pod on or leave from past IPv4 capture: every scope but host (loopback,
/// `0x10`) and link (`0x20`), so global and unique-local ones.
pub fn uncaptured_ipv6(if_inet6: &str) -> Vec<String> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, scope) = (fields.first()?, fields.get(3)?);
            let scope = u8::from_str_radix(scope, 16).ok()?;
            if scope == 0x10 || scope == 0x20 {
                return None;
            }
            let bits = u128::from_str_radix(address, 16).ok()?;
            Some(std::net::Ipv6Addr::from(bits).to_string())
        })
        .collect()
}

/// Writes the capture rules into the current network namespace and returns the script
/// it applied.
pub fn apply(capture: &Capture) -> Result<String, InitError> {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let ipv6 = uncaptured_ipv6(&std::fs::read_to_string(IF_INET6).unwrap_or_default());
    if !ipv6.is_empty() {
        return Err(InitError::Ipv6(ipv6));
    }
    let save = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .map_err(|source| InitError::Spawn {
            command: "iptables-save",
            source,
        })?;
    if !save.status.success() {
        return Err(InitError::Failed {
            command: "iptables-save",
            stderr: String::from_utf8_lossy(&save.stderr).into_owned(),
        });
    }
    let script = plan(capture, &String::from_utf8_lossy(&save.stdout));
    let mut restore = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            command: "iptables-restore",
            source,
        })?;
    if let Some(mut stdin) = restore.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| InitError::Spawn {
                command: "iptables-restore",
                source,
            })?;
    }
    let done = restore
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            command: "iptables-restore",
            source,
        })?;
    if !done.status.success() {
        return Err(InitError::Failed {
            command: "iptables-restore",
            stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
        });
    }
    Ok(script)
}

/// The `iptables-restore --noflush` script that makes the nat table capture as
/// `capture` says, given the table's current `iptables-save` text.
pub fn plan(capture: &Capture, current_nat: &str) -> String {
    let mut out = String::from("*nat\n");
    for chain in [
        INBOUND_CHAIN,
        INBOUND_REDIRECT_CHAIN,
        OUTBOUND_CHAIN,
        OUTBOUND_REDIRECT_CHAIN,
    ] {
        // With --noflush, declaring a chain empties it: the rules below replace the old.
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let tag = "-m comment --comment weft";

    let _ = writeln!(
        out,
        "-A {INBOUND_REDIRECT_CHAIN} -p tcp {tag} -j REDIRECT --to-ports {}",
        capture.inbound_port
    );
    let mut inbound_skips = vec![capture.admin_port];
    inbound_skips.extend(&capture.skip_inbound_ports);
    for ports in port_lists(&inbound_skips) {
        let _ = writeln!(
            out,
            "-A {INBOUND_CHAIN} -p tcp -m multiport --dports {ports} {tag} -j RETURN"
        );
    }
    let _ = writeln!(
        out,
        "-A {INBOUND_CHAIN} -p tcp {tag} -j {INBOUND_REDIRECT_CHAIN}"
    );

    let _ = writeln!(
        out,
        "-A {OUTBOUND_REDIRECT_CHAIN} -p tcp {tag} -j REDIRECT --to-ports {}",
        capture.outbound_port
    );
    // The proxy's own connections to the application from the passthrough address
    // (the probes it performs for the kubelet) go straight to the application.
    let _ = writeln!(
        out,
        "-A {OUTBOUND_CHAIN} -o lo -s {}/32 -p tcp -m owner --uid-owner {} {tag} -j RETURN",
        weft_sidecar::PASSTHROUGH_SOURCE,
        capture.proxy_uid
    );
    // The proxy connecting to its own pod's address (the pod is an endpoint of a
    // Service it calls) goes out on `lo` without passing PREROUTING: send it to the
    // inbound port, so its mTLS is terminated and its policy applied there too.
    let _ = writeln!(
        out,
        "-A {OUTBOUND_CHAIN} -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner {} {tag} -j {INBOUND_REDIRECT_CHAIN}",
        capture.proxy_uid
    );
    let _ = writeln!(
        out,
        "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} {tag} -j RETURN",
        capture.proxy_uid
    );
    let _ = writeln!(out, "-A {OUTBOUND_CHAIN} -o lo {tag} -j RETURN");
    let _ = writeln!(out, "-A {OUTBOUND_CHAIN} -d 127.0.0.0/8 {tag} -j RETURN");
    for ports in port_lists(&capture.skip_outbound_ports) {
        let _ = writeln!(
            out,
            "-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {ports} {tag} -j RETURN"
        );
    }
    for subnet in &capture.skip_outbound_subnets {
        let _ = writeln!(out, "-A {OUTBOUND_CHAIN} -d {subnet} {tag} -j RETURN");
    }
    let _ = writeln!(
        out,
        "-A {OUTBOUND_CHAIN} -p tcp {tag} -j {OUTBOUND_REDIRECT_CHAIN}"
    );

    for (builtin, chain) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)] {
        let jump = format!("-A {builtin} -j {chain}");
        if !current_nat.lines().any(|l| l.trim() == jump) {
            let _ = writeln!(out, "{jump}");
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Ports as `multiport` lists: sorted, deduplicated, at most 15 to a rule.
fn port_lists(ports: &[u16]) -> Vec<String> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    ports
        .chunks(15)
        .map(|chunk| {
            chunk
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[cfg(test)]
mod tests;

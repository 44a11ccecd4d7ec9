//! `weft-proxy init` on this machine's kernel: the capture rules it writes in a real
//! network namespace, and that a rerun replaces them instead of adding more.
//! Needs root and iptables (the cluster scripts install it); fails loudly without.

use std::{path::PathBuf, process::Command};

/// A network namespace for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("weft-e2e-init-{}", std::process::id());
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(
            made.success(),
            "cannot create network namespace {name}: the test needs root"
        );
        Self(name)
    }

    fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("ip netns exec runs")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn proxy_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| weft_e2e::repo_root().join("target"));
    let bin = target.join("debug/weft-proxy");
    assert!(bin.exists(), "{} is not built (make build)", bin.display());
    bin
}

fn nat_rules(ns: &Netns) -> Vec<String> {
    let out = ns.run("iptables-save", &["-t", "nat"], &[]);
    assert!(
        out.status.success(),
        "iptables-save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

#[test]
fn init_writes_the_capture_rules_and_a_rerun_replaces_them() {
    let ns = Netns::new();
    let bin = proxy_binary();
    let bin = bin.to_str().expect("a UTF-8 path");

    let first = ns.run(
        bin,
        &["init"],
        &[
            ("WEFT_PROXY_SKIP_OUTBOUND_PORTS", "443"),
            ("WEFT_PROXY_UID", "2102"),
        ],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(
        printed.contains("--to-ports 4143") && printed.contains("--to-ports 4140"),
        "it prints what it wrote:\n{printed}"
    );
    let rules = nat_rules(&ns);
    assert!(
        rules
            .iter()
            .any(|r| r.contains("--dports 443") && r.starts_with("-A WEFT_OUTBOUND")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("--uid-owner 2102")),
        "{rules:#?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r.contains("--dports 4191") && r.starts_with("-A WEFT_INBOUND")),
        "{rules:#?}"
    );

    // Rerun with other settings: the same shape, the new settings, no duplicates.
    let second = ns.run(
        bin,
        &["init"],
        &[("WEFT_PROXY_SKIP_OUTBOUND_PORTS", "8443")],
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let again = nat_rules(&ns);
    assert_eq!(again.len(), rules.len(), "{again:#?}");
    assert!(
        !again.iter().any(|r| r.contains("--dports 443 ")),
        "{again:#?}"
    );
    assert!(
        again.iter().any(|r| r.contains("--dports 8443")),
        "{again:#?}"
    );
    for jump in [
        "-A PREROUTING -j WEFT_INBOUND",
        "-A OUTPUT -j WEFT_OUTBOUND",
    ] {
        assert_eq!(again.iter().filter(|r| *r == jump).count(), 1, "{again:#?}");
    }

    // A bad setting is refused before anything is written.
    let bad = ns.run(
        bin,
        &["init"],
        &[("WEFT_PROXY_SKIP_OUTBOUND_SUBNETS", "10.0.0.0/99")],
    );
    assert_eq!(bad.status.code(), Some(64));
    assert_eq!(nat_rules(&ns), again);
}

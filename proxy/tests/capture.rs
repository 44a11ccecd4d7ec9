//! `weft-proxy init` on this machine's kernel: the capture rules it writes in a real
//! network namespace, and that a rerun replaces them instead of adding more.
//! Needs root and iptables (the cluster scripts install it); fails loudly without.

use std::process::Command;

/// A network namespace for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("weft-proxy-init-{}", std::process::id());
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs (the test needs iproute2)");
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
        // Cleanup only: a namespace left behind does not change what the test saw.
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn nat_rules(ns: &Netns) -> Vec<String> {
    let out = ns.run("iptables-save", &["-t", "nat"], &[]);
    assert!(
        out.status.success(),
        "iptables-save (the test needs iptables): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// Every port in the `--dports` lists of `chain`'s rules.
fn skipped_ports(rules: &[String], chain: &str) -> Vec<u16> {
    let prefix = format!("-A {chain} ");
    rules
        .iter()
        .filter(|r| r.starts_with(&prefix))
        .filter_map(|r| r.split_once("--dports ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .flat_map(|list| list.split(','))
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("a port: {p} in {rules:#?}"))
        })
        .collect()
}

#[test]
fn init_writes_the_capture_rules_and_a_rerun_replaces_them() {
    let ns = Netns::new();
    let bin = env!("CARGO_BIN_EXE_weft-proxy");
    assert!(
        nat_rules(&ns).is_empty(),
        "a fresh namespace has no nat rules"
    );

    let first = ns.run(
        bin,
        &["init"],
        &[
            ("WEFT_PROXY_SKIP_OUTBOUND_PORTS", "443"),
            ("WEFT_PROXY_UID", "3000"),
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
        skipped_ports(&rules, "WEFT_OUTBOUND").contains(&443),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("--uid-owner 3000")),
        "not the default uid, the one asked for: {rules:#?}"
    );
    assert!(
        skipped_ports(&rules, "WEFT_INBOUND").contains(&4191),
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
    let outbound = skipped_ports(&again, "WEFT_OUTBOUND");
    assert!(!outbound.contains(&443), "{again:#?}");
    assert!(outbound.contains(&8443), "{again:#?}");
    assert!(
        !again.iter().any(|r| r.contains("--uid-owner 3000"))
            && again.iter().any(|r| r.contains("--uid-owner 2102")),
        "the old uid is gone, the default one in its place: {again:#?}"
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
    assert_eq!(
        bad.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(nat_rules(&ns), again);
}

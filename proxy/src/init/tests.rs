use super::*;

fn capture() -> Capture {
    Capture {
        proxy_uid: 2102,
        inbound_port: 4143,
        outbound_port: 4140,
        admin_port: 4191,
        skip_inbound_ports: vec![22],
        skip_outbound_ports: vec![443, 25],
        skip_outbound_subnets: vec!["169.254.169.254/32".into()],
    }
}

/// What `iptables-save -t nat` prints after `script` ran on an empty table.
fn applied(script: &str) -> String {
    script
        .lines()
        .filter(|l| {
            l.starts_with("-A ") || l.starts_with(':') || l.starts_with('*') || *l == "COMMIT"
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn inbound_goes_to_the_proxy_except_admin_and_skipped_ports() {
    let script = plan(&capture(), "");
    assert!(script.contains("-A WEFT_INBOUND -p tcp -m multiport --dports 22,4191 -m comment --comment weft -j RETURN"), "{script}");
    assert!(script.contains(
        "-A WEFT_INBOUND_REDIRECT -p tcp -m comment --comment weft -j REDIRECT --to-ports 4143"
    ));
    assert!(script.contains("-A PREROUTING -j WEFT_INBOUND\n"));
}

#[test]
fn outbound_goes_to_the_proxy_except_its_own_loopback_and_skips() {
    let script = plan(&capture(), "");
    for rule in [
        "-A WEFT_OUTBOUND -o lo -s 127.0.0.6/32 -p tcp -m owner --uid-owner 2102 -m comment --comment weft -j RETURN",
        "-A WEFT_OUTBOUND -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 2102 -m comment --comment weft -j WEFT_INBOUND_REDIRECT",
        "-A WEFT_OUTBOUND -m owner --uid-owner 2102 -m comment --comment weft -j RETURN",
        "-A WEFT_OUTBOUND -o lo -m comment --comment weft -j RETURN",
        "-A WEFT_OUTBOUND -d 127.0.0.0/8 -m comment --comment weft -j RETURN",
        "-A WEFT_OUTBOUND -p tcp -m multiport --dports 25,443 -m comment --comment weft -j RETURN",
        "-A WEFT_OUTBOUND -d 169.254.169.254/32 -m comment --comment weft -j RETURN",
        "-A WEFT_OUTBOUND_REDIRECT -p tcp -m comment --comment weft -j REDIRECT --to-ports 4140",
        "-A OUTPUT -j WEFT_OUTBOUND",
    ] {
        assert!(script.contains(rule), "missing {rule:?} in\n{script}");
    }
    // The proxy's own traffic is let through before anything is redirected.
    let uid = script.find("--uid-owner").unwrap();
    let redirect = script
        .find("-A WEFT_OUTBOUND -p tcp -m comment --comment weft -j WEFT_OUTBOUND_REDIRECT")
        .unwrap();
    assert!(uid < redirect);
}

#[test]
fn a_rerun_replaces_the_chains_and_never_duplicates_the_jumps() {
    let first = plan(&capture(), "");
    let second = plan(&capture(), &applied(&first));
    assert!(!second.contains("-A PREROUTING"), "{second}");
    assert!(!second.contains("-A OUTPUT"), "{second}");
    // Every Weft chain is declared again, which empties it before it is refilled.
    for chain in [
        INBOUND_CHAIN,
        INBOUND_REDIRECT_CHAIN,
        OUTBOUND_CHAIN,
        OUTBOUND_REDIRECT_CHAIN,
    ] {
        assert!(second.contains(&format!(":{chain} - [0:0]\n")));
    }
    let rules = |s: &str| s.lines().filter(|l| l.starts_with("-A WEFT")).count();
    assert_eq!(rules(&first), rules(&second));
}

#[test]
fn many_skipped_ports_are_split_into_multiport_lists_of_fifteen() {
    let mut c = capture();
    c.skip_outbound_ports = (1000..1040).collect();
    let lists = port_lists(&c.skip_outbound_ports);
    assert_eq!(lists.len(), 3);
    assert!(lists.iter().all(|l| l.split(',').count() <= 15));
    assert_eq!(port_lists(&[5, 5, 1]), vec!["1,5".to_string()]);
}

#[test]
fn ipv6_addresses_beyond_loopback_and_link_local_are_refused() {
    let if_inet6 = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000a8c6fffffe4c5d6e 02 40 20 80     eth0
fd001234000000000000000000000005 02 40 00 00     eth0
20010db8000000000000000000000007 02 40 00 00     eth0
";
    assert_eq!(
        uncaptured_ipv6(if_inet6),
        ["fd00:1234::5", "2001:db8::7"],
        "unique-local and global addresses, not loopback or link-local"
    );
    assert!(
        uncaptured_ipv6("").is_empty(),
        "IPv6 off: nothing to refuse"
    );
    assert!(
        uncaptured_ipv6(
            "00000000000000000000000000000001 01 80 10 80 lo\nfe800000000000000000000000000001 02 40 20 80 eth0\n"
        )
        .is_empty()
    );
    let refused = InitError::Ipv6(uncaptured_ipv6(if_inet6)).to_string();
    assert!(
        refused.contains("fd00:1234::5, 2001:db8::7") && refused.contains("IPv4 only"),
        "{refused}"
    );
}

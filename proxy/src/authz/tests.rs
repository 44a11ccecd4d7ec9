use weft_proxy_api::v1::{self, InboundPolicyUpdate};

use super::*;

fn rule(
    name: &str,
    identities: &[&str],
    unauthenticated: bool,
    networks: &[(&str, &[&str])],
) -> v1::Authorization {
    v1::Authorization {
        name: name.into(),
        identities: identities.iter().map(|s| s.to_string()).collect(),
        unauthenticated,
        networks: networks
            .iter()
            .map(|(cidr, except)| v1::Network {
                cidr: cidr.to_string(),
                except: except.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    }
}

#[test]
fn cidrs_hold_what_they_should() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(in_cidr(ip("198.18.3.4"), "198.18.0.0/16"));
    assert!(!in_cidr(ip("198.19.3.4"), "198.18.0.0/16"));
    assert!(in_cidr(ip("198.19.3.4"), "0.0.0.0/0"));
    assert!(in_cidr(ip("10.1.2.3"), "10.1.2.3"));
    assert!(in_cidr(ip("::ffff:10.1.2.3"), "10.0.0.0/8"));
    assert!(in_cidr(ip("fd00::1"), "fd00::/8"));
    assert!(!in_cidr(ip("fd00::1"), "10.0.0.0/8"));
    for bad in ["", "x/8", "10.0.0.0/33", "10.0.0.0/x"] {
        assert!(!in_cidr(ip("10.0.0.1"), bad), "{bad}");
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

fn policy(rules: Vec<v1::Authorization>) -> InboundPolicy {
    InboundPolicyUpdate {
        protocol: "detect".into(),
        authorizations: rules,
        ..InboundPolicyUpdate::default()
    }
    .into()
}

fn client<'a>(identity: Option<&'a str>, ip: &str) -> Client<'a> {
    Client {
        identity,
        ip: ip.parse().unwrap(),
    }
}

fn allowed(authorization: &str) -> Decision<'_> {
    Decision::Allowed { authorization }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The port of the tests below: the web ServiceAccount by identity, a probes network
/// unauthenticated (less one subnet).
fn shop() -> InboundPolicy {
    policy(vec![
        rule("serverauthorization/web", &[WEB], false, &[]),
        rule(
            "serverauthorization/probes",
            &[],
            true,
            &[("198.18.0.0/16", &["198.18.9.0/24"])],
        ),
    ])
}

#[test]
fn a_named_identity_is_allowed_by_the_first_rule_that_names_it() {
    assert_eq!(
        authorize(&shop(), client(Some(WEB), "10.0.0.1")),
        allowed("serverauthorization/web")
    );
    // From the probes network too, where the second rule would allow it as well.
    assert_eq!(
        authorize(&shop(), client(Some(WEB), "198.18.1.1")),
        allowed("serverauthorization/web")
    );
}

#[test]
fn a_service_account_is_allowed_by_its_identity_and_any_identity_by_a_star() {
    // The operator turns a ServiceAccount into the SPIFFE id of its workloads.
    let policy = policy(vec![
        rule(
            "serverauthorization/friends",
            &["spiffe://cluster.local/ns/shop/sa/friend"],
            false,
            &[],
        ),
        rule("default:all-authenticated", &["*"], false, &[]),
    ]);
    assert_eq!(
        authorize(
            &policy,
            client(Some("spiffe://cluster.local/ns/shop/sa/friend"), "10.0.0.1")
        ),
        allowed("serverauthorization/friends")
    );
    assert_eq!(
        authorize(&policy, client(Some(OTHER), "10.0.0.1")),
        allowed("default:all-authenticated")
    );
}

#[test]
fn an_unauthenticated_client_is_allowed_by_its_network() {
    assert_eq!(
        authorize(&shop(), client(None, "198.18.1.1")),
        allowed("serverauthorization/probes")
    );
    // An identity does not keep a client out of a rule for unauthenticated clients.
    assert_eq!(
        authorize(&shop(), client(Some(OTHER), "198.18.1.1")),
        allowed("serverauthorization/probes")
    );
}

#[test]
fn a_client_without_identity_where_every_rule_asks_for_one_is_denied_as_unauthenticated() {
    let policy = policy(vec![
        rule("serverauthorization/web", &[WEB], false, &[]),
        rule("default:all-authenticated", &["*"], false, &[]),
    ]);
    assert_eq!(
        authorize(&policy, client(None, "10.0.0.1")),
        Decision::Denied(Denial::Unauthenticated {
            authorizations: names(&["serverauthorization/web", "default:all-authenticated"])
        })
    );
}

#[test]
fn a_port_without_rules_denies_everyone_by_the_deny_default() {
    let deny = InboundPolicy::from(InboundPolicyUpdate::default());
    for who in [Some(WEB), None] {
        assert_eq!(
            authorize(&deny, client(who, "10.0.0.1")),
            Decision::Denied(Denial::DefaultDeny)
        );
    }
    assert_eq!(Denial::DefaultDeny.policy(), "default:deny");
}

#[test]
fn a_client_no_rule_names_is_denied_naming_the_rules() {
    let denied = Decision::Denied(Denial::NoMatch {
        authorizations: names(&["serverauthorization/web", "serverauthorization/probes"]),
    });
    // An identity no rule names, from outside the unauthenticated network.
    assert_eq!(authorize(&shop(), client(Some(OTHER), "127.0.0.1")), denied);
    // Unauthenticated from the network's excluded subnet: a rule admits
    // unauthenticated clients, just not from there.
    assert_eq!(authorize(&shop(), client(None, "198.18.9.9")), denied);
    let Decision::Denied(denial) = denied else {
        unreachable!()
    };
    assert_eq!(
        denial.policy(),
        "serverauthorization/web,serverauthorization/probes"
    );
}

#[test]
fn a_refusal_reads_the_same_in_its_header_and_its_words() {
    let refusal = Refusal {
        server: 8080,
        client: Some(OTHER.into()),
        denial: Denial::NoMatch {
            authorizations: names(&["serverauthorization/a", "serverauthorization/b"]),
        },
    };
    assert_eq!(
        refusal.header(),
        "denied; server=8080; policy=serverauthorization/a,serverauthorization/b; \
         client=spiffe://cluster.local/ns/shop/sa/other"
    );
    assert_eq!(
        refusal.message(),
        "Weft denied the request: no authorization of port 8080 \
         (serverauthorization/a, serverauthorization/b) admits client \
         spiffe://cluster.local/ns/shop/sa/other."
    );

    let unauthenticated = Refusal {
        server: 80,
        client: None,
        denial: Denial::Unauthenticated {
            authorizations: names(&["default:all-authenticated"]),
        },
    };
    assert_eq!(
        unauthenticated.header(),
        "denied; server=80; policy=default:all-authenticated; client=unauthenticated"
    );
    assert!(
        unauthenticated.message().contains("no mesh identity"),
        "{}",
        unauthenticated.message()
    );

    let deny = Refusal {
        server: 80,
        client: None,
        denial: Denial::DefaultDeny,
    };
    assert_eq!(
        deny.header(),
        "denied; server=80; policy=default:deny; client=unauthenticated"
    );
    assert!(
        deny.message().contains("default:deny"),
        "{}",
        deny.message()
    );
}

#[test]
fn a_refusal_header_holds_only_visible_ascii_and_its_own_separators() {
    let refusal = Refusal {
        server: 1,
        client: Some("spiffe://td/ns/é; x=\"y\"\r\n".into()),
        denial: Denial::NoMatch {
            authorizations: names(&["a,b", "c"]),
        },
    };
    let header = refusal.header();
    assert_eq!(
        header,
        "denied; server=1; policy=a_b,c; client=spiffe://td/ns/___x=_y___"
    );
    assert!(http::HeaderValue::from_str(&header).is_ok());
    let message = refusal.message();
    assert!(
        message.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
        "{message}"
    );
}

#[test]
fn audit_mode_is_carried_from_the_update() {
    let update = InboundPolicyUpdate {
        protocol: "detect".into(),
        audit: true,
        ..InboundPolicyUpdate::default()
    };
    assert!(InboundPolicy::from(update).audit);
    assert!(!InboundPolicy::from(InboundPolicyUpdate::default()).audit);
}

fn named(name: &str) -> InboundPolicy {
    InboundPolicy {
        protocol: name.into(),
        ..InboundPolicy::default()
    }
}

#[test]
fn a_declared_port_is_judged_by_its_own_policy_and_no_other() {
    let mut policies = InboundPolicies::awaiting(&[8080]);
    assert_eq!(policies.missing(), [0, 8080]);
    assert_eq!(policies.policy(8080), PortPolicy::Unknown);
    assert_eq!(policies.policy(9000), PortPolicy::Unknown);
    policies.apply(0, named("default"), BTreeMap::new());
    // Port 0's default does not stand in for a declared port's own policy.
    assert_eq!(policies.policy(8080), PortPolicy::Unknown);
    assert_eq!(policies.missing(), [8080]);
    policies.apply(8080, named("own"), BTreeMap::new());
    assert_eq!(
        policies.policy(8080),
        PortPolicy::Known(Arc::new(named("own")))
    );
    assert!(policies.missing().is_empty());
}

#[test]
fn an_undeclared_port_a_server_authorization_selects_has_its_policy_from_port_0() {
    let mut policies = InboundPolicies::awaiting(&[]);
    let update = InboundPolicyUpdate {
        protocol: "detect".into(),
        config_version: "v0".into(),
        ports: vec![v1::PortPolicy {
            port: 9100,
            protocol: "opaque".into(),
            authorizations: vec![rule("serverauthorization/metrics", &[WEB], false, &[])],
            audit: true,
        }],
        ..InboundPolicyUpdate::default()
    };
    let selected = selected_ports(&update);
    policies.apply(0, update.into(), selected);
    let PortPolicy::Known(selected) = policies.policy(9100) else {
        panic!("unknown")
    };
    assert_eq!(selected.protocol, "opaque");
    assert!(selected.audit);
    assert_eq!(selected.authorizations[0].identities, [WEB]);
    assert_eq!(selected.version.as_str(), "v0");
    // Any other port: the default.
    let PortPolicy::Known(other) = policies.policy(9101) else {
        panic!("unknown")
    };
    assert_eq!(other.protocol, "detect");
    // The next update replaces them all: a port no longer selected takes the default.
    policies.apply(0, named("detect"), BTreeMap::new());
    assert_eq!(
        policies.policy(9100),
        PortPolicy::Known(Arc::new(named("detect")))
    );
}

#[test]
fn nothing_is_enforced_only_without_discovery() {
    assert_eq!(
        InboundPolicies::unenforced().policy(80),
        PortPolicy::Unenforced
    );
    assert!(InboundPolicies::unenforced().missing().is_empty());
    assert_eq!(InboundPolicies::default().policy(80), PortPolicy::Unknown);
}

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

#[test]
fn a_client_is_allowed_by_the_first_rule_that_names_it() {
    let policy: InboundPolicy = InboundPolicyUpdate {
        protocol: "detect".into(),
        authorizations: vec![
            rule(
                "serverauthorization/web",
                &["spiffe://cluster.local/ns/shop/sa/web"],
                false,
                &[],
            ),
            rule(
                "serverauthorization/probes",
                &[],
                true,
                &[("198.18.0.0/16", &["198.18.9.0/24"])],
            ),
        ],
        config_version: String::new(),
    }
    .into();
    let ip = "198.18.1.1".parse().unwrap();
    let web = Some("spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(
        authorize(&policy, Client { identity: web, ip }),
        Some("serverauthorization/web")
    );
    assert_eq!(
        authorize(&policy, Client { identity: None, ip }),
        Some("serverauthorization/probes")
    );
    let excluded = "198.18.9.9".parse().unwrap();
    assert_eq!(
        authorize(
            &policy,
            Client {
                identity: None,
                ip: excluded
            }
        ),
        None
    );
    let outside = "127.0.0.1".parse().unwrap();
    assert_eq!(
        authorize(
            &policy,
            Client {
                identity: Some("spiffe://cluster.local/ns/shop/sa/other"),
                ip: outside
            }
        ),
        None
    );
    let deny = InboundPolicy::from(InboundPolicyUpdate::default());
    assert_eq!(authorize(&deny, Client { identity: web, ip }), None);
    let any = InboundPolicy::from(InboundPolicyUpdate {
        authorizations: vec![rule("default:all-authenticated", &["*"], false, &[])],
        ..Default::default()
    });
    assert!(authorize(&any, Client { identity: web, ip }).is_some());
    assert!(authorize(&any, Client { identity: None, ip }).is_none());
}

use std::time::Instant;

use super::gate::{DENIAL_LOG_PAIRS, judge};
use super::*;
use crate::authz::InboundPolicy;
use crate::{
    authz,
    metrics::{Mode, Verdict},
};

#[test]
fn a_refusal_is_logged_at_info_once_per_port_and_client_in_ten_seconds() {
    let log = DenialLog::default();
    let start = Instant::now();
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    assert!(log.first_in_a_while(8080, web, start));
    assert!(!log.first_in_a_while(8080, web, start + Duration::from_secs(9)));
    // Another port, another client: each its own.
    assert!(log.first_in_a_while(9090, web, start + Duration::from_secs(1)));
    assert!(log.first_in_a_while(8080, "unauthenticated", start + Duration::from_secs(1)));
    assert!(log.first_in_a_while(8080, web, start + DENIAL_LOG_EVERY));
    assert!(!log.first_in_a_while(8080, web, start + DENIAL_LOG_EVERY));
}

#[test]
fn the_refusal_log_remembers_a_bounded_number_of_clients() {
    let log = DenialLog::default();
    let start = Instant::now();
    for i in 0..DENIAL_LOG_PAIRS {
        assert!(log.first_in_a_while(80, &format!("client-{i}"), start));
    }
    // Full of pairs logged just now: a new one is not logged at info...
    assert!(!log.first_in_a_while(80, "newcomer", start + Duration::from_secs(1)));
    assert_eq!(log.0.lock().unwrap().len(), DENIAL_LOG_PAIRS);
    // ...until the others are old enough to forget.
    assert!(log.first_in_a_while(80, "newcomer", start + DENIAL_LOG_EVERY));
    assert_eq!(log.0.lock().unwrap().len(), 1);
}

fn only(identity: &str, audit: bool) -> InboundPolicy {
    InboundPolicy {
        protocol: "detect".into(),
        authorizations: vec![authz::Authorization {
            name: "serverauthorization/web".into(),
            identities: vec![identity.into()],
            ..authz::Authorization::default()
        }],
        audit,
        ..InboundPolicy::default()
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

fn peer() -> SocketAddr {
    "10.0.0.7:40000".parse().unwrap()
}

/// A gate for `identity` at port 8080, judged by what `policies` holds.
fn gate(policies: &watch::Sender<InboundPolicies>, identity: &str, metrics: &Arc<Metrics>) -> Gate {
    Gate {
        policies: policies.subscribe(),
        port: 8080,
        identity: Some(identity.into()),
        peer: peer(),
        metrics: metrics.clone(),
        denials: Arc::default(),
        last: Mutex::default(),
    }
}

fn on_every_port(policy: InboundPolicy) -> InboundPolicies {
    InboundPolicies::every_port(policy)
}

#[test]
fn a_policy_in_audit_mode_lets_a_client_it_denies_through_as_a_would_be_denial() {
    let metrics = Arc::new(Metrics::new());
    let (policies, _) = watch::channel(on_every_port(only(WEB, true)));
    let gate = gate(&policies, OTHER, &metrics);
    let admission = gate.admit(&policies.borrow().policy(8080));
    assert!(admission.refusal.is_none(), "{admission:?}");
    assert_eq!(admission.verdict, Verdict::Deny);
    let labels = admission.labels.clone().unwrap();
    assert_eq!(labels.mode, Mode::Audit);
    assert_eq!(labels.authorization, "serverauthorization/web");
    // Each request on the connection is a would-be denial too, let through.
    assert!(gate.request().is_ok());
    let text = metrics.encode();
    let sample = format!(
        "{{server=\"8080\",authorization=\"serverauthorization/web\",client_id=\"{OTHER}\",\
         mode=\"audit\"}} 1"
    );
    assert!(
        text.contains(&format!("inbound_tcp_authz_deny_total{sample}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("inbound_http_authz_deny_total{sample}")),
        "{text}"
    );
    assert!(!text.contains("inbound_tcp_authz_allow_total{"), "{text}");
}

#[test]
fn a_policy_in_audit_mode_counts_a_client_it_allows_as_allowed_in_audit_mode() {
    let admission = judge(
        &PortPolicy::Known(Arc::new(only(WEB, true))),
        Some(WEB),
        peer(),
        8080,
    );
    assert!(admission.refusal.is_none());
    assert_eq!(admission.verdict, Verdict::Allow);
    assert_eq!(admission.labels.unwrap().mode, Mode::Audit);
}

#[test]
fn an_enforced_policy_refuses_a_client_it_denies() {
    let admission = judge(
        &PortPolicy::Known(Arc::new(only(WEB, false))),
        Some(OTHER),
        peer(),
        8080,
    );
    let refusal = admission.refusal.as_deref().unwrap();
    assert_eq!(refusal.client_name(), OTHER);
    assert_eq!(admission.verdict, Verdict::Deny);
    assert_eq!(admission.labels.unwrap().mode, Mode::Enforce);
}

#[test]
fn a_port_whose_policy_is_unknown_refuses_every_client_counted_as_unknown() {
    let admission = judge(&PortPolicy::Unknown, Some(WEB), peer(), 8080);
    let refusal = admission.refusal.as_deref().unwrap();
    assert_eq!(refusal.denial, authz::Denial::PolicyUnknown);
    assert_eq!(
        refusal.header(),
        format!("denied; server=8080; policy=unknown; client={WEB}")
    );
    let labels = admission.labels.unwrap();
    assert_eq!(labels.authorization, "unknown");
    assert_eq!(labels.mode, Mode::Enforce);
    // Only without discovery at all is nothing enforced.
    let unenforced = judge(&PortPolicy::Unenforced, None, peer(), 8080);
    assert!(unenforced.refusal.is_none() && unenforced.labels.is_none());
}

#[tokio::test]
async fn a_connection_waits_for_its_ports_policy_and_takes_it_when_it_arrives() {
    let (policies, rx) = watch::channel(InboundPolicies::awaiting(&[8080]));
    let waiting = tokio::spawn(wait_for_policy(rx, 8080, POLICY_TIMEOUT));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Port 0's policy does not stand in for a declared port's own.
    policies.send_modify(|p| p.apply(0, only(OTHER, false), Default::default()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiting.is_finished());
    policies.send_modify(|p| p.apply(8080, only(WEB, false), Default::default()));
    let PortPolicy::Known(policy) = waiting.await.unwrap() else {
        panic!("not known")
    };
    assert_eq!(*policy, only(WEB, false));
}

#[tokio::test]
async fn a_connection_waits_for_its_ports_policy_at_most_the_timeout() {
    let (_policies, rx) = watch::channel(InboundPolicies::awaiting(&[8080]));
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(
        wait_for_policy(rx, 8080, timeout).await,
        PortPolicy::Unknown
    );
    assert!(started.elapsed() >= timeout);
    assert!(started.elapsed() < timeout * 5);
}

#[test]
fn each_request_is_judged_by_the_policy_in_force_when_it_arrives() {
    let metrics = Arc::new(Metrics::new());
    let (policies, _) = watch::channel(on_every_port(only(WEB, false)));
    let gate = gate(&policies, OTHER, &metrics);
    assert!(gate.request().is_err());
    assert!(gate.refuses());
    // Access granted: the same connection's next request goes through.
    policies.send_replace(on_every_port(only(OTHER, false)));
    assert!(gate.request().is_ok());
    assert!(gate.request().is_ok());
    assert!(!gate.refuses());
    // Removed: refused again.
    policies.send_replace(on_every_port(only(WEB, false)));
    assert!(gate.request().is_err());
    let text = metrics.encode();
    let count = |family: &str| {
        text.lines()
            .find(|l| l.starts_with(family) && l.contains(OTHER))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(
        count("inbound_http_authz_deny_total").as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        count("inbound_http_authz_allow_total").as_deref(),
        Some("2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_connection_relayed_as_bytes_is_revoked_when_a_change_refuses_its_client() {
    let metrics = Arc::new(Metrics::new());
    let (policies, _) = watch::channel(on_every_port(only(WEB, false)));
    let gate = Arc::new(gate(&policies, WEB, &metrics));
    let revoked = tokio::spawn({
        let gate = gate.clone();
        async move { gate.revoked().await }
    });
    // A change that still allows it, and one in audit mode, do not close it.
    policies.send_replace(on_every_port(InboundPolicy {
        version: String::from("v2").into(),
        ..only(WEB, false)
    }));
    policies.send_replace(on_every_port(only(OTHER, true)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!revoked.is_finished());
    policies.send_replace(on_every_port(only(OTHER, false)));
    tokio::time::timeout(Duration::from_secs(5), revoked)
        .await
        .unwrap()
        .unwrap();
    assert!(metrics.encode().contains(&format!(
        "inbound_tcp_authz_revoked_total{{server=\"8080\",\
         authorization=\"serverauthorization/web\",client_id=\"{WEB}\",mode=\"enforce\"}} 1"
    )));
}

use super::*;

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

#[test]
fn a_policy_in_audit_mode_lets_a_client_it_denies_through_as_a_would_be_denial() {
    let inbound = Inbound::new(None, None, InboundSettings::default(), None);
    let metrics = Metrics::new();
    let admission = inbound.admit(Some(&only(WEB, true)), Some(OTHER), peer(), 8080, &metrics);
    assert!(admission.refusal.is_none(), "{admission:?}");
    assert_eq!(admission.verdict, Verdict::Deny);
    let labels = admission.labels.clone().unwrap();
    assert_eq!(labels.mode, Mode::Audit);
    assert_eq!(labels.authorization, "serverauthorization/web");
    // Each request on the connection is a would-be denial too.
    admission.http_counter(&metrics).unwrap().inc();
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
    let inbound = Inbound::new(None, None, InboundSettings::default(), None);
    let metrics = Metrics::new();
    let admission = inbound.admit(Some(&only(WEB, true)), Some(WEB), peer(), 8080, &metrics);
    assert!(admission.refusal.is_none());
    assert_eq!(admission.verdict, Verdict::Allow);
    assert!(metrics.encode().contains(&format!(
        "inbound_tcp_authz_allow_total{{server=\"8080\",authorization=\"serverauthorization/web\",\
         client_id=\"{WEB}\",mode=\"audit\"}} 1"
    )));
}

#[test]
fn an_enforced_policy_refuses_a_client_it_denies() {
    let inbound = Inbound::new(None, None, InboundSettings::default(), None);
    let metrics = Metrics::new();
    let admission = inbound.admit(Some(&only(WEB, false)), Some(OTHER), peer(), 8080, &metrics);
    let refusal = admission.refusal.as_deref().unwrap();
    assert_eq!(refusal.client_name(), OTHER);
    assert_eq!(admission.verdict, Verdict::Deny);
    assert!(metrics.encode().contains(&format!(
        "inbound_tcp_authz_deny_total{{server=\"8080\",authorization=\"serverauthorization/web\",\
         client_id=\"{OTHER}\",mode=\"enforce\"}} 1"
    )));
}

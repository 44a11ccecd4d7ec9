use super::*;

fn labels(server: &str, client_id: &str) -> AuthzLabels {
    AuthzLabels {
        server: server.into(),
        authorization: "serverauthorization/web".into(),
        client_id: client_id.into(),
        mode: Mode::Enforce,
    }
}

/// The samples of `name` in `text`: their label sets, and values.
fn samples<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .collect()
}

#[test]
fn authorization_counters_label_each_port_authorization_and_client() {
    let metrics = Metrics::new();
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    metrics.tcp_authz(Verdict::Allow, &labels("8080", web));
    metrics.tcp_authz(Verdict::Deny, &labels("8080", "unauthenticated"));
    let requests = metrics.http_authz(Verdict::Deny, &labels("8080", web));
    requests.inc();
    requests.inc();
    let text = metrics.encode();
    let sample = |client_id| {
        format!(
            "{{server=\"8080\",authorization=\"serverauthorization/web\",client_id=\"{client_id}\",mode=\"enforce\"}}"
        )
    };
    assert_eq!(
        samples(&text, "inbound_tcp_authz_allow_total"),
        [format!("inbound_tcp_authz_allow_total{} 1", sample(web))]
    );
    assert_eq!(
        samples(&text, "inbound_tcp_authz_deny_total"),
        [format!(
            "inbound_tcp_authz_deny_total{} 1",
            sample("unauthenticated")
        )]
    );
    assert_eq!(
        samples(&text, "inbound_http_authz_deny_total"),
        [format!("inbound_http_authz_deny_total{} 2", sample(web))]
    );
    assert!(samples(&text, "inbound_http_authz_allow_total").is_empty());
}

#[test]
fn authorization_counters_fold_clients_and_ports_beyond_their_limits_into_other() {
    let metrics = Metrics::new();
    let extra = 5;
    for i in 0..MAX_AUTHZ_CLIENT_IDS + extra {
        let client = format!("spiffe://cluster.local/ns/shop/sa/client-{i}");
        metrics.tcp_authz(Verdict::Deny, &labels("8080", &client));
    }
    // A client seen before the limit keeps its own label.
    metrics.tcp_authz(
        Verdict::Deny,
        &labels("8080", "spiffe://cluster.local/ns/shop/sa/client-0"),
    );
    for port in 0..MAX_AUTHZ_SERVERS + extra {
        metrics.tcp_authz(
            Verdict::Allow,
            &labels(&port.to_string(), "unauthenticated"),
        );
    }
    let text = metrics.encode();

    let denied = samples(&text, "inbound_tcp_authz_deny_total");
    assert_eq!(denied.len(), MAX_AUTHZ_CLIENT_IDS + 1, "{text}");
    assert!(
        denied.contains(
            &"inbound_tcp_authz_deny_total{server=\"8080\",\
              authorization=\"serverauthorization/web\",client_id=\"other\",mode=\"enforce\"} 5"
        ),
        "{text}"
    );
    assert!(
        denied.contains(
            &"inbound_tcp_authz_deny_total{server=\"8080\",\
              authorization=\"serverauthorization/web\",\
              client_id=\"spiffe://cluster.local/ns/shop/sa/client-0\",mode=\"enforce\"} 2"
        ),
        "{text}"
    );

    let allowed = samples(&text, "inbound_tcp_authz_allow_total");
    assert_eq!(allowed.len(), MAX_AUTHZ_SERVERS + 1, "{text}");
    assert!(
        allowed.contains(
            &"inbound_tcp_authz_allow_total{server=\"other\",\
              authorization=\"serverauthorization/web\",client_id=\"unauthenticated\",mode=\"enforce\"} 5"
        ),
        "{text}"
    );
    // Each family keeps its own: the allowed ports took none of the denials' room.
    let requests = metrics.http_authz(Verdict::Allow, &labels("8080", "spiffe://x/new"));
    requests.inc();
    assert!(
        metrics
            .encode()
            .contains("client_id=\"spiffe://x/new\",mode=\"enforce\"} 1"),
        "{text}"
    );
}

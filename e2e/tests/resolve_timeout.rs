//! No silent plaintext when discovery is away, on the real cluster: a meshed client
//! whose proxy cannot reach the operator (its traffic to the proxy API refused in the
//! pod's own network namespace) and that calls a meshed pod it has never called before
//! gets its connection closed after the resolve timeout, counted in
//! `outbound_resolve_failed_total{reason="timeout"}` — and the server's proxy sees no
//! plaintext connection at all. Once the operator is reachable again the same call
//! goes through over mTLS.

use std::time::Duration;

use weft_e2e::{
    control_rule, eventually, http_status, kubectl_stdin, mesh_namespace, metric_sum, pod_ip,
    pod_netns, proxy_metrics, testapp_pod, wait_ready, with_temp_ns,
};

#[tokio::test]
async fn a_new_destination_is_not_sent_in_plaintext_while_discovery_is_away() {
    with_temp_ns("resolve-timeout", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let objects = [
            testapp_pod(&ns, "seen", true),
            testapp_pod(&ns, "fresh", true),
            testapp_pod(&ns, "caller", false),
        ]
        .join("---");
        let out = kubectl_stdin(&["apply", "-f", "-"], &objects);
        assert!(out.success, "{}", out.stderr);
        wait_ready(&ns, &["seen", "fresh", "caller"]);
        let curl = |url: &str| http_status(&ns, "caller", url);

        // The mesh works for this caller: a first destination, resolved while the
        // operator is reachable.
        let seen_url = format!("http://{}:8080/hostname", pod_ip(&ns, "seen"));
        assert_eq!(curl(&seen_url), "200", "{seen_url} with discovery up");

        // Discovery goes away for the caller's proxy alone.
        let netns = pod_netns(&pod_ip(&ns, "caller"));
        let iptables =
            |op: &str| control_rule(&netns, op, &["REJECT", "--reject-with", "tcp-reset"]);
        iptables("-I");

        // A destination never seen: its answer cannot come.
        let fresh_url = format!("http://{}:8080/hostname", pod_ip(&ns, "fresh"));
        let status = curl(&fresh_url);
        // What was already resolved keeps working on the last answer.
        let still = curl(&seen_url);
        let caller_metrics = proxy_metrics(&ns, "caller");
        let fresh_metrics = proxy_metrics(&ns, "fresh");
        iptables("-D");

        assert_ne!(
            status, "200",
            "{fresh_url} answered while the caller's proxy could not resolve it: it went \
             around discovery (in plaintext)"
        );
        let failed = metric_sum(
            &caller_metrics,
            "outbound_resolve_failed_total",
            &[("reason", "timeout")],
        );
        assert!(
            failed >= 1.0,
            "the closed connection is not counted in outbound_resolve_failed_total:\n\
             {caller_metrics}"
        );
        let plaintext = metric_sum(
            &fresh_metrics,
            "tcp_open_total",
            &[("direction", "inbound"), ("tls", "false")],
        );
        assert_eq!(
            plaintext, 0.0,
            "the server's proxy saw plaintext connections while the caller's discovery was \
             away:\n{fresh_metrics}"
        );
        assert_eq!(
            still, "200",
            "{seen_url}, resolved before discovery went away"
        );

        // Discovery back: the same call goes through, over mTLS with the caller's
        // identity.
        eventually(
            "the new destination is reached once discovery is back",
            Duration::from_secs(60),
            || async {
                match curl(&fresh_url) {
                    ok if ok == "200" => Ok(()),
                    other => Err(format!("HTTP {other}")),
                }
            },
        )
        .await;
        let fresh_metrics = proxy_metrics(&ns, "fresh");
        let identity = format!("spiffe://cluster.local/ns/{ns}/sa/caller");
        let over_mtls = metric_sum(
            &fresh_metrics,
            "response_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &identity),
            ],
        );
        assert!(
            over_mtls >= 1.0,
            "no request over mTLS from {identity}:\n{fresh_metrics}"
        );
    })
    .await;
}

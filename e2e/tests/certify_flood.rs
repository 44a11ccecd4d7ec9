//! A flood of `Certify` calls against the installed operator: 5,000 calls with one
//! ServiceAccount's real token (reviewed once, then known by its hash), 16 at a time
//! over one connection from this host. The ServiceAccount's own rate limit answers most
//! of them RESOURCE_EXHAUSTED naming the limit, and the operator's `certify_*` metrics
//! count them; meanwhile another ServiceAccount is still certified and the webhook still
//! injects a new pod.
//!
//! What it may take from other tests running beside it: the flood's certificates count
//! against the operator's total issuance rate (500/s, burst 1000) at no more than the
//! per-ServiceAccount rate (20/s after a burst of 100), and its two tokens cost two
//! TokenReviews from this host's address. The calls the limit refuses cost neither.

mod proxy_api;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tonic::Code;
use weft_e2e::{
    kubectl_ok, kubectl_stdin, mesh_namespace, metric_sum, operator_metrics, with_temp_ns,
};

use proxy_api::{certify, connect, key_and_csr, token, workload_certificate};

/// How many calls the flood makes, and how many are in flight at once.
const FLOOD: usize = 5_000;
const CONCURRENCY: usize = 16;
/// The longest the flood may take: failing beyond it, the limits are not what bounds it.
const FLOOD_TIME: Duration = Duration::from_secs(90);

fn limited_total(text: &str) -> f64 {
    metric_sum(
        text,
        "weft_operator_certify_requests_total",
        &[("result", "limited")],
    )
}

#[tokio::test]
async fn a_flood_from_one_service_account_is_limited_and_no_one_else_is() {
    with_temp_ns("certify-flood", |client, ns| async move {
        let bundle = mesh_namespace(&client, &ns).await;
        kubectl_ok(&["create", "serviceaccount", "flood", "-n", &ns]);
        kubectl_ok(&["create", "serviceaccount", "calm", "-n", &ns]);
        let identity = format!("spiffe://cluster.local/ns/{ns}/sa/flood");
        let flood_token = token(
            &ns,
            "flood",
            &["--audience", weft_proxy_api::IDENTITY_TOKEN_AUDIENCE],
        );
        let (_key, csr) = key_and_csr(&identity);
        let before = operator_metrics();

        let channel = connect(&bundle, None).await;
        let started = Instant::now();
        let flood = tokio::spawn({
            let (channel, identity) = (channel.clone(), identity.clone());
            async move {
                futures::stream::iter(0..FLOOD)
                    .map(|_| certify(&channel, &identity, &flood_token, csr.clone()))
                    .buffer_unordered(CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await
            }
        });

        // Meanwhile: another ServiceAccount is certified, over a connection of its own…
        let calm = connect(&bundle, None).await;
        let certified = workload_certificate(&calm, &ns, "calm").await;
        assert!(certified.chain_pem.contains("BEGIN CERTIFICATE"));
        // …and the webhook injects a new pod (a server-side dry run goes through it).
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe, namespace: {ns}}}\nspec:\n  \
             containers:\n  - {{name: app, image: weft.local/testapp:dev}}\n"
        );
        let injected = kubectl_stdin(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
                "-f",
                "-",
            ],
            &pod,
        );
        assert!(
            injected
                .stdout
                .split_whitespace()
                .any(|c| c == "weft-proxy"),
            "the webhook did not inject during the flood: {}{}",
            injected.stdout,
            injected.stderr
        );
        let during = started.elapsed();

        let answers = tokio::time::timeout(FLOOD_TIME, flood)
            .await
            .unwrap_or_else(|_| panic!("{FLOOD} Certify calls took longer than {FLOOD_TIME:?}"))
            .expect("the flood ran");
        let elapsed = started.elapsed();
        let (mut issued, mut limited, mut other) = (0usize, 0usize, Vec::new());
        for answer in answers {
            match answer {
                Ok(_) => issued += 1,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    assert!(
                        status.message().starts_with(&format!(
                            "ServiceAccount {ns}/flood is over its Certify rate limit"
                        )),
                        "a limited call is told which limit: {status:?}"
                    );
                    limited += 1;
                }
                Err(status) => other.push(status),
            }
        }
        eprintln!(
            "{FLOOD} calls in {elapsed:?} ({CONCURRENCY} at a time): {issued} issued, \
             {limited} limited; the other ServiceAccount and the webhook answered within \
             {during:?}"
        );
        assert!(
            other.is_empty(),
            "only issued or limited: {:?}",
            &other[..other.len().min(5)]
        );
        assert!(limited > 0, "none of {FLOOD} calls was limited");
        // At least the burst was issued; at most the burst and the rate over the time.
        assert!(issued >= 100, "{issued} issued");
        let most = 100.0 + 20.0 * elapsed.as_secs_f64() + 1.0;
        assert!(
            (issued as f64) <= most,
            "{issued} issued in {elapsed:?}, more than the ServiceAccount's limit allows ({most})"
        );

        let after = operator_metrics();
        let counted = limited_total(&after) - limited_total(&before);
        assert!(
            counted >= limited as f64,
            "certify_requests_total{{result=\"limited\"}} grew by {counted}, not by {limited}"
        );
        let by_reason = |text: &str| {
            metric_sum(
                text,
                "weft_operator_certify_refusals_total",
                &[("reason", "service_account_rate_limit")],
            )
        };
        assert!(by_reason(&after) - by_reason(&before) >= limited as f64);
        let hits =
            |text: &str| metric_sum(text, "weft_operator_certify_token_cache_hits_total", &[]);
        assert!(
            hits(&after) - hits(&before) >= (FLOOD - CONCURRENCY) as f64,
            "the flood's token was reviewed once and then known: {} hits",
            hits(&after) - hits(&before)
        );
    })
    .await;
}

//! Certificate issuances per second through the real gRPC path: the proxy API server
//! (TLS 1.3, HTTP/2, tonic) with the real CSR checks and signing, called by concurrent
//! clients built like the proxy's. Token review is answered in-process, so the figure
//! is the operator's own cost; a real TokenReview adds one API-server round trip per
//! issuance.
//!
//! `make bench` runs it; it prints its figures and asserts nothing.

use std::time::{Duration, Instant};

use weft_operator::identity::test_util;
use weft_proxy::config::ControlAddr;
use weft_proxy_api::v1::{CertifyRequest, identity_client::IdentityClient};

const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 250;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

async fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let api = test_util::proxy_api().await;
    let (port, bundle) = (api.port, api.bundle.clone());
    tokio::time::sleep(Duration::from_millis(500)).await; // the serving certificate

    // Keys and CSRs are the proxies' cost, not the operator's: made before the clock runs.
    let identity = "spiffe://cluster.local/ns/bench/sa/client";
    let csrs: Vec<Vec<u8>> = (0..CLIENTS * REQUESTS_PER_CLIENT)
        .map(|_| test_util::csr(identity))
        .collect();
    let control = ControlAddr {
        host: "localhost".into(),
        port,
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(IdentityClient::new(
            weft_proxy::identity::connect(&control, &bundle).await?,
        ));
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, chunk) in clients
        .into_iter()
        .zip(csrs.chunks(REQUESTS_PER_CLIENT).map(<[_]>::to_vec))
    {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(chunk.len());
            for csr in chunk {
                let t = Instant::now();
                let req = CertifyRequest {
                    identity: identity.into(),
                    token: "bench/client".into(),
                    csr,
                };
                client.certify(req).await.map_err(|s| s.to_string())?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "certify: {} issuances by {CLIENTS} concurrent clients in {elapsed:.2?}",
        latencies.len()
    );
    println!(
        "certify: {:.0} issuances/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "certify: latency p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    drop(api);
    Ok(())
}

//! Injection webhook admission latency: a realistic Deployment pod (two containers,
//! probes, resources, a volume, an owner) posted as an AdmissionReview v1 to the real
//! webhook server over TLS, on a kept-alive connection as the API server keeps them.
//! The figure is the webhook's own cost, from the request's first byte to the
//! response's last; the API server's side of the call is not in it.
//!
//! `make bench` runs it; it prints its figures (target: p99 ≤ 5 ms) and asserts
//! nothing.

use std::time::{Duration, Instant};

use weft_operator::webhook::test_util::{Client, deployment_pod, review, webhook};

const WARMUP: usize = 200;
const REQUESTS: usize = 5000;
/// Several connections at once, as a busy API server makes them.
const CONNECTIONS: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

async fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let hook = webhook().await;
    let body = serde_json::to_vec(&review("Pod", "shop", deployment_pod()))?;
    println!("webhook: review of {} bytes", body.len());

    for (connections, label) in [(1, "one connection"), (CONNECTIONS, "4 connections")] {
        let mut tasks = Vec::new();
        let started = Instant::now();
        for _ in 0..connections {
            let mut client = Client::connect(hook.addr, &hook.bundle).await;
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..WARMUP {
                    let (status, _) = client.post("/inject", body.clone()).await;
                    assert_eq!(status, 200);
                }
                let mut latencies = Vec::with_capacity(REQUESTS / connections);
                for _ in 0..REQUESTS / connections {
                    let t = Instant::now();
                    let (status, answer) = client.post("/inject", body.clone()).await;
                    latencies.push(t.elapsed());
                    assert!(status == 200 && answer.windows(5).any(|w| w == b"patch"));
                }
                latencies
            }));
        }
        let mut latencies: Vec<Duration> = Vec::new();
        for task in tasks {
            latencies.extend(task.await?);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        println!(
            "webhook ({label}): {} admissions, p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}, {:.0} admissions/s",
            latencies.len(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(1.0),
            (latencies.len() + WARMUP * connections) as f64 / elapsed.as_secs_f64(),
        );
    }
    Ok(())
}

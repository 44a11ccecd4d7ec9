//! Discovery propagation: how long an EndpointSlice change takes to reach every
//! subscribed proxy and come back as its acknowledgement, at 1,000 streams and 5,000
//! endpoints, and the memory that scale costs.
//!
//! In one process, over real sockets and mutual TLS: the operator's Destination
//! service over its index (100 Services of 50 meshed endpoints each, 5,000 pods), and
//! 10 proxy discovery clients (the proxy's own code), each resolving all 100 Services:
//! 1,000 Resolve streams, plus one inbound policy stream per proxy. A change flips one
//! endpoint of one Service; the figure runs from applying the slice to the index until
//! all 10 acknowledgements of the new version are recorded. A Mesh change that touches
//! every stream at once is measured too.
//!
//! The clients run in a child process (this program again), so the resident memory
//! printed is the operator side's alone.
//!
//! `make bench` runs it; it prints its figures (target: p99 ≤ 100 ms, memory ≤ 150 MB)
//! and asserts nothing about them.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::json;
use weft_operator::{
    discovery::{index::Index, key::Key},
    identity::test_util::{TestProxyApi, proxy_api},
};
use weft_proxy::discovery::{Discovery, Settings};

const SERVICES: usize = 100;
const ENDPOINTS_PER_SERVICE: usize = 50;
const PROXIES: usize = 10;
const CHANGES: usize = 500;
const NS: &str = "bench";

/// Set in the child process: `<port>` of the operator side to connect to, and the
/// directory holding the token and trust bundle files.
const CLIENTS_ENV: &str = "WEFT_BENCH_DISCOVERY_CLIENTS";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match std::env::var(CLIENTS_ENV) {
        Ok(spec) => runtime.block_on(run_clients(&spec)),
        Err(_) => runtime.block_on(bench()),
    }
}

/// The child: certifies, starts the proxies' clients, resolves every Service, and
/// runs until its parent closes its stdin.
async fn run_clients(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (port, dir) = spec.split_once(':').ok_or("expected <port>:<dir>")?;
    let control = weft_proxy::config::ControlAddr {
        host: "localhost".into(),
        port: port.parse()?,
    };
    let dir = std::path::Path::new(dir);
    let identity = weft_proxy::identity::Settings {
        identity: format!("spiffe://cluster.local/ns/{NS}/sa/web"),
        token_file: dir.join("token").display().to_string(),
        trust_bundle_file: dir.join("bundle.pem").display().to_string(),
        control: control.clone(),
    };
    let credentials = weft_proxy::identity::certify(&identity).await?;
    let (_credentials, rx) = tokio::sync::watch::channel(Some(credentials));
    let clients: Vec<Discovery> = (0..PROXIES)
        .map(|p| {
            Discovery::start(
                Settings {
                    control: control.clone(),
                    trust_bundle_file: identity.trust_bundle_file.clone(),
                    pod: format!("client-{p}"),
                    inbound_ports: Vec::new(),
                    idle: Duration::from_secs(3600),
                    max_resolutions: 256,
                    readiness: weft_proxy::state::Readiness::default(),
                },
                rx.clone(),
            )
        })
        .collect();
    for client in &clients {
        for s in 0..SERVICES {
            let _ = client.resolve(&authority(s));
        }
    }
    // Until the parent goes.
    let _ =
        tokio::task::spawn_blocking(|| std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]))
            .await;
    Ok(())
}

fn authority(service: usize) -> String {
    format!("198.19.{}.{}:80", 1 + service / 250, 1 + service % 250)
}

fn endpoint_ip(service: usize, endpoint: usize) -> String {
    let n = service * ENDPOINTS_PER_SERVICE + endpoint;
    format!("198.18.{}.{}", 1 + n / 250, 1 + n % 250)
}

fn pod(name: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": NS, "name": name,
                     "labels": {"app": name, "weft.dev/injected": "true"}},
        "spec": {"serviceAccountName": "web", "containers": []},
    }))
    .expect("a Pod")
}

/// Service `service`'s EndpointSlice, with endpoint `not_ready` (if any) not ready.
fn slice(
    service: usize,
    not_ready: Option<usize>,
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| {
            json!({
                "addresses": [endpoint_ip(service, e)],
                "conditions": {"ready": not_ready != Some(e)},
                "targetRef": {"kind": "Pod", "name": format!("svc-{service}-{e}")},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": NS, "name": format!("svc-{service}-a"),
                     "labels": {"kubernetes.io/service-name": format!("svc-{service}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

fn load(index: &mut Index) {
    for s in 0..SERVICES {
        let ip = authority(s).trim_end_matches(":80").to_string();
        index.apply_service(
            &serde_json::from_value(json!({
                "metadata": {"namespace": NS, "name": format!("svc-{s}")},
                "spec": {"clusterIP": ip, "ports": [{"port": 80, "name": "http"}]},
            }))
            .expect("a Service"),
        );
        for e in 0..ENDPOINTS_PER_SERVICE {
            index.apply_pod(&pod(&format!("svc-{s}-{e}")));
        }
        index.apply_slice(&slice(s, None));
    }
    for p in 0..PROXIES {
        index.apply_pod(&pod(&format!("client-{p}")));
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts the child process running the proxies' clients.
fn spawn_clients(server: &TestProxyApi) -> Result<std::process::Child, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("weft-bench-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), format!("{NS}/web"))?;
    std::fs::write(dir.join("bundle.pem"), &server.bundle)?;
    Ok(std::process::Command::new(std::env::current_exe()?)
        .env(CLIENTS_ENV, format!("{}:{}", server.port, dir.display()))
        .stdin(std::process::Stdio::piped())
        .spawn()?)
}

/// Waits until `done` holds, waking on every acknowledgement.
async fn until_acked(server: &TestProxyApi, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    let mut changes = server.proxies.changes();
    while !done() {
        if tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .is_err()
        {
            panic!("no acknowledgement within 10 s");
        }
    }
    started.elapsed()
}

fn all_in_sync(server: &TestProxyApi) -> bool {
    (0..PROXIES).all(|p| {
        server
            .proxies
            .report(&Key::new(NS, &format!("client-{p}")))
            .is_some_and(|r| r.streams == SERVICES + 1 && r.in_sync)
    })
}

async fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let base = rss_mb();
    let server = proxy_api().await.ready().await;
    load(&mut server.index.lock().expect("the index"));
    let loaded = rss_mb();
    println!(
        "discovery: {SERVICES} Services × {ENDPOINTS_PER_SERVICE} endpoints = {} endpoints and pods; index loaded: RSS {loaded:.0} MB (+{:.0} MB)",
        SERVICES * ENDPOINTS_PER_SERVICE,
        loaded - base
    );

    let started = Instant::now();
    let mut clients = spawn_clients(&server)?;
    let mut changes = server.proxies.changes();
    while !all_in_sync(&server) {
        tokio::time::timeout(Duration::from_secs(60), changes.changed())
            .await
            .map_err(|_| "the clients did not connect within 60 s")??;
    }
    println!(
        "discovery: {PROXIES} proxies × {SERVICES} Resolve streams = {} streams, all applied and acknowledged {:.2?} after the client process started",
        PROXIES * SERVICES,
        started.elapsed()
    );

    let mut latencies = Vec::with_capacity(CHANGES);
    for change in 0..CHANGES {
        let service = change % SERVICES;
        let not_ready = (change / SERVICES) % ENDPOINTS_PER_SERVICE;
        let stream = format!("resolve:{}", authority(service));
        let t0 = Instant::now();
        let version = {
            let mut index = server.index.lock().expect("the index");
            index.apply_slice(&slice(service, Some(not_ready)));
            let target = weft_operator::discovery::authority::parse_authority(
                &authority(service),
                "cluster.local",
            )?;
            index.current(&target).expect("subscribed").version.clone()
        };
        until_acked(&server, || {
            (0..PROXIES).all(|p| {
                server
                    .proxies
                    .acked(&Key::new(NS, &format!("client-{p}")))
                    .get(&stream)
                    == Some(&version)
            })
        })
        .await;
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "discovery: EndpointSlice change → all {PROXIES} subscribers acknowledged ({CHANGES} changes): p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );

    let mut broadcasts = Vec::new();
    for round in 0..5u16 {
        let t0 = Instant::now();
        server.index.lock().expect("the index").set_mesh(
            "cluster.local",
            BTreeSet::from([8080 + round % 2]),
            Default::default(),
        );
        broadcasts.push(
            until_acked(&server, || all_in_sync(&server))
                .await
                .max(t0.elapsed()),
        );
    }
    println!(
        "discovery: a Mesh change touching all {} streams → all acknowledged: {:.2?}",
        PROXIES * (SERVICES + 1),
        broadcasts
    );
    println!(
        "discovery: the operator side's resident memory at this scale: {:.0} MB",
        rss_mb()
    );
    drop(clients.stdin.take());
    clients.wait()?;
    Ok(())
}

//! The data plane's benchmark: the same HTTP/1.1 keep-alive load, at a fixed request
//! rate, through
//! 1. no proxy (the application directly),
//! 2. a Weft client proxy and server proxy, mTLS between them,
//! 3. an HAProxy pair doing the same mTLS hop (Debian's haproxy, installed by
//!    `proxy/benches/setup.sh`),
//!
//! printing latency p50/p99/p999 and throughput for each, and each Weft proxy's peak
//! RSS.
//!
//! **Load.** [`CONNECTIONS`] kept-alive connections, each on a thread of its own,
//! send requests on a fixed schedule: an open loop of `WEFT_BENCH_RATE` requests/s
//! (1,000) in all, for `WEFT_BENCH_SECONDS` (15) per path after a warm-up, the paths
//! taking 1 s turns on connections kept throughout, so that a noisy moment of a
//! shared machine falls on all of them. A
//! request's latency runs from when it was due, not when it was sent, so a stall
//! counts against every request it delays (no coordinated omission). A closed-loop
//! run then gives the most each path carries.
//!
//! **The Weft pair.** Each proxy runs in a process of its own (this binary,
//! re-executed with `WEFT_BENCH_PROXY`): the sidecar's listeners, protocol detection,
//! TLS, balancer, HTTP pool and metrics on the same multi-threaded runtime the
//! sidecar uses. Its configuration — a resolution, an inbound policy, certificates
//! from a test CA — is given directly instead of streamed from the operator, so the
//! discovery and identity clients are not in these processes. Peak RSS is the
//! kernel's high-water mark (`VmHWM`) of each process.
//!
//! All traffic stays on loopback; every run is bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use support::{
    CLIENT_ID, Ca, FakePolicies, FakeResolver, SERVER_ID, SERVICE, allow, endpoint, known,
};
use tokio::sync::watch;
use weft_proxy::{
    accept::Forwarder,
    identity::Credentials,
    inbound::InboundSettings,
    metrics::{Direction, Metrics},
    tls::{Tls, sni_of},
};

/// Kept-alive client connections, each sending its share of the rate.
const CONNECTIONS: usize = 16;
/// The open loop's warm-up, not measured (connections, pools, estimates).
const WARM_UP: Duration = Duration::from_secs(2);
/// Turns each path's open-loop time is split into.
const ROUNDS: u32 = 15;
/// The closed-loop run's length.
const CLOSED_LOOP: Duration = Duration::from_secs(3);
/// The request every client sends.
const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\n\r\n";
/// The application's answer body.
const ANSWER: &str = "ok: a small answer, as most API responses are";

fn main() -> ExitCode {
    if let Ok(role) = std::env::var("WEFT_BENCH_PROXY") {
        proxy_process(&role);
        return ExitCode::SUCCESS;
    }
    let rate: u32 = env_or("WEFT_BENCH_RATE", 1000);
    let seconds: u64 = env_or("WEFT_BENCH_SECONDS", 15);
    let duration = Duration::from_secs(seconds);
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_certificates(&dir);
    let app = start_app();

    let server = ProxyProcess::start("server", &dir, app);
    let client = ProxyProcess::start("client", &dir, server.addr);
    let haproxy = HaproxyPair::start(&dir, app);
    let paths = [
        ("direct (no proxy)", app, Vec::new()),
        (
            "weft pair (mTLS)",
            client.addr,
            vec![client.child.id(), server.child.id()],
        ),
        ("haproxy pair (mTLS)", haproxy.client, haproxy.pids()),
    ];

    // Warm every path (its connections are kept for all its turns), then measure
    // them in short turns, so a noisy moment of a shared machine falls on all of
    // them alike.
    let mut conns: Vec<Vec<Option<Conn>>> = Vec::new();
    for (_, target, _) in &paths {
        let (_, warm) = open_loop(*target, Vec::new(), rate, WARM_UP);
        conns.push(warm);
    }
    let mut runs: Vec<Run> = paths.iter().map(|_| Run::default()).collect();
    for _ in 0..ROUNDS {
        for (((_, target, pids), run), kept) in paths.iter().zip(&mut runs).zip(&mut conns) {
            let before = cpu_time(pids);
            let (figures, back) = open_loop(*target, std::mem::take(kept), rate, duration / ROUNDS);
            run.cpu += cpu_time(pids).saturating_sub(before);
            run.add(figures);
            *kept = back;
        }
    }
    drop(conns);
    println!(
        "dataplane: HTTP/1.1 keep-alive GET, {rate} requests/s over {CONNECTIONS} connections \
         for {seconds} s per path in {ROUNDS} turns (open loop, latency from when each request \
         was due); the proxies' CPU time per request (both proxies of the pair together, \
         open loop); then the most each path carries back to back"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>12} {:>8} {:>15} {:>18}",
        "path",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "achieved/s",
        "errors",
        "proxy CPU/req",
        "closed-loop max/s"
    );
    for ((name, target, pids), run) in paths.iter().zip(&mut runs) {
        let max = closed_loop(*target, CLOSED_LOOP);
        run.latencies.sort_unstable();
        let cpu = if pids.is_empty() {
            "-".to_string()
        } else {
            let per_request = run.cpu.as_secs_f64() / run.latencies.len().max(1) as f64;
            format!("{:.1} us", per_request * 1e6)
        };
        println!(
            "{name:<22} {:>9.3} {:>9.3} {:>9.3} {:>12.0} {:>8} {cpu:>15} {max:>18.0}",
            ms(run.quantile(0.5)),
            ms(run.quantile(0.99)),
            ms(run.quantile(0.999)),
            run.latencies.len() as f64 / run.elapsed.as_secs_f64(),
            run.errors,
        );
    }
    let added = |run: &Run| ms(run.quantile(0.99).saturating_sub(runs[0].quantile(0.99)));
    println!(
        "p99 added over direct: weft pair {:.3} ms, haproxy pair {:.3} ms (target: weft < haproxy)",
        added(&runs[1]),
        added(&runs[2])
    );
    println!(
        "weft proxy peak RSS: client {:.1} MB, server {:.1} MB (target <= 20 MB each)",
        client.peak_rss_kib() as f64 / 1024.0,
        server.peak_rss_kib() as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The test CA's anchor and, for each side, a certificate and key: for the Weft
/// proxies as the operator issues them (a SPIFFE id), and for HAProxy the same
/// with the SNI as a DNS name (HAProxy checks the name, Weft the SPIFFE id).
fn write_certificates(dir: &Path) {
    let ca = Ca::new();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    for (side, identity) in [("client", CLIENT_ID), ("server", SERVER_ID)] {
        let (cert, key) = ca.issue(identity, None);
        std::fs::write(dir.join(format!("{side}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{side}.key")), key).unwrap();
        let sni = sni_of(identity).unwrap();
        let (cert, key) = ca.issue(identity, Some(&sni));
        std::fs::write(dir.join(format!("{side}-haproxy.pem")), cert + &key).unwrap();
    }
}

/// The application: answers every request with [`ANSWER`], on a runtime of its own.
fn start_app() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let _ = conn.set_nodelay(true);
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from_static(
                            ANSWER.as_bytes(),
                        )),
                    ))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service),
                );
            }
        });
    });
    addr
}

/// One path's open-loop figures, over its turns.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
    /// The CPU time its proxies spent in its turns.
    cpu: Duration,
}

impl Run {
    fn add(&mut self, (latencies, errors, elapsed): (Vec<Duration>, u64, Duration)) {
        self.latencies.extend(latencies);
        self.errors += errors;
        self.elapsed += elapsed;
    }

    /// The `q` quantile of the sorted latencies.
    fn quantile(&self, q: f64) -> Duration {
        let index = ((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        self.latencies.get(index).copied().unwrap_or_default()
    }
}

/// [`CONNECTIONS`] threads, each sending its share of `rate` on schedule for
/// `duration` on its connection of `conns` (opened when missing): every latency (from
/// when the request was due), the errors, and the time from start to the last
/// answer; and the connections, for the next turn.
fn open_loop(
    target: SocketAddr,
    mut conns: Vec<Option<Conn>>,
    rate: u32,
    duration: Duration,
) -> ((Vec<Duration>, u64, Duration), Vec<Option<Conn>>) {
    conns.resize_with(CONNECTIONS, || None);
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / f64::from(rate));
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| {
            let offset = Duration::from_secs_f64(k as f64 / f64::from(rate));
            std::thread::spawn(move || {
                let mut conn = conn.or_else(|| Conn::open(target));
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut last = start;
                for i in 0.. {
                    let due = start + offset + interval * i;
                    if due >= start + duration {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    match conn.as_mut().map(Conn::request) {
                        Some(Ok(())) => {
                            last = Instant::now();
                            latencies.push(last - due);
                        }
                        _ => {
                            errors += 1;
                            conn = Conn::open(target);
                        }
                    }
                }
                (latencies, errors, last, conn)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut last = start;
    let mut kept = Vec::new();
    for thread in threads {
        let (latencies, e, l, conn) = thread.join().unwrap();
        all.extend(latencies);
        errors += e;
        last = last.max(l);
        kept.push(conn);
    }
    ((all, errors, last.saturating_duration_since(start)), kept)
}

/// Requests per second [`CONNECTIONS`] connections complete back to back.
fn closed_loop(target: SocketAddr, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut done = 0u64;
                let Some(mut conn) = Conn::open(target) else {
                    return 0;
                };
                while Instant::now() < deadline && conn.request().is_ok() {
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    done as f64 / duration.as_secs_f64()
}

/// A kept-alive HTTP/1.1 client connection, blocking.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(target: SocketAddr) -> Option<Self> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).ok()?;
        stream.set_nodelay(true).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends [`REQUEST`] and reads one whole `200` answer (with a `content-length`).
    fn request(&mut self) -> std::io::Result<()> {
        self.stream.write_all(REQUEST)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(std::io::Error::other)?;
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(std::io::Error::other(format!("answered {head}")));
                }
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(|| std::io::Error::other("no content-length"))?;
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(());
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A Weft proxy in a process of its own, stopped when dropped.
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
}

impl ProxyProcess {
    /// Starts this binary as the `role` proxy (`client` or `server`) forwarding to
    /// `target`: for the client, the server proxy; for the server, the application.
    fn start(role: &str, dir: &Path, target: SocketAddr) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("WEFT_BENCH_PROXY", role)
            .env("WEFT_BENCH_DIR", dir)
            .env("WEFT_BENCH_TARGET", target.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the {role} proxy did not start: {line:?}"));
        Self { child, addr }
    }

    /// The process's peak resident set, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy process: a Weft outbound (`client`) or inbound (`server`) listener
/// configured as the operator would, until its stdin closes.
fn proxy_process(role: &str) {
    let dir = PathBuf::from(std::env::var("WEFT_BENCH_DIR").unwrap());
    let target: SocketAddr = std::env::var("WEFT_BENCH_TARGET").unwrap().parse().unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let credentials = Credentials::from_pem(
        &read(&format!("{role}.pem")),
        &read(&format!("{role}.key")),
        &read("ca.pem"),
        i64::MAX,
    )
    .unwrap();
    // The sidecar's runtime (see `main.rs`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (_credentials, rx) = watch::channel(Some(credentials));
        let metrics = Arc::new(Metrics::new());
        let (_stop, shutdown) = watch::channel(false);
        let any = "127.0.0.1:0".parse().unwrap();
        let forwarder = if role == "client" {
            let resolver = Arc::new(FakeResolver::default());
            resolver.set(SERVICE, known(vec![endpoint(target, SERVER_ID)], "1"));
            Forwarder::bind(Direction::Outbound, any)
                .await
                .unwrap()
                .with_fixed_target(SERVICE.parse().unwrap())
                .with_resolver(resolver)
        } else {
            let policies = Arc::new(FakePolicies::default());
            policies.set(allow(&[CLIENT_ID], false));
            Forwarder::bind(Direction::Inbound, any)
                .await
                .unwrap()
                .with_fixed_target(target)
                .with_policies(policies)
                .with_inbound_settings(InboundSettings::default())
        }
        .with_tls(Tls::new(rx));
        println!("{}", forwarder.local_addr());
        std::io::stdout().flush().unwrap();
        forwarder.spawn(metrics, shutdown);
        // Until the benchmark closes our stdin.
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
    });
}

/// Two HAProxy processes: a client side taking plaintext HTTP and an mTLS server
/// side in front of the application, TLS 1.3 with client certificates, both checked
/// against the test CA.
struct HaproxyPair {
    client: SocketAddr,
    processes: Vec<Child>,
}

impl HaproxyPair {
    fn start(dir: &Path, app: SocketAddr) -> Self {
        let client = free_port();
        let server = free_port();
        let sni = sni_of(SERVER_ID).unwrap();
        let d = dir.display();
        let common = "global\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  \
                      timeout client 30s\n  timeout server 30s\n  http-reuse always\n";
        let server_side = format!(
            "{common}frontend in\n  bind {server} ssl crt {d}/server-haproxy.pem ca-file {d}/ca.pem \
             verify required ssl-min-ver TLSv1.3\n  default_backend app\nbackend app\n  server app {app}\n"
        );
        let client_side = format!(
            "{common}frontend out\n  bind {client}\n  default_backend web\nbackend web\n  \
             server web {server} ssl verify required ca-file {d}/ca.pem crt {d}/client-haproxy.pem \
             sni str({sni}) verifyhost {sni} ssl-min-ver TLSv1.3\n"
        );
        let mut processes = Vec::new();
        for (name, config, addr) in [
            ("server", server_side, server),
            ("client", client_side, client),
        ] {
            let path = dir.join(format!("haproxy-{name}.cfg"));
            std::fs::write(&path, config).unwrap();
            let child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(Stdio::null())
                .spawn()
                .expect("haproxy: run proxy/benches/setup.sh (make bench does) to install it");
            processes.push(child);
            wait_listening(addr);
        }
        Self { client, processes }
    }

    fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Child::id).collect()
    }
}

impl Drop for HaproxyPair {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CPU time the processes `pids` have run, all their threads together (from
/// each thread's `schedstat`, in nanoseconds).
fn cpu_time(pids: &[u32]) -> Duration {
    let mut total = 0u64;
    for pid in pids {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for thread in threads.flatten() {
            let Ok(stat) = std::fs::read_to_string(thread.path().join("schedstat")) else {
                continue;
            };
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// A loopback address nothing listens on (yet).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

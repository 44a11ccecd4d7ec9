//! The real `weft-proxy` binary, run as a process: configuration errors, the admin
//! server, and graceful shutdown.

// Helpers outside `#[test]` functions too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

fn proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
    cmd.env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Where the admin server listens: a loopback address of its own, on a port the
/// kernel chooses (read back from `/proc`).
const ADMIN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A port no one listened on a moment ago, for the inbound and outbound listeners
/// (which must have ports of their own, so not both 0). Someone may take it before the
/// proxy does: [`start`] then sees the proxy exit naming the address in use, and tries
/// other ports.
fn port_free_a_moment_ago() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A running proxy: the process, its admin port, and what it logged so far.
struct Proxy {
    child: Child,
    admin: u16,
    log: Arc<Mutex<String>>,
}

/// Starts the proxy with `grace_period`, and waits for its admin server.
fn start(grace_period: &str) -> Proxy {
    for _ in 0..5 {
        let (inbound, outbound) = (port_free_a_moment_ago(), port_free_a_moment_ago());
        let mut child = proxy()
            .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", format!("{ADMIN_IP}:0"))
            .env(
                "WEFT_PROXY_INBOUND_LISTEN_ADDR",
                format!("127.0.0.1:{inbound}"),
            )
            .env(
                "WEFT_PROXY_OUTBOUND_LISTEN_ADDR",
                format!("127.0.0.1:{outbound}"),
            )
            .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", grace_period)
            .spawn()
            .unwrap();
        // The log, read as it comes (a full pipe would stall the proxy).
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader thread take the last of the log.
                sleep(Duration::from_millis(100));
                let log = log.lock().unwrap().clone();
                assert!(
                    log.contains("cannot listen on the") && log.contains("in use"),
                    "the proxy exited before serving ({status}):\n{log}"
                );
                break;
            }
            // The admin server is bound last: once it listens, the proxy holds all
            // three ports.
            if let Some(admin) = listening(child.id())
                .into_iter()
                .find_map(|a| (*a.ip() == ADMIN_IP).then_some(a.port()))
            {
                return Proxy { child, admin, log };
            }
            assert!(
                Instant::now() < deadline,
                "the admin server never came up:\n{}",
                log.lock().unwrap()
            );
            sleep(Duration::from_millis(20));
        }
    }
    panic!("five tries, each meeting a port taken by someone else");
}

/// The IPv4 addresses the process `pid` listens on, from its sockets in `/proc`.
fn listening(pid: u32) -> Vec<SocketAddrV4> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let sockets: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st(ate) 0A = LISTEN, inode.
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !sockets.iter().any(|s| s == inode) {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            Some(SocketAddrV4::new(ip, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// A GET over a fresh connection: (status code, body).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect((ADMIN_IP, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn bad_environment_exits_64_naming_every_bad_variable() {
    let out = proxy()
        .env("WEFT_PROXY_LOG_FORMAT", "xml")
        .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", "not-an-address")
        .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "-3s")
        .env("WEFT_PROXY_INBOUND_OPAQUE_PORTS", "3306,99999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "WEFT_PROXY_LOG_FORMAT",
        "WEFT_PROXY_ADMIN_LISTEN_ADDR",
        "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD",
        "WEFT_PROXY_INBOUND_OPAQUE_PORTS",
    ] {
        assert!(stderr.contains(var), "{var} not named in:\n{stderr}");
    }
    assert!(stderr.contains("4 bad variables"), "{stderr}");
}

#[test]
fn admin_serves_live_ready_metrics_and_shuts_down_on_sigterm() {
    let Proxy {
        mut child,
        admin,
        log,
    } = start("5s");

    assert_eq!(get(admin, "/live").unwrap().0, 200);
    let (status, body) = get(admin, "/ready").unwrap();
    assert_eq!(status, 503, "no identity, no config: not ready");
    assert!(body.contains("no identity certificate yet"), "{body}");
    let (status, body) = get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("proxy_build_info{version=\""), "{body}");
    assert!(body.contains("process_start_time_seconds "), "{body}");
    assert_eq!(get(admin, "/nope").unwrap().0, 404);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after SIGTERM"
        );
        sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        log.lock().unwrap()
    );
    let after = get(admin, "/live");
    assert!(
        matches!(&after, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the admin port is closed after shutdown: {after:?}"
    );
}

//! The real `weft-proxy` binary, run as a process: configuration errors, the admin
//! server, and graceful shutdown.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A GET over a fresh connection: (status code, body).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
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

fn wait_for_admin(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(port, "/live").is_err() {
        assert!(
            child.try_wait().expect("child status").is_none(),
            "the proxy exited before serving"
        );
        assert!(Instant::now() < deadline, "the admin server never came up");
        sleep(Duration::from_millis(50));
    }
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
    let (admin, inbound, outbound) = (free_port(), free_port(), free_port());
    let mut child = proxy()
        .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", format!("127.0.0.1:{admin}"))
        .env(
            "WEFT_PROXY_INBOUND_LISTEN_ADDR",
            format!("127.0.0.1:{inbound}"),
        )
        .env(
            "WEFT_PROXY_OUTBOUND_LISTEN_ADDR",
            format!("127.0.0.1:{outbound}"),
        )
        .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "5s")
        .spawn()
        .unwrap();
    wait_for_admin(admin, &mut child);

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
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        get(admin, "/live").is_err(),
        "the admin port is closed after shutdown"
    );
}

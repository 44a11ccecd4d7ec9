//! Arbitrary bytes from an application to the outbound proxy's HTTP side: HTTP/2 when
//! they start with the connection preface, HTTP/1 otherwise. The destination has no
//! endpoint, so every request the parser accepts is answered 503 by the proxy itself;
//! whatever the bytes, the connection must end without a panic, and within 10 s of the
//! client's end (a hang is a crash too).
#![no_main]

use std::{sync::Arc, sync::LazyLock, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy::{
    balance::Balancer,
    http::{Destination, Pool, Version, serve},
    metrics::{Direction, Metrics, TcpLabels},
};
use weft_proxy_api::v1::Resolution;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    RUNTIME.block_on(async {
        let version = if data.starts_with(b"PRI * HTTP/2.0") {
            Version::Http2
        } else {
            Version::Http1
        };
        let resolution = Resolution {
            known: true,
            ..Resolution::default()
        };
        let destination = Arc::new(Destination {
            labels: TcpLabels::new(Direction::Outbound),
            forbidden: false,
            prepared: Arc::default(),
            resolution: tokio::sync::watch::channel(Some(Arc::new(resolution))).1,
            balancer: Arc::new(Balancer::default()),
            pool: Arc::new(Pool::default()),
            tls: None,
            metrics: Arc::new(Metrics::new()),
            counters: Default::default(),
        });
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let served = tokio::spawn(serve(server, version, destination, shutdown));
        // Written and read at once: the proxy may answer before it has read everything.
        let (mut reader, mut writer) = tokio::io::split(client);
        let exchange = async {
            let written = async {
                // The proxy may close before it has read everything: not a failure.
                let _ = writer.write_all(data).await;
                let _ = writer.shutdown().await;
            };
            let mut answer = Vec::new();
            let (_, read) = tokio::join!(written, reader.read_to_end(&mut answer));
            read
        };
        // A connection the proxy neither finishes nor closes is a hang: a crash.
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(_) => {}
            Err(_) => panic!("the proxy left the connection open 10 s after the client's end"),
        }
        match tokio::time::timeout(Duration::from_secs(10), served).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("serving the connection failed: {error}"),
            Err(_) => panic!("serving went on 10 s after the connection closed"),
        }
    });
});

//! No client of a pod can stall another's: each inbound client connection reaches the
//! application on HTTP/2 connections of its own. On one shared connection, a client
//! that never opens its flow-control window would let the application's responses
//! to it fill the shared connection's window, and every other client's responses
//! would wait behind them.

// Helpers outside `#[test]` functions too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use support::*;
use tokio::{net::TcpListener, time::Instant};
use tonic::transport::{Channel, Endpoint};
use weft_proxy::inbound::InboundSettings;
use weft_proxy_api::{
    testing::{STREAMED, ScriptedDestination, check_calls},
    v1::{ResolveRequest, destination_client::DestinationClient, destination_server},
};

/// The size of the authority a stalled client asks to resolve: the application sends
/// it back in each of [`STREAMED`] messages, so each response is several MiB, more
/// than an HTTP/2 stream's window to the application (hyper's: 2 MiB).
const LARGE: usize = 1024 * 1024;
/// How many responses the stalled client holds: together far more than an HTTP/2
/// connection's window to the application (hyper's: 5 MiB).
const STALLED_STREAMS: usize = 8;
/// How long the other client's calls may take: they take milliseconds, and forever
/// behind a stalled connection.
const BOUND: Duration = Duration::from_secs(5);

/// The gRPC application (the scripted Destination service) in plaintext HTTP/2.
async fn grpc_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(conn, _)| conn);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(destination_server::DestinationServer::new(
                ScriptedDestination,
            ))
            .serve_with_incoming(incoming),
    );
    addr
}

/// A client connection of its own to `addr`, in HTTP/2, with a stream window of
/// `window` bytes (`None`: the default).
async fn connect(addr: SocketAddr, window: Option<u32>) -> DestinationClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(window)
        .connect()
        .await
        .unwrap();
    DestinationClient::new(channel)
}

#[tokio::test]
async fn a_client_that_never_opens_its_window_does_not_stall_another_clients_calls() {
    let ca = Ca::new();
    let server = server(&ca, SERVER_ID, grpc_app().await, InboundSettings::default()).await;

    // Before: the other client's calls as they normally go.
    let started = Instant::now();
    let mut other = connect(server.addr, None).await;
    tokio::time::timeout(BOUND, check_calls(&mut other))
        .await
        .expect("answered at all")
        .unwrap();
    let normal = started.elapsed();
    drop(other);

    // A client with a window of zero opens streams whose large responses it never
    // reads: each response's head comes, none of its data can.
    let stalled = connect(server.addr, Some(0)).await;
    let mut held = Vec::new();
    for i in 0..STALLED_STREAMS {
        let request = ResolveRequest {
            authority: format!("{i}").repeat(LARGE),
            ..ResolveRequest::default()
        };
        let response = tokio::time::timeout(PATIENCE, stalled.clone().resolve(request))
            .await
            .expect("the stalled client's response heads come")
            .unwrap();
        held.push(response.into_inner());
    }
    // Time for the application to send what windows let it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another client, on a connection of its own: its calls go through as before.
    let started = Instant::now();
    let mut other = connect(server.addr, None).await;
    tokio::time::timeout(BOUND, check_calls(&mut other))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "another client's calls were not answered within {BOUND:?} (normally {normal:?}) \
                 while a client held {STALLED_STREAMS} responses of {} MiB unread",
                STREAMED * LARGE / (1024 * 1024)
            )
        })
        .unwrap();
    eprintln!(
        "another client's calls: {normal:?} before, {:?} beside the stalled client",
        started.elapsed()
    );
    drop(held);
}

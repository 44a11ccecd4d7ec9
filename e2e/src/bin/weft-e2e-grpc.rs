//! The gRPC application of the end-to-end tests (image `weft.local/weft-e2e-grpc`):
//!
//! - `weft-e2e-grpc serve PORT` serves the scripted Destination service
//!   (`weft_proxy_api::testing`) in plaintext HTTP/2, as an application does behind
//!   its proxy;
//! - `weft-e2e-grpc call URI` makes a unary call, a refused unary call and a
//!   streaming call whose status comes in trailers, checks every answer, and exits
//!   non-zero with what differed.

use std::{net::SocketAddr, process::ExitCode};

use weft_proxy_api::{
    testing::{ScriptedDestination, check_calls},
    v1::{destination_client::DestinationClient, destination_server::DestinationServer},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", port] => serve(port).await,
        ["call", uri] => call(uri).await,
        _ => Err("usage: weft-e2e-grpc serve PORT | call URI".to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-e2e-grpc: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: &str) -> Result<(), String> {
    let port: u16 = port.parse().map_err(|e| format!("port {port}: {e}"))?;
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    tonic::transport::Server::builder()
        .add_service(DestinationServer::new(ScriptedDestination))
        .serve(addr)
        .await
        .map_err(|e| format!("serving on {addr}: {e}"))
}

async fn call(uri: &str) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_string())
        .map_err(|e| format!("{uri}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connecting to {uri}: {e}"))?;
    check_calls(&mut DestinationClient::new(channel)).await?;
    println!("unary, refused unary and streaming calls answered as scripted");
    Ok(())
}

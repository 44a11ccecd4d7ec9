//! The `weft-proxy` binary: read `WEFT_PROXY_*`, set up logs, run.
//!
//! `weft-proxy init` instead writes the pod's traffic capture rules and exits (the
//! injected init container). `weft-proxy await-ready` waits until the proxy's `/ready`
//! answers 200 (the `postStart` hook of a proxy that is not a native sidecar).

use std::process::ExitCode;

/// `EX_USAGE`: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;
/// How long `await-ready` waits for the proxy.
const AWAIT_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn main() -> ExitCode {
    let config = match weft_proxy::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprint!("weft-proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("init") {
        let capture = weft_proxy::init::Capture::from_config(&config);
        return match weft_proxy::init::apply(&capture) {
            Ok(script) => {
                print!("{script}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("weft-proxy init: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args().nth(1).as_deref() == Some("await-ready") {
        return match weft_proxy::admin::await_ready(config.admin_addr, AWAIT_READY_TIMEOUT) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("weft-proxy await-ready: {error}");
                ExitCode::FAILURE
            }
        };
    }
    weft_proxy::telemetry::init(&config.log, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(weft_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "proxy failed");
            ExitCode::FAILURE
        }
    }
}

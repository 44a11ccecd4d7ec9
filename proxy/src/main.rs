//! The `weft-proxy` binary: read `WEFT_PROXY_*`, set up logs, run.

use std::process::ExitCode;

/// `EX_USAGE`: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match weft_proxy::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprint!("weft-proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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

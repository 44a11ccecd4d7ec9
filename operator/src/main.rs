//! The `weft-operator` binary: parse the configuration, set up logs, run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = weft_operator::Args::parse();
    weft_operator::telemetry::init(&args.log_level, args.log_format)?;
    weft_operator::run(args).await
}

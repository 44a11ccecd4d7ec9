//! Logs: `tracing` to stderr, plain or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global logger. The filter was validated with the configuration; a
/// directive `tracing` still refuses is skipped rather than failing the proxy.
pub fn init(filter: &str, format: LogFormat) {
    let env_filter = EnvFilter::builder().parse_lossy(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

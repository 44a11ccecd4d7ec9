//! The operator's configuration: flags, each also settable by an environment variable.

use std::net::SocketAddr;

use crate::{
    discovery::proxies::{self, StreamLimits},
    identity::certify::{Limits, Rate, limit},
};

/// The Weft operator: the control plane of the Weft service mesh.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "weft-operator", version, about)]
pub struct Args {
    /// Where the admin server (`/healthz`, `/readyz`, `/metrics`) listens.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,

    /// The log filter, in `tracing` directive syntax (`info`, `weft_operator=debug`).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,

    /// The log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Where the proxy API (Certify and the discovery streams) listens.
    #[arg(long, env = "WEFT_PROXY_API_ADDR", default_value = "0.0.0.0:8090")]
    pub proxy_api_addr: SocketAddr,

    /// Where the injection webhook listens (HTTPS; the `weft-webhook` Service's target).
    #[arg(long, env = "WEFT_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,

    /// The proxy image injected when the Mesh names none: this release's proxy.
    #[arg(
        long,
        env = "WEFT_PROXY_IMAGE",
        default_value = "weft.local/weft-proxy:dev"
    )]
    pub proxy_image: String,

    /// The operator's namespace: where its Secrets live and its Services are.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "weft-system")]
    pub namespace: String,

    /// The operator's ServiceAccount, which names its own mesh identity.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT", default_value = "weft-operator")]
    pub service_account: String,

    /// The cluster's DNS domain.
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// How long a new trust bundle takes to reach every proxy (the kubelet's ConfigMap
    /// sync), in seconds: a rotated trust anchor signs only after this long.
    #[arg(long, env = "WEFT_BUNDLE_PROPAGATION_SECONDS", default_value_t = 120)]
    pub bundle_propagation_seconds: u64,

    /// The most Destination streams one pod's proxy may hold open on this operator.
    #[arg(
        long,
        env = "WEFT_MAX_STREAMS_PER_POD",
        default_value_t = proxies::MAX_STREAMS_PER_POD,
        value_parser = at_least_one()
    )]
    pub max_streams_per_pod: usize,

    /// The most Destination streams the pods of one ServiceAccount (one mesh identity)
    /// may hold open on this operator.
    #[arg(
        long,
        env = "WEFT_MAX_STREAMS_PER_IDENTITY",
        default_value_t = proxies::MAX_STREAMS_PER_IDENTITY,
        value_parser = at_least_one()
    )]
    pub max_streams_per_identity: usize,

    /// The most Destination streams this operator holds open in total.
    #[arg(
        long,
        env = "WEFT_MAX_STREAMS",
        default_value_t = proxies::MAX_STREAMS,
        value_parser = at_least_one()
    )]
    pub max_streams: usize,

    /// Certificates Certify issues per second to the pods of one ServiceAccount, after
    /// a burst of `--certify-burst-per-service-account`; beyond, RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "WEFT_CERTIFY_RATE_PER_SERVICE_ACCOUNT",
        default_value_t = limit::PER_SERVICE_ACCOUNT.per_second,
        value_parser = positive_rate
    )]
    pub certify_rate_per_service_account: f64,

    /// The burst of `--certify-rate-per-service-account`.
    #[arg(
        long,
        env = "WEFT_CERTIFY_BURST_PER_SERVICE_ACCOUNT",
        default_value_t = limit::PER_SERVICE_ACCOUNT.burst,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub certify_burst_per_service_account: u32,

    /// Certificates Certify issues per second in total, after a burst of
    /// `--certify-burst`.
    #[arg(
        long,
        env = "WEFT_CERTIFY_RATE",
        default_value_t = limit::GLOBAL.per_second,
        value_parser = positive_rate
    )]
    pub certify_rate: f64,

    /// The burst of `--certify-rate`.
    #[arg(
        long,
        env = "WEFT_CERTIFY_BURST",
        default_value_t = limit::GLOBAL.burst,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub certify_burst: u32,

    /// TokenReviews per second that Certify calls from one peer address may cause
    /// (tokens already reviewed cause none), after a burst of
    /// `--token-review-burst-per-peer`.
    #[arg(
        long,
        env = "WEFT_TOKEN_REVIEW_RATE_PER_PEER",
        default_value_t = limit::REVIEWS_PER_PEER.per_second,
        value_parser = positive_rate
    )]
    pub token_review_rate_per_peer: f64,

    /// The burst of `--token-review-rate-per-peer`.
    #[arg(
        long,
        env = "WEFT_TOKEN_REVIEW_BURST_PER_PEER",
        default_value_t = limit::REVIEWS_PER_PEER.burst,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub token_review_burst_per_peer: u32,

    /// TokenReviews per second that Certify calls may cause in total, after a burst
    /// of `--token-review-burst`.
    #[arg(
        long,
        env = "WEFT_TOKEN_REVIEW_RATE",
        default_value_t = limit::REVIEWS.per_second,
        value_parser = positive_rate
    )]
    pub token_review_rate: f64,

    /// The burst of `--token-review-rate`.
    #[arg(
        long,
        env = "WEFT_TOKEN_REVIEW_BURST",
        default_value_t = limit::REVIEWS.burst,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub token_review_burst: u32,

    /// The operator's pod name, to tell replicas apart in Events.
    #[arg(long, env = "WEFT_POD_NAME", default_value = "")]
    pub pod_name: String,
}

impl Args {
    /// The limits on Destination streams.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            per_pod: self.max_streams_per_pod,
            per_identity: self.max_streams_per_identity,
            total: self.max_streams,
        }
    }
}

impl Args {
    /// The limits of Certify.
    pub fn certify_limits(&self) -> Limits {
        Limits {
            per_service_account: Rate::new(
                self.certify_rate_per_service_account,
                self.certify_burst_per_service_account,
            ),
            global: Rate::new(self.certify_rate, self.certify_burst),
            reviews_per_peer: Rate::new(
                self.token_review_rate_per_peer,
                self.token_review_burst_per_peer,
            ),
            reviews: Rate::new(self.token_review_rate, self.token_review_burst),
            ..Limits::default()
        }
    }
}

/// A rate per second: a finite number above zero.
fn positive_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!("{text} is not a rate above zero"))
    }
}

/// A count of at least one.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A log format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_and_flags() {
        let args = Args::try_parse_from(["weft-operator"]).unwrap();
        assert_eq!(args.admin_addr, "0.0.0.0:9990".parse().unwrap());
        assert_eq!(args.log_format, LogFormat::Plain);
        assert_eq!(args.stream_limits(), StreamLimits::default());
        assert_eq!(args.certify_limits(), Limits::default());
        let args = Args::try_parse_from([
            "weft-operator",
            "--log-format=json",
            "--admin-addr=127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.admin_addr.port(), 1);
        let args = Args::try_parse_from([
            "weft-operator",
            "--max-streams-per-pod=8",
            "--max-streams-per-identity=16",
            "--max-streams=32",
        ])
        .unwrap();
        assert_eq!(
            args.stream_limits(),
            StreamLimits {
                per_pod: 8,
                per_identity: 16,
                total: 32
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = Args::try_parse_from(["weft-operator", "--admin-addr=nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--admin-addr"), "{err}");
        let err = Args::try_parse_from(["weft-operator", "--log-format=xml"]).unwrap_err();
        assert!(err.to_string().contains("--log-format"), "{err}");
        let err = Args::try_parse_from(["weft-operator", "--max-streams-per-pod=0"]).unwrap_err();
        assert!(err.to_string().contains("--max-streams-per-pod"), "{err}");
        for bad in [
            "--certify-rate=0",
            "--certify-rate=-1",
            "--certify-rate=inf",
        ] {
            let err = Args::try_parse_from(["weft-operator", bad]).unwrap_err();
            assert!(err.to_string().contains("--certify-rate"), "{err}");
        }
        let err = Args::try_parse_from(["weft-operator", "--certify-burst-per-service-account=0"])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("--certify-burst-per-service-account"),
            "{err}"
        );
    }

    #[test]
    fn certify_limits_from_flags() {
        let args = Args::try_parse_from([
            "weft-operator",
            "--certify-rate-per-service-account=0.5",
            "--certify-burst-per-service-account=3",
            "--certify-rate=40",
            "--certify-burst=80",
            "--token-review-rate-per-peer=2",
            "--token-review-burst-per-peer=4",
            "--token-review-rate=8",
            "--token-review-burst=16",
        ])
        .unwrap();
        assert_eq!(
            args.certify_limits(),
            Limits {
                per_service_account: Rate::new(0.5, 3),
                global: Rate::new(40.0, 80),
                reviews_per_peer: Rate::new(2.0, 4),
                reviews: Rate::new(8.0, 16),
                ..Limits::default()
            }
        );
    }
}

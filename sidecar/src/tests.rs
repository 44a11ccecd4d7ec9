use super::*;
use std::collections::HashMap;

fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(|name| vars.get(name).cloned())
}

#[test]
fn defaults_when_nothing_is_set() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.admin_addr.port(), 4191);
    assert_eq!(c.inbound_addr.port(), 4143);
    assert_eq!(c.outbound_addr, "127.0.0.1:4140".parse().unwrap());
    assert_eq!(c.control_addr.port, 8090);
    assert_eq!(c.detect_timeout, Duration::from_secs(10));
    assert_eq!(c.shutdown_grace_period, Duration::from_secs(30));
    assert_eq!(
        c.inbound_opaque_ports,
        [25, 587, 3306, 4444, 5432, 6379, 9300, 11211]
    );
    assert_eq!(c.default_inbound_policy, DefaultPolicy::AllUnauthenticated);
    assert_eq!(c.log_format, LogFormat::Plain);
    assert_eq!(c.identity, None);
}

#[test]
fn every_variable_is_read() {
    let c = parse(&[
        (ENV_LOG, "debug"),
        (ENV_LOG_FORMAT, "json"),
        (ENV_ADMIN_LISTEN_ADDR, "[::]:9191"),
        (ENV_INBOUND_LISTEN_ADDR, "0.0.0.0:9143"),
        (ENV_OUTBOUND_LISTEN_ADDR, "127.0.0.1:9140"),
        (ENV_CONTROL_ADDR, "198.19.0.20:8090"),
        (ENV_IDENTITY, "spiffe://cluster.local/ns/shop/sa/web"),
        (ENV_IDENTITY_TOKEN_FILE, "/t"),
        (ENV_TRUST_BUNDLE_FILE, "/b.pem"),
        (ENV_DETECT_TIMEOUT, "500ms"),
        (ENV_SHUTDOWN_GRACE_PERIOD, "2m"),
        (ENV_INBOUND_OPAQUE_PORTS, "3306, 5432"),
        (ENV_DEFAULT_INBOUND_POLICY, "deny"),
        (ENV_UID, "3000"),
        (ENV_SKIP_INBOUND_PORTS, "22"),
        (ENV_SKIP_OUTBOUND_PORTS, "443,25"),
        (ENV_SKIP_OUTBOUND_SUBNETS, "169.254.169.254/32, 10.0.0.0/8"),
    ])
    .unwrap();
    assert_eq!(c.uid, 3000);
    assert_eq!(c.skip_inbound_ports, [22]);
    assert_eq!(c.skip_outbound_ports, [443, 25]);
    assert_eq!(
        c.skip_outbound_subnets,
        ["169.254.169.254/32", "10.0.0.0/8"]
    );
    assert_eq!(c.log, "debug");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.admin_addr, "[::]:9191".parse().unwrap());
    assert_eq!(
        c.control_addr,
        ControlAddr {
            host: "198.19.0.20".into(),
            port: 8090
        }
    );
    assert_eq!(
        c.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert_eq!(c.identity_token_file, "/t");
    assert_eq!(c.detect_timeout, Duration::from_millis(500));
    assert_eq!(c.shutdown_grace_period, Duration::from_secs(120));
    assert_eq!(c.inbound_opaque_ports, [3306, 5432]);
    assert_eq!(c.default_inbound_policy, DefaultPolicy::Deny);
    assert_eq!(
        parse(&[(ENV_INBOUND_OPAQUE_PORTS, "")])
            .unwrap()
            .inbound_opaque_ports,
        Vec::<u16>::new()
    );
}

#[test]
fn every_bad_variable_is_reported_at_once() {
    let err = parse(&[
        (ENV_LOG, "info; rm -rf"),
        (ENV_LOG_FORMAT, "xml"),
        (ENV_ADMIN_LISTEN_ADDR, "4191"),
        (ENV_INBOUND_LISTEN_ADDR, "0.0.0.0:99999"),
        (ENV_CONTROL_ADDR, "no-port"),
        (ENV_IDENTITY, "spiffe://cluster.local/sa/web"),
        (ENV_IDENTITY_TOKEN_FILE, "relative/token"),
        (ENV_DETECT_TIMEOUT, "-1s"),
        (ENV_SHUTDOWN_GRACE_PERIOD, "30"),
        (ENV_INBOUND_OPAQUE_PORTS, "3306,0,http"),
        (ENV_DEFAULT_INBOUND_POLICY, "allow"),
        (ENV_UID, "0"),
        (ENV_SKIP_OUTBOUND_SUBNETS, "10.0.0.0/33"),
    ])
    .unwrap_err();
    let names: Vec<&str> = err.0.iter().map(|v| v.name).collect();
    assert_eq!(
        names,
        [
            ENV_LOG,
            ENV_LOG_FORMAT,
            ENV_ADMIN_LISTEN_ADDR,
            ENV_INBOUND_LISTEN_ADDR,
            ENV_CONTROL_ADDR,
            ENV_IDENTITY,
            ENV_IDENTITY_TOKEN_FILE,
            ENV_DETECT_TIMEOUT,
            ENV_SHUTDOWN_GRACE_PERIOD,
            ENV_INBOUND_OPAQUE_PORTS,
            ENV_DEFAULT_INBOUND_POLICY,
            ENV_UID,
            ENV_SKIP_OUTBOUND_SUBNETS,
        ]
    );
    let report = err.to_string();
    assert!(report.contains("13 bad variables"), "{report}");
    assert!(
        report.contains("WEFT_PROXY_LOG_FORMAT=\"xml\": expected `plain` or `json`"),
        "{report}"
    );
    assert!(report.contains("\"0\" is not a port"), "{report}");
}

#[test]
fn ports_must_differ() {
    let err = parse(&[(ENV_ADMIN_LISTEN_ADDR, "0.0.0.0:4143")]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].reason.contains("must differ"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "s", "10", "1.5s", "10d", "-1s", "99999999999999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn control_addresses() {
    assert_eq!(
        parse_control_addr("[::1]:8090"),
        Ok(ControlAddr {
            host: "::1".into(),
            port: 8090
        })
    );
    for bad in ["", ":8090", "host:", "host:0", "host:http", "bad host:1"] {
        assert!(parse_control_addr(bad).is_err(), "{bad:?}");
    }
}

//! The Destination service in-process, fed by watches of the real API server, with the
//! proxy's real discovery client: a subscriber gets the initial state and every change
//! made with kubectl, an operator killed and restarted (a fresh index rebuilt from the
//! API server, fresh streams) resumes every stream without losing a change made while
//! it was down, and a client without a workload certificate is refused.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tonic::Code;
use weft_e2e::{eventually, kubectl_ok, kubectl_stdin, with_temp_ns};
use weft_operator::{
    discovery::{
        index::{Index, Key},
        watch,
    },
    identity::test_util::{TestProxyApi, proxy_api},
};
use weft_proxy_api::v1::{ResolveRequest, destination_client::DestinationClient};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A pod `client-1` (the proxy's own pod), a selector-less Service `web` and its
/// EndpointSlice with `ips` ready on port 8080.
fn objects(ns: &str, ips: &[&str]) -> String {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client-1, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: {ns}
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: {}
"#,
        Value::Array(endpoints)
    )
}

/// Feeds `api`'s index from watches of the API server, as an operator does. Dropping
/// the returned sender stops the watches.
fn feed(api: &TestProxyApi, client: kube::Client) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch::run(client, api.index.clone(), async move {
        let _ = stopped.await;
    }));
    stop
}

fn endpoints(config: &Value, authority: &str) -> Vec<String> {
    config["outbound"][authority]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn streams_follow_the_api_server_and_survive_an_operator_restart() {
    with_temp_ns("destination", |client, ns| async move {
        let applied = kubectl_stdin(&["apply", "-f", "-"], &objects(&ns, &["198.18.250.1"]));
        assert!(applied.success, "{}", applied.stderr);

        let mut api = proxy_api().await.ready().await;
        let watches = feed(&api, client.clone());
        let (credentials, trust_bundle_file) = api.certify(&ns, "default").await;
        let (_credentials_tx, credentials_rx) = tokio::sync::watch::channel(Some(credentials));
        let discovery = weft_proxy::discovery::Discovery::start(
            weft_proxy::discovery::Settings {
                control: api.control(),
                trust_bundle_file,
                pod: "client-1".into(),
                inbound_ports: vec![],
                idle: Duration::from_secs(600),
                max_resolutions: 16,
            },
            credentials_rx,
        );
        let authority = format!("web.{ns}.svc.cluster.local:80");
        let _resolution = discovery.resolve(&authority);
        let pod = Key::new(&ns, "client-1");

        // The initial state, then a change made with kubectl.
        eventually("the initial endpoints", TIMEOUT, || async {
            let config = discovery.config();
            let seen = endpoints(&config, &authority);
            (seen == ["198.18.250.1:8080"])
                .then_some(())
                .ok_or(format!("{seen:?}: {config}"))
        })
        .await;
        let applied = kubectl_stdin(
            &["apply", "-f", "-"],
            &objects(&ns, &["198.18.250.1", "198.18.250.2"]),
        );
        assert!(applied.success, "{}", applied.stderr);
        eventually("the added endpoint, acknowledged", TIMEOUT, || async {
            let seen = endpoints(&discovery.config(), &authority);
            let in_sync = api.proxies.report(&pod).is_some_and(|r| r.in_sync);
            (seen.len() == 2 && in_sync)
                .then_some(())
                .ok_or(format!("{seen:?}, in sync {in_sync}"))
        })
        .await;

        // The operator dies: streams end, its index and watches are gone.
        drop(watches);
        api.stop().await;
        // Changes while it is down: an endpoint leaves, another comes, a
        // ServiceProfile appears.
        let applied = kubectl_stdin(
            &["apply", "-f", "-"],
            &objects(&ns, &["198.18.250.2", "198.18.250.3"]),
        );
        assert!(applied.success, "{}", applied.stderr);
        let profile = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServiceProfile\n\
             metadata: {{name: web, namespace: {ns}}}\n\
             spec: {{service: web, routes: [{{name: all, condition: {{pathRegex: '/.*'}}}}]}}\n"
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &profile);
        assert!(applied.success, "{}", applied.stderr);
        let kept = endpoints(&discovery.config(), &authority);
        assert_eq!(kept.len(), 2, "the proxy keeps its last config: {kept:?}");

        // A new operator: a fresh index from the API server, the same port.
        api.index = Arc::new(Mutex::new(Index::new("cluster.local", "cluster.local")));
        let _watches = feed(&api, client.clone());
        api.restart().await;
        eventually(
            "every change made while down, acknowledged",
            TIMEOUT,
            || async {
                let config = discovery.config();
                let seen = endpoints(&config, &authority);
                let route = &config["outbound"][&authority]["profile"]["routes"][0]["name"];
                let in_sync = api.proxies.report(&pod).is_some_and(|r| r.in_sync);
                (seen == ["198.18.250.2:8080", "198.18.250.3:8080"] && route == "all" && in_sync)
                    .then_some(())
                    .ok_or(format!("{seen:?}, route {route}, in sync {in_sync}"))
            },
        )
        .await;

        // No workload certificate: refused, whatever the request.
        let anonymous = weft_proxy::identity::connect_as(&api.control(), &api.bundle, None)
            .await
            .expect("a TLS channel");
        let refused = DestinationClient::new(anonymous)
            .resolve(ResolveRequest {
                authority: authority.clone(),
                pod: "client-1".into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        kubectl_ok(&["delete", "pod", "client-1", "-n", &ns, "--wait=false"]);
    })
    .await;
}

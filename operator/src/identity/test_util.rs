//! Test data for identity, shared by the unit, integration and end-to-end tests and
//! the benchmark.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

/// A DER CSR for `identity` (a SPIFFE id) with a fresh P-256 key, as a proxy makes it.
pub fn csr(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
    let mut params = CertificateParams::default();
    let uri = identity.to_string().try_into().expect("a URI SAN");
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(&key)
        .expect("a CSR")
        .der()
        .to_vec()
}

/// A fresh trust anchor and an authority whose issuer it signed, for `cluster.local`,
/// handing out 24h leaves.
pub fn authority() -> (super::Ca, std::sync::Arc<super::Authority>) {
    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let now = time::OffsetDateTime::now_utc();
    let anchor = super::Ca::generate_anchor("cluster.local", 365 * DAY, now).expect("an anchor");
    let issuer = anchor
        .issue_intermediate("cluster.local", 30 * DAY, now)
        .expect("an issuer");
    let authority =
        super::Authority::new(issuer, anchor.cert_pem().to_string(), "cluster.local", DAY);
    (anchor, std::sync::Arc::new(authority))
}

/// A token reviewer for tests: a token `<namespace>/<serviceaccount>` belongs to that
/// ServiceAccount; anything else is rejected.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlashTokens;

impl super::certify::TokenReviewer for SlashTokens {
    async fn review(
        &self,
        token: &str,
    ) -> Result<super::certify::TokenOwner, super::certify::ReviewError> {
        let (namespace, service_account) = token.split_once('/').ok_or_else(|| {
            super::certify::ReviewError::Rejected(format!("unknown token {token:?}"))
        })?;
        Ok(super::certify::TokenOwner {
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }
}

/// A proxy API server on a loopback port of its own, with a fresh [`authority`] and
/// [`SlashTokens`], serving `localhost`. It stops when dropped.
#[derive(Debug)]
pub struct TestProxyApi {
    pub port: u16,
    /// Bound once, for the server's whole life: each start serves on it, so the port
    /// stays this server's while it is stopped, and no other test can take it.
    listener: std::net::TcpListener,
    /// The trust bundle (PEM) clients verify the server with.
    pub bundle: String,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The discovery index the Destination service reads; tests feed it objects.
    pub index: std::sync::Arc<std::sync::Mutex<crate::discovery::index::Index>>,
    /// The connected proxies and what they acknowledged.
    pub proxies: crate::discovery::proxies::Proxies,
    /// The limits of its Certify.
    certify_limits: super::certify::Limits,
    authority: tokio::sync::watch::Sender<Option<std::sync::Arc<super::Authority>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

/// How long a test waits for the server to be ready or to stop.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

impl TestProxyApi {
    /// Where clients dial it.
    pub fn control(&self) -> weft_proxy::config::ControlAddr {
        weft_proxy::config::ControlAddr {
            host: "localhost".into(),
            port: self.port,
        }
    }

    /// Waits until its serving certificate is issued and a client that trusts the
    /// bundle connects; panics with the last failure if that takes longer than 10 s.
    pub async fn ready(self) -> Self {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let control = self.control();
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let connect = weft_proxy::identity::connect(&control, &self.bundle);
            last = match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(_)) => return self,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "the last attempt hung".to_string(),
            };
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "the proxy API on port {} did not accept a client trusting its bundle within \
             {PATIENCE:?}: {last}",
            self.port
        );
    }
}

/// Starts a [`TestProxyApi`]. Its serving certificate is issued asynchronously, so a
/// client may have to retry its first connection for a moment.
pub async fn proxy_api() -> TestProxyApi {
    proxy_api_with(super::certify::Limits::default()).await
}

/// [`proxy_api`] with Certify's `limits`.
pub async fn proxy_api_with(certify_limits: super::certify::Limits) -> TestProxyApi {
    let (anchor, authority) = authority();
    let (authority, _) = tokio::sync::watch::channel(Some(authority));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let port = listener.local_addr().expect("a bound address").port();
    let mut api = TestProxyApi {
        port,
        listener,
        bundle: anchor.cert_pem().to_string(),
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        index: std::sync::Arc::new(std::sync::Mutex::new(crate::discovery::index::Index::new(
            "cluster.local",
            "cluster.local",
        ))),
        proxies: Default::default(),
        certify_limits,
        authority,
        stop: None,
        serving: None,
    };
    api.start();
    api
}

impl TestProxyApi {
    /// Serves on its port: the same CA and index, and a fresh set of connected proxies,
    /// as an operator restarted over the same cluster has.
    fn start(&mut self) {
        let serving = crate::serving::ServingIdentity {
            namespace: "weft-system".into(),
            service_account: "weft-operator".into(),
            dns_names: vec!["localhost".into()],
        };
        let certify = super::certify::Certify::with_limits(
            self.authority.subscribe(),
            SlashTokens,
            self.metrics.clone(),
            self.certify_limits,
        );
        let destination = crate::discovery::server::DestinationService::new(
            self.index.clone(),
            self.proxies.clone(),
            self.metrics.clone(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = self
            .listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .expect("the proxy API's listener");
        let serving = crate::proxy_api::serve_on(
            listener,
            self.authority.subscribe(),
            serving,
            certify,
            destination,
            async move {
                // Dropping the sender is the signal too.
                let _ = stopped.await;
            },
        )
        .expect("the proxy API serves");
        self.stop = Some(stop);
        self.serving = Some(serving);
    }

    /// Stops serving: every stream ends and every connection closes. The port stays
    /// bound to this server, so a client that connects meanwhile waits (unanswered)
    /// until [`TestProxyApi::restart`]. Panics if the server has not stopped in 10 s.
    pub async fn stop(&mut self) {
        self.stop.take();
        let serving = self.serving.take().expect("the proxy API is serving");
        tokio::time::timeout(PATIENCE, serving)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the proxy API on port {} did not stop within {PATIENCE:?}: a stream \
                     or a connection is still open",
                    self.port
                )
            })
            .expect("the proxy API's task ends without panicking");
        self.proxies = Default::default();
    }

    /// Serves again after [`TestProxyApi::stop`], on the same port.
    pub async fn restart(&mut self) {
        self.start();
    }

    /// A workload certificate for `namespace/service_account`, obtained with Certify
    /// as a proxy does, and the path of the trust bundle file written for it.
    pub async fn certify(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> (weft_proxy::identity::Credentials, String) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weft-certify-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let (token, bundle) = (dir.join("token"), dir.join("bundle.pem"));
        std::fs::write(&token, format!("{namespace}/{service_account}")).expect("the token file");
        std::fs::write(&bundle, &self.bundle).expect("the bundle file");
        let settings = weft_proxy::identity::Settings {
            identity: format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}"),
            token_file: token.display().to_string(),
            trust_bundle_file: bundle.display().to_string(),
            control: self.control(),
        };
        let credentials = weft_proxy::identity::certify(&settings)
            .await
            .expect("certified");
        (credentials, settings.trust_bundle_file)
    }
}

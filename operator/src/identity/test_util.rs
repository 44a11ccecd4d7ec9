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

/// A proxy API server on a free loopback port, with a fresh [`authority`] and
/// [`SlashTokens`], serving `localhost`. It stops when dropped.
#[derive(Debug)]
pub struct TestProxyApi {
    pub port: u16,
    /// The trust bundle (PEM) clients verify the server with.
    pub bundle: String,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The discovery index the Destination service reads; tests feed it objects.
    pub index: std::sync::Arc<std::sync::Mutex<crate::discovery::index::Index>>,
    /// The connected proxies and what they acknowledged.
    pub proxies: crate::discovery::proxies::Proxies,
    authority: tokio::sync::watch::Sender<Option<std::sync::Arc<super::Authority>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestProxyApi {
    /// Where clients dial it.
    pub fn control(&self) -> weft_proxy::config::ControlAddr {
        weft_proxy::config::ControlAddr {
            host: "localhost".into(),
            port: self.port,
        }
    }

    /// Waits (up to 5 s) until its serving certificate is issued and a client connects.
    pub async fn ready(self) -> Self {
        for _ in 0..50 {
            if weft_proxy::identity::connect(&self.control(), &self.bundle)
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self
    }
}

/// Starts a [`TestProxyApi`]. Its serving certificate is issued asynchronously, so a
/// client may have to retry its first connection for a moment.
pub async fn proxy_api() -> TestProxyApi {
    let (anchor, authority) = authority();
    let (authority, _) = tokio::sync::watch::channel(Some(authority));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    drop(listener);
    let mut api = TestProxyApi {
        port,
        bundle: anchor.cert_pem().to_string(),
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        index: std::sync::Arc::new(std::sync::Mutex::new(crate::discovery::index::Index::new(
            "cluster.local",
            "cluster.local",
        ))),
        proxies: Default::default(),
        authority,
        stop: None,
    };
    api.start().await;
    api
}

impl TestProxyApi {
    /// Serves on its port: the same CA and index, and a fresh set of connected proxies,
    /// as an operator restarted over the same cluster has.
    async fn start(&mut self) {
        let serving = crate::serving::ServingIdentity {
            namespace: "weft-system".into(),
            service_account: "weft-operator".into(),
            dns_names: vec!["localhost".into()],
        };
        let certify = super::certify::Certify::new(
            self.authority.subscribe(),
            SlashTokens,
            self.metrics.clone(),
        );
        let destination = crate::discovery::server::DestinationService::new(
            self.index.clone(),
            self.proxies.clone(),
            self.metrics.clone(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        crate::proxy_api::serve(
            addr,
            self.authority.subscribe(),
            serving,
            certify,
            destination,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .expect("the proxy API listens");
        self.stop = Some(stop);
    }

    /// Stops serving: every stream ends and every connection closes.
    pub async fn stop(&mut self) {
        self.stop.take();
        // Let the server's tasks see the signal and release the port.
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.proxies = Default::default();
    }

    /// Serves again after [`TestProxyApi::stop`].
    pub async fn restart(&mut self) {
        self.start().await;
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

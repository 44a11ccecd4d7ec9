//! The `Certify` call: a proxy proves its ServiceAccount with a token and gets a
//! certificate for exactly that identity.
//!
//! Every answer is counted in `weft_operator_certify_requests_total{result}`: `issued`,
//! `refused` (the request or its token is not good) or `limited` (a rate limit, retry
//! later); every refused or limited one also in
//! `weft_operator_certify_refusals_total{reason}`, whose reasons are a small fixed set
//! (the `&'static str`s below, [`CsrError::reason`] and [`Limited::reason`]), and in
//! the older `weft_operator_certificate_refusals_total{reason}`. The reason is in the
//! gRPC status message too, for the proxy's logs.
//!
//! What one client can make the operator do is bounded:
//!
//! - the request message is at most
//!   [`MAX_CERTIFY_REQUEST_BYTES`](crate::proxy_api::MAX_CERTIFY_REQUEST_BYTES);
//! - a call takes at most [`Limits::deadline`] (DEADLINE_EXCEEDED), its TokenReview at
//!   most [`Limits::review_timeout`] (UNAVAILABLE);
//! - what the API server said about a token is kept by the token's hash
//!   ([`cache`]), so the same token again costs no TokenReview, and concurrent calls
//!   with the same new token share one review;
//! - a token the cache does not know costs a TokenReview only within the limits of its
//!   caller's address and of the operator ([`Limits::reviews_per_peer`],
//!   [`Limits::reviews`]);
//! - once the token names its ServiceAccount, a certificate is signed only within that
//!   ServiceAccount's rate and the operator's ([`Limits::per_service_account`],
//!   [`Limits::global`]); a call over a limit is answered RESOURCE_EXHAUSTED naming
//!   the limit, before its CSR is even checked;
//! - text the client sent is quoted in a refusal escaped and cut at
//!   [`MAX_QUOTED_CHARS`] characters; the token is never quoted, logged or kept.

pub mod cache;
pub mod limit;

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{
    Request, Response, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse, identity_server::Identity};

pub use self::limit::{Limited, Limits, Rate};
use self::{
    cache::{Reviewed, TokenCache, TokenHash},
    limit::Limiter,
};
use super::{CsrError, CurrentAuthority, SpiffeId, csr};
use crate::metrics::Metrics;

/// The most characters of a client's text a refusal quotes.
pub const MAX_QUOTED_CHARS: usize = 128;

/// Whose token a token is, as the API server says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub namespace: String,
    pub service_account: String,
}

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server says the token is not valid for this audience (expired, wrong
    /// audience, its pod deleted, forged...).
    #[error("the API server did not accept the token: {}", quoted(.0))]
    Rejected(String),
    /// The token is valid but not a ServiceAccount's.
    #[error("the token is not a ServiceAccount token: {}", quoted(.0))]
    NotAServiceAccount(String),
    /// The review itself could not be made.
    #[error("the token could not be reviewed: {}", quoted(.0))]
    Unavailable(String),
    /// The review did not answer in time.
    #[error("the token review did not answer within {0:?}")]
    TimedOut(Duration),
}

/// Checks ServiceAccount tokens (a TokenReview against the API server in production).
pub trait TokenReviewer: Send + Sync + 'static {
    fn review(&self, token: &str) -> impl Future<Output = Result<TokenOwner, ReviewError>> + Send;
}

/// What the reviews and the limits share between calls.
#[derive(Debug)]
struct State {
    cache: TokenCache,
    limiter: Limiter,
    /// The reviews under way, by token hash: a call with the same token waits for the
    /// outcome instead of reviewing it again.
    reviewing: HashMap<TokenHash, watch::Receiver<Option<Reviewed>>>,
}

/// The `weft.proxy.v1.Identity` service.
#[derive(Debug)]
pub struct Certify<R> {
    authority: CurrentAuthority,
    reviewer: R,
    metrics: Arc<Metrics>,
    limits: Limits,
    state: Arc<Mutex<State>>,
}

impl<R: TokenReviewer> Certify<R> {
    /// The service with the default [`Limits`].
    pub fn new(authority: CurrentAuthority, reviewer: R, metrics: Arc<Metrics>) -> Self {
        Self::with_limits(authority, reviewer, metrics, Limits::default())
    }

    pub fn with_limits(
        authority: CurrentAuthority,
        reviewer: R,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        Self {
            authority,
            reviewer,
            metrics,
            limits,
            state: Arc::new(Mutex::new(State {
                cache: TokenCache::default(),
                limiter: Limiter::new(limits, Instant::now()),
                reviewing: HashMap::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.certificate_refused(reason);
        self.metrics.certify_answered("refused", Some(reason));
        tracing::info!(reason, message = status.message(), "certificate refused");
        status
    }

    fn limited(&self, limited: Limited) -> Status {
        let reason = limited.reason();
        self.metrics.certificate_refused(reason);
        self.metrics.certify_answered("limited", Some(reason));
        tracing::debug!(reason, %limited, "certificate refused");
        Status::resource_exhausted(limited.to_string())
    }

    /// Answers a call without a known peer address (tests).
    pub async fn certify(&self, req: CertifyRequest) -> Result<CertifyResponse, Status> {
        self.certify_from(req, None).await
    }

    /// Answers a call from `peer`, within the deadline.
    pub async fn certify_from(
        &self,
        req: CertifyRequest,
        peer: Option<IpAddr>,
    ) -> Result<CertifyResponse, Status> {
        let deadline = self.limits.deadline;
        match tokio::time::timeout(deadline, self.certify_now(req, peer)).await {
            Ok(answer) => answer,
            Err(_) => Err(self.refuse(
                "deadline_exceeded",
                Status::deadline_exceeded(format!(
                    "Certify did not complete within {deadline:?}; retry later"
                )),
            )),
        }
    }

    async fn certify_now(
        &self,
        req: CertifyRequest,
        peer: Option<IpAddr>,
    ) -> Result<CertifyResponse, Status> {
        let Some(authority) = self.authority.borrow().clone() else {
            return Err(self.refuse(
                "no_issuer",
                Status::unavailable("the mesh has no issuer yet; retry later"),
            ));
        };
        let requested: SpiffeId = super::spiffe::parse(&req.identity).map_err(|e| {
            // The error quotes the whole text; say the same of a bounded quote.
            let why = e.to_string();
            let why = why.rsplit_once(": ").map_or("", |(_, why)| why);
            self.refuse(
                "bad_identity",
                Status::invalid_argument(format!(
                    "{} is not a workload identity \
                     spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>: {why}",
                    quoted(&req.identity)
                )),
            )
        })?;
        if requested.trust_domain() != authority.trust_domain() {
            return Err(self.refuse(
                "wrong_trust_domain",
                Status::permission_denied(format!(
                    "{} is not in the trust domain {}",
                    quoted(&requested.to_string()),
                    authority.trust_domain()
                )),
            ));
        }
        if req.token.trim().is_empty() {
            return Err(self.refuse(
                "empty_token",
                Status::unauthenticated("no ServiceAccount token was sent"),
            ));
        }
        let owner = self.owner(&req.token, peer).await?;
        let proved = super::spiffe::workload(
            authority.trust_domain(),
            &owner.namespace,
            &owner.service_account,
        )
        .map_err(|e| self.refuse("bad_identity", Status::permission_denied(e.to_string())))?;
        if requested != proved {
            return Err(self.refuse(
                "wrong_identity",
                Status::permission_denied(format!(
                    "the token is for {proved}, not {}",
                    quoted(&requested.to_string())
                )),
            ));
        }
        self.state()
            .limiter
            .issue(&owner.namespace, &owner.service_account, Instant::now())
            .map_err(|limited| self.limited(limited))?;
        let checked = csr::check(&req.csr, &proved).map_err(|e| {
            let message = match &e {
                CsrError::WrongIdentity { expected, found } => format!(
                    "the CSR asks for {}, but the caller proved {expected}",
                    quoted(found)
                ),
                CsrError::ExtraNames { expected, extra } => format!(
                    "the CSR asks for names besides {expected}: {}",
                    quoted(extra)
                ),
                other => other.to_string(),
            };
            let status = match e {
                CsrError::Malformed => Status::invalid_argument(message),
                _ => Status::permission_denied(message),
            };
            self.refuse(e.reason(), status)
        })?;
        let leaf = authority
            .sign(&checked, OffsetDateTime::now_utc())
            .map_err(|e| self.refuse("signing_failed", Status::internal(e.to_string())))?;
        self.metrics.certificate_issued();
        self.metrics.certify_answered("issued", None);
        tracing::debug!(identity = %proved, not_after = %leaf.not_after, "certificate issued");
        Ok(CertifyResponse {
            leaf_certificate: leaf.cert_der,
            intermediate_certificates: authority.chain(),
            valid_until_unix_seconds: leaf.not_after.unix_timestamp(),
        })
    }

    /// Whose token `token` is: from the cache, from a review of the same token under
    /// way, or from a new review within the review limits.
    async fn owner(&self, token: &str, peer: Option<IpAddr>) -> Result<TokenOwner, Status> {
        let hash = TokenHash::of(token);
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.to_canonical());
        let sender = loop {
            let waiting = {
                let mut state = self.state();
                let now = Instant::now();
                if let Some(reviewed) = state.cache.get(&hash, now) {
                    drop(state);
                    self.metrics.certify_token_cache(true);
                    return self.reviewed(reviewed);
                }
                match state.reviewing.get(&hash) {
                    Some(under_way) => under_way.clone(),
                    None => {
                        let entries = state.cache.len();
                        state
                            .limiter
                            .review(peer, now)
                            .map_err(|limited| self.limited(limited))?;
                        let (tx, rx) = watch::channel(None);
                        state.reviewing.insert(hash, rx);
                        drop(state);
                        self.metrics.certify_token_cache(false);
                        self.metrics.certify_token_cache_entries(entries);
                        break tx;
                    }
                }
            };
            // Another call is reviewing this token: its outcome is this one's. If that
            // call went away first (its client did), look again.
            let mut waiting = waiting;
            if let Ok(outcome) = waiting.wait_for(Option::is_some).await
                && let Some(reviewed) = outcome.clone()
            {
                self.metrics.certify_token_cache(true);
                return self.reviewed(reviewed);
            }
        };
        let _under_way = UnderWay {
            state: self.state.clone(),
            hash,
        };
        let timeout = self.limits.review_timeout;
        let reviewed = tokio::time::timeout(timeout, self.reviewer.review(token))
            .await
            .unwrap_or(Err(ReviewError::TimedOut(timeout)));
        let unix_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.state().cache.insert(
            hash,
            reviewed.clone(),
            cache::jwt_expiry(token),
            Instant::now(),
            unix_now,
        );
        sender.send_replace(Some(reviewed.clone()));
        self.reviewed(reviewed)
    }

    fn reviewed(&self, reviewed: Reviewed) -> Result<TokenOwner, Status> {
        reviewed.map_err(|e| match e {
            ReviewError::Unavailable(_) => {
                self.refuse("review_unavailable", Status::unavailable(e.to_string()))
            }
            ReviewError::TimedOut(_) => {
                self.refuse("review_timeout", Status::unavailable(e.to_string()))
            }
            ReviewError::Rejected(_) => {
                self.refuse("token_rejected", Status::unauthenticated(e.to_string()))
            }
            ReviewError::NotAServiceAccount(_) => self.refuse(
                "not_a_service_account",
                Status::unauthenticated(e.to_string()),
            ),
        })
    }
}

/// A review under way; when it ends (or its call is dropped), calls with the same
/// token stop waiting for it.
struct UnderWay {
    state: Arc<Mutex<State>>,
    hash: TokenHash,
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.reviewing.remove(&self.hash);
    }
}

/// `text` for a message: escaped, and cut at [`MAX_QUOTED_CHARS`] characters.
pub fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for (n, c) in text.chars().enumerate() {
        if n == MAX_QUOTED_CHARS {
            out.push_str(&format!("\"... ({} bytes)", text.len()));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

#[tonic::async_trait]
impl<R: TokenReviewer> Identity for Certify<R> {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .map(|a| a.ip());
        self.certify_from(request.into_inner(), peer)
            .await
            .map(Response::new)
    }
}

/// Reviews tokens with the API server's TokenReview, for the identity audience.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer").finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<TokenOwner, ReviewError> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![weft_proxy_api::IDENTITY_TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let reviewed = kube::Api::<TokenReview>::all(self.client.clone())
            .create(&Default::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        owner_of(&reviewed)
    }
}

/// The owner of a reviewed token, if the review accepted it for the identity audience.
pub fn owner_of(
    review: &k8s_openapi::api::authentication::v1::TokenReview,
) -> Result<TokenOwner, ReviewError> {
    let status = review.status.clone().unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ReviewError::Rejected(
            status
                .error
                .unwrap_or_else(|| "not authenticated".to_string()),
        ));
    }
    let audiences = status.audiences.unwrap_or_default();
    if !audiences
        .iter()
        .any(|a| a == weft_proxy_api::IDENTITY_TOKEN_AUDIENCE)
    {
        return Err(ReviewError::Rejected(format!(
            "the token is not for the audience {}",
            weft_proxy_api::IDENTITY_TOKEN_AUDIENCE
        )));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let parts: Vec<&str> = username.split(':').collect();
    match parts.as_slice() {
        ["system", "serviceaccount", namespace, service_account] => Ok(TokenOwner {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }),
        _ => Err(ReviewError::NotAServiceAccount(username)),
    }
}

#[cfg(test)]
mod tests;

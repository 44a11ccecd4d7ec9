//! The `Certify` call: a proxy proves its ServiceAccount with a token and gets a
//! certificate for exactly that identity.
//!
//! Every refusal has a reason that is both in the gRPC status message (for the proxy's
//! logs) and the `reason` label of `weft_operator_certificate_refusals_total`.

use std::{future::Future, sync::Arc};

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse, identity_server::Identity};

use super::{CsrError, CurrentAuthority, SpiffeId, csr};
use crate::metrics::Metrics;

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
    #[error("the API server did not accept the token: {0}")]
    Rejected(String),
    /// The token is valid but not a ServiceAccount's.
    #[error("the token is not a ServiceAccount token: {0}")]
    NotAServiceAccount(String),
    /// The review itself could not be made.
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

/// Checks ServiceAccount tokens (a TokenReview against the API server in production).
pub trait TokenReviewer: Send + Sync + 'static {
    fn review(&self, token: &str) -> impl Future<Output = Result<TokenOwner, ReviewError>> + Send;
}

/// The `weft.proxy.v1.Identity` service.
#[derive(Debug)]
pub struct Certify<R> {
    authority: CurrentAuthority,
    reviewer: R,
    metrics: Arc<Metrics>,
}

impl<R: TokenReviewer> Certify<R> {
    pub fn new(authority: CurrentAuthority, reviewer: R, metrics: Arc<Metrics>) -> Self {
        Self {
            authority,
            reviewer,
            metrics,
        }
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.certificate_refused(reason);
        tracing::info!(reason, message = status.message(), "certificate refused");
        status
    }

    async fn certify(&self, req: CertifyRequest) -> Result<CertifyResponse, Status> {
        let Some(authority) = self.authority.borrow().clone() else {
            return Err(self.refuse(
                "no_issuer",
                Status::unavailable("the mesh has no issuer yet; retry later"),
            ));
        };
        let requested: SpiffeId = super::spiffe::parse(&req.identity)
            .map_err(|e| self.refuse("bad_identity", Status::invalid_argument(e.to_string())))?;
        if requested.trust_domain() != authority.trust_domain() {
            return Err(self.refuse(
                "wrong_trust_domain",
                Status::permission_denied(format!(
                    "{requested} is not in the trust domain {}",
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
        let owner = self
            .reviewer
            .review(&req.token)
            .await
            .map_err(|e| match e {
                ReviewError::Unavailable(_) => {
                    self.refuse("review_unavailable", Status::unavailable(e.to_string()))
                }
                ReviewError::Rejected(_) => {
                    self.refuse("token_rejected", Status::unauthenticated(e.to_string()))
                }
                ReviewError::NotAServiceAccount(_) => self.refuse(
                    "not_a_service_account",
                    Status::unauthenticated(e.to_string()),
                ),
            })?;
        let proved = super::spiffe::workload(
            authority.trust_domain(),
            &owner.namespace,
            &owner.service_account,
        )
        .map_err(|e| self.refuse("bad_identity", Status::permission_denied(e.to_string())))?;
        if requested != proved {
            return Err(self.refuse(
                "wrong_identity",
                Status::permission_denied(format!("the token is for {proved}, not {requested}")),
            ));
        }
        let checked = csr::check(&req.csr, &proved).map_err(|e| {
            let status = match e {
                CsrError::Malformed => Status::invalid_argument(e.to_string()),
                _ => Status::permission_denied(e.to_string()),
            };
            self.refuse(e.reason(), status)
        })?;
        let leaf = authority
            .sign(&checked, OffsetDateTime::now_utc())
            .map_err(|e| self.refuse("signing_failed", Status::internal(e.to_string())))?;
        self.metrics.certificate_issued();
        tracing::debug!(identity = %proved, not_after = %leaf.not_after, "certificate issued");
        Ok(CertifyResponse {
            leaf_certificate: leaf.cert_der,
            intermediate_certificates: authority.chain(),
            valid_until_unix_seconds: leaf.not_after.unix_timestamp(),
        })
    }
}

#[tonic::async_trait]
impl<R: TokenReviewer> Identity for Certify<R> {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        Certify::certify(self, request.into_inner())
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

//! The injection webhook (port 9443): HTTPS, `POST /inject`, AdmissionReview v1.
//!
//! A thin layer over [`crate::inject::decide`]: read the review, find the pod's
//! namespace and the Mesh in the operator's watch caches, answer with the patch. The
//! serving certificate comes from the mesh's own authority ([`crate::serving`]), and
//! [`registration`] puts the trust bundle in the MutatingWebhookConfiguration's
//! `caBundle`.
//!
//! Bad input never hangs or panics the server: a body over [`MAX_BODY`] or that is not
//! an AdmissionReview gets 400 with the reason; a review of anything but a pod, or a pod
//! the injector cannot read, is allowed unchanged with a warning. Every injection and
//! every skip of a pod that asked for the mesh is an Event on the pod's owner (the
//! ReplicaSet or Job; the pod itself when it has none), sent off the request path and
//! never for dry runs.

pub mod registration;
#[cfg(any(test, feature = "testing"))]
pub mod test_util;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use kube::{
    Api, Client,
    core::{
        DynamicObject, PartialObjectMeta,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::{ObjectRef, Store},
    },
};
use rustls::ServerConfig;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;
use weft_api::{ACTIVE_MESH_NAME, Mesh};

use crate::{
    identity::{CurrentAuthority, bundle::Bundles},
    inject::{Decision, Settings, SkipReason, decide},
    metrics::Metrics,
    serving::{ServingCert, ServingIdentity, keep_issued},
};

/// The largest request body read: well above any pod the API server stores (etcd
/// refuses objects over 1.5 MiB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The path the API server posts reviews to.
pub const PATH: &str = "/inject";
/// How long a client has to finish its TLS handshake, and then to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting to be sent; beyond this they are dropped (and logged).
const EVENT_BACKLOG: usize = 256;

/// What the injector reads to decide: the Mesh, namespaces, settings.
#[derive(Clone)]
pub struct Injector {
    meshes: Store<Mesh>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Reads a namespace the cache has not seen yet (it was created a moment ago).
    client: Option<Client>,
    settings: Settings,
    metrics: Arc<Metrics>,
    events: Option<mpsc::Sender<Note>>,
    /// The trust-bundle ConfigMaps: a namespace whose bundle Weft cannot publish gets
    /// no proxies.
    bundles: Option<Bundles>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// An Event to send about an admission.
#[derive(Debug)]
struct Note {
    regarding: ObjectReference,
    reason: &'static str,
    message: String,
    warning: bool,
}

impl Injector {
    /// An injector reading `meshes` and `namespaces`; with `client`, it also reads
    /// namespaces missing from the cache and sends Events (from `recorder`).
    pub fn new(
        meshes: Store<Mesh>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        settings: Settings,
        metrics: Arc<Metrics>,
        recorder: Option<(Client, Recorder)>,
    ) -> Self {
        let (client, events) = match recorder {
            Some((client, recorder)) => {
                let (tx, rx) = mpsc::channel(EVENT_BACKLOG);
                tokio::spawn(send_events(recorder, rx));
                (Some(client), Some(tx))
            }
            None => (None, None),
        };
        Self {
            meshes,
            namespaces,
            client,
            settings,
            metrics,
            events,
            bundles: None,
        }
    }

    /// The injector, leaving pods unmeshed in namespaces where `bundles` says Weft
    /// cannot publish the trust bundle.
    pub fn with_bundles(mut self, bundles: Bundles) -> Self {
        self.bundles = Some(bundles);
        self
    }

    /// Answers one request to the webhook.
    pub async fn handle(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
        if path != PATH {
            return (StatusCode::NOT_FOUND, b"not found\n".to_vec());
        }
        if method != Method::POST {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                b"POST an AdmissionReview\n".to_vec(),
            );
        }
        let started = Instant::now();
        let answer = self.review(body).await;
        self.metrics.admission(started.elapsed().as_secs_f64());
        answer
    }

    async fn review(&self, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(error) => {
                self.metrics.injector_error("MalformedReview");
                return bad_request(format!("not an AdmissionReview: {error}"));
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(error) => {
                self.metrics.injector_error("MalformedReview");
                return bad_request(format!("not an AdmissionReview request: {error}"));
            }
        };
        let response = self.admit(&request).await;
        match serde_json::to_vec(&response.into_review()) {
            Ok(json) => (StatusCode::OK, json),
            Err(error) => {
                self.metrics.injector_error("Internal");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot write the response: {error}\n").into_bytes(),
                )
            }
        }
    }

    /// The response to one review: always allowed, with the patch when the pod is
    /// meshed, with a warning when it asked to be and is not.
    async fn admit(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allow = AdmissionResponse::from(request);
        let kind = &request.kind;
        if !kind.group.is_empty() || kind.kind != "Pod" || request.operation != Operation::Create {
            self.metrics.injector_error("NotAPodCreation");
            return warn(
                allow,
                format!(
                    "the Weft injector only handles pod creation, not {:?} of {}",
                    request.operation, kind.kind
                ),
            );
        }
        let pod: Pod = match request
            .object
            .as_ref()
            .map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
        {
            Some(Ok(pod)) => pod,
            Some(Err(error)) => {
                self.metrics.injector_error("UnreadablePod");
                return warn(
                    allow,
                    format!("the Weft injector cannot read the pod: {error}"),
                );
            }
            None => {
                self.metrics.injector_error("UnreadablePod");
                return warn(allow, "the review carries no pod".into());
            }
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let Some(mesh) = self.meshes.get(&ObjectRef::new(ACTIVE_MESH_NAME)) else {
            self.metrics.injection_skipped("NoMesh");
            return allow;
        };
        let ns_annotations = self.namespace_annotations(&namespace).await;
        let decision = match decide(
            &pod,
            &namespace,
            &ns_annotations,
            &mesh.spec,
            &self.settings,
        ) {
            Decision::Inject { .. }
                if let Some(message) =
                    self.bundles.as_ref().and_then(|b| b.blocked(&namespace)) =>
            {
                Decision::Skip {
                    reason: SkipReason::TrustBundleNotWefts,
                    message,
                }
            }
            decision => decision,
        };
        let owner = regarding(&pod, &namespace);
        let dry_run = request.dry_run;
        match decision {
            Decision::Inject {
                patch,
                config_version,
                native_sidecar,
            } => {
                match allow.clone().with_patch(patch) {
                    Ok(response) => {
                        self.metrics.injected();
                        let mode = if native_sidecar {
                            "a native sidecar"
                        } else {
                            "a sidecar container"
                        };
                        if !dry_run {
                            self.note(
                            owner,
                            "Injected",
                            format!("Weft proxy injected as {mode} (config version {config_version})"),
                            false,
                        );
                        }
                        response
                    }
                    Err(error) => {
                        self.metrics.injector_error("Internal");
                        warn(
                            allow,
                            format!("the Weft injector cannot write its patch: {error}"),
                        )
                    }
                }
            }
            Decision::Skip { reason, message } => {
                self.metrics.injection_skipped(reason.as_str());
                if !dry_run {
                    self.note(
                        owner,
                        "InjectionSkipped",
                        format!("{}: {message}", reason.as_str()),
                        true,
                    );
                }
                // The pod says why it is not meshed, for MeshStatus to list it.
                let patch = crate::inject::not_meshed_patch(&pod, reason, &sanitized(&message));
                let response = allow.clone().with_patch(patch).unwrap_or(allow);
                warn(response, format!("Weft proxy not injected: {message}"))
            }
            Decision::NotRequested | Decision::AlreadyInjected => allow,
        }
    }

    async fn namespace_annotations(&self, namespace: &str) -> BTreeMap<String, String> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) {
            return ns.metadata.annotations.clone().unwrap_or_default();
        }
        let Some(client) = &self.client else {
            return BTreeMap::new();
        };
        match Api::<Namespace>::all(client.clone())
            .get_metadata_opt(namespace)
            .await
        {
            Ok(found) => found
                .and_then(|ns| ns.metadata.annotations)
                .unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%namespace, %error, "cannot read the namespace");
                BTreeMap::new()
            }
        }
    }

    fn note(
        &self,
        regarding: ObjectReference,
        reason: &'static str,
        message: String,
        warning: bool,
    ) {
        let Some(events) = &self.events else {
            return;
        };
        let note = Note {
            regarding,
            reason,
            message: sanitized(&message),
            warning,
        };
        if let Err(error) = events.try_send(note) {
            tracing::warn!(%error, "too many Events waiting; dropping one");
        }
    }
}

/// What the Event about a pod is attached to: its controller, else the pod.
fn regarding(pod: &Pod, namespace: &str) -> ObjectReference {
    let owner = crate::controller_of(&pod.metadata);
    match owner {
        Some(owner) => ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(namespace.to_string()),
            uid: Some(owner.uid.clone()),
            ..ObjectReference::default()
        },
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod
                .metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.clone()),
            namespace: Some(namespace.to_string()),
            ..ObjectReference::default()
        },
    }
}

/// The most bytes of an Event's note (the API server refuses more than 1 KiB).
const NOTE_BYTES: usize = 1000;

/// `message` fit for an Event: control characters (from a pod's annotations, say)
/// become spaces, and it is cut to [`NOTE_BYTES`] at a character boundary.
fn sanitized(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(NOTE_BYTES));
    for c in message.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > NOTE_BYTES - '…'.len_utf8() {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

fn warn(mut response: AdmissionResponse, warning: String) -> AdmissionResponse {
    response.warnings.get_or_insert_with(Vec::new).push(warning);
    response
}

fn bad_request(message: String) -> (StatusCode, Vec<u8>) {
    (StatusCode::BAD_REQUEST, format!("{message}\n").into_bytes())
}

async fn send_events(recorder: Recorder, mut notes: mpsc::Receiver<Note>) {
    while let Some(note) = notes.recv().await {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(note.message),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &note.regarding).await {
            tracing::warn!(%error, reason = note.reason, "cannot send an injection Event");
        }
    }
}

/// Binds `addr` and serves the webhook over TLS until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    authority: CurrentAuthority,
    serving: ServingIdentity,
    injector: Injector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let cert = Arc::new(ServingCert::default());
    tokio::spawn(keep_issued(cert.clone(), authority, serving, "webhook"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let injector = Arc::new(injector);

    Ok((
        local,
        tokio::spawn(async move {
            // Connections end gracefully once `stop` turns true; `stop.closed()` tells
            // when the last one is gone.
            let (stop, stopping) = watch::channel(false);
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "webhook accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = &mut shutdown => break,
                };
                let (acceptor, injector, stopping) =
                    (acceptor.clone(), injector.clone(), stopping.clone());
                tokio::spawn(connection(acceptor, injector, tcp, peer, stopping));
            }
            drop(listener);
            drop(stopping);
            let _ = stop.send(true);
            stop.closed().await;
        }),
    ))
}

/// Serves one client connection: TLS, then HTTP/1.1 requests until it closes.
async fn connection(
    acceptor: TlsAcceptor,
    injector: Arc<Injector>,
    tcp: TcpStream,
    peer: SocketAddr,
    stopping: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "webhook handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook handshake timed out");
            return;
        }
    };
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let injector = injector.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&injector, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = crate::wait_for(stopping) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "webhook connection ended");
    }
}

async fn respond(
    injector: &Injector,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(CLIENT_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let (status, body) = match read {
        Ok(Ok(body)) => {
            injector
                .handle(&parts.method, parts.uri.path(), &body.to_bytes())
                .await
        }
        Ok(Err(error)) => {
            let reason = if error.is::<http_body_util::LengthLimitError>() {
                format!("the request body is larger than {MAX_BODY} bytes")
            } else {
                format!("cannot read the request body: {error}")
            };
            injector.metrics.injector_error("UnreadableBody");
            bad_request(reason)
        }
        Err(_) => {
            injector.metrics.injector_error("UnreadableBody");
            bad_request("the request body did not arrive in time".into())
        }
    };
    let json = status == StatusCode::OK;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_bounded_and_carry_no_control_characters() {
        assert_eq!(sanitized("bad\nvalue\u{1b}[31m"), "bad value [31m");
        let long = "é".repeat(2000);
        let note = sanitized(&long);
        assert!(note.len() <= NOTE_BYTES, "{}", note.len());
        assert!(note.ends_with('…'));
        assert_eq!(sanitized("fine"), "fine");
    }
}

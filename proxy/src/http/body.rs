//! The bodies the proxy passes on: as they came, made by the proxy (its own
//! answers), or a gRPC response's, whose success is only known from its trailers.

use std::{
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use http::{StatusCode, header};
use http_body_util::Full;
use hyper::{
    Response,
    body::{Body as _, Bytes, Frame, Incoming, SizeHint},
};

/// A body as it came (a request's, a response's), one the proxy made, or a gRPC
/// response's, classified by the status in its trailers when it ends.
#[derive(Debug)]
pub enum Body {
    Incoming(Incoming),
    Full(Full<Bytes>),
    Grpc(GrpcClassified),
}

impl Body {
    pub(super) fn empty() -> Self {
        Self::Full(Full::new(Bytes::new()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Incoming(body) => Pin::new(body).poll_frame(cx),
            Self::Full(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Self::Grpc(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Incoming(body) => body.is_end_stream(),
            Self::Full(body) => body.is_end_stream(),
            Self::Grpc(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Incoming(body) => body.size_hint(),
            Self::Full(body) => body.size_hint(),
            Self::Grpc(body) => body.inner.size_hint(),
        }
    }
}

/// A gRPC response body: when it ends, its response is counted, a failure unless the
/// trailers say `grpc-status: 0` (a body that ends without them, fails, or is
/// dropped unfinished, failed too).
pub struct GrpcClassified {
    pub(super) inner: Incoming,
    pub(super) record: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl std::fmt::Debug for GrpcClassified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClassified").finish_non_exhaustive()
    }
}

impl GrpcClassified {
    fn finish(&mut self, failed: bool) {
        if let Some(record) = self.record.take() {
            record(failed);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.finish(grpc_failed(trailers) != Some(false));
                }
            }
            Poll::Ready(Some(Err(_)) | None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for GrpcClassified {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Whether `headers` (a gRPC response's trailers, or the headers of a
/// trailers-only response) carry a failing status; `None` without one.
pub(super) fn grpc_failed(headers: &http::HeaderMap) -> Option<bool> {
    headers.get("grpc-status").map(|status| status != "0")
}

pub(super) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// An empty response with `status`.
pub(super) fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

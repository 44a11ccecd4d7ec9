//! Inbound HTTP/1, relayed: the server proxy passes a client's HTTP/1 connection to
//! the application byte for byte, reading only where each message begins and ends
//! ([`super::framing`]) to count it.
//!
//! The client is a peer proxy, whose requests were already parsed, balanced and
//! routed on their way out, or an unmeshed client on a port whose policy lets it in;
//! each request is judged by the port's policy in force when its head arrives (not
//! by its contents), so nothing here depends on a request's contents but its
//! metrics and that judgement. Re-originating each request (as the outbound
//! side must, to balance it) would cost the inbound hop two HTTP codecs, a pool and
//! two tasks per connection; relaying costs one task, and its latency is that of a
//! TCP relay.
//!
//! What the proxy still does per message:
//! - each request is judged by the port's policy when its head has arrived whole
//!   ([`Gate::request`]); one the policy now refuses is answered 403 with its
//!   `weft-authz` header, in its turn, and the connection closed;
//! - each request is counted (`request_total`) when its head has arrived whole, and
//!   its response (`response_total`, `response_latency_ms`) when the response head
//!   has; interim (1xx) responses are passed on and not counted;
//! - a request head that is not HTTP/1, too large, or whose body length is
//!   ambiguous is answered 400 (431 when too large), counted in
//!   `http_client_errors_total`, and its connection closed — it never reaches the
//!   application, so the proxy and the application never read one stream two ways;
//! - a response whose framing is suspect (both a `transfer-encoding` and a
//!   `content-length`) closes both connections once it has been passed on, and one
//!   that cannot be framed at all is answered 502 in its place;
//! - a 101 to an upgrade, or a 2xx to a CONNECT, makes the connection a tunnel;
//! - the application closing an idle connection does not close the client's: the
//!   next request opens a new one. Closing it with a request unanswered answers 502;
//! - on shutdown, a request in flight is answered, then the connection is closed.
//!
//! One task drives both directions, like a TCP relay: no direction's write waits on
//! the other's read.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::watch,
};

use self::half::Half;
use super::framing::{self, Body, Next, Reader, RequestHead, ResponseHead, Step};
use crate::{
    authz::Refusal,
    inbound::Gate,
    metrics::{Direction, HttpCounters, Metrics, TcpLabels},
};

/// Bytes read at a time in each direction; a head larger than this grows its buffer,
/// up to [`framing::MAX_HEAD`].
const BUFFER: usize = 16 * 1024;

/// Relays the HTTP/1 connection `client` to the application at `app`, counting its
/// messages with `labels`, each request judged and counted by `authz` (the port's
/// policy, when it has one); drained once `shutdown` turns true.
pub(crate) async fn serve<C>(
    client: C,
    app: SocketAddr,
    labels: &TcpLabels,
    authz: Option<Arc<Gate>>,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let tcp_labels = metrics.tcp_opened(labels);
    let mut relay = Relay {
        client,
        requests: Half::new(),
        responses: Half::new(),
        pending: VecDeque::new(),
        paused: false,
        tunnel: false,
        closing: false,
        draining: false,
        stopping: Box::pin(stopping(shutdown)),
        counters: metrics.http_counters(labels),
        authz,
        metrics: metrics.clone(),
    };
    relay.run(app).await;
    let written = relay.responses.moved;
    metrics.tcp_closed(&tcp_labels, relay.requests.read, written);
}

/// Resolves once `shutdown` turns true (never, if no one can ask any more).
async fn stopping(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How a relay with the application ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Everything is done: close the client's connection.
    Close,
    /// The application closed its idle connection; the client's lives on.
    AppClosed,
    /// Answer the client with this status of the proxy's own, then close.
    Reply(u16),
    /// Answer the client's last request with its refusal, then close.
    Refuse(Arc<Refusal>),
    /// Something broke mid-message: drop both connections.
    Abort,
}

/// One client connection, relayed to the application.
struct Relay<C> {
    client: C,
    requests: Half<RequestHead>,
    responses: Half<ResponseHead>,
    /// The requests forwarded whose final response has not begun, with when their
    /// head arrived.
    pending: VecDeque<(RequestHead, Instant)>,
    /// An upgrade or CONNECT request was sent: the client's next bytes wait for its
    /// answer (a tunnel's, or the next request's).
    paused: bool,
    /// Both directions are relayed as they come, unread.
    tunnel: bool,
    /// The response being passed on is the connection's last ([`ResponseHead::close`]).
    closing: bool,
    draining: bool,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    counters: HttpCounters,
    /// What judges each request by the port's policy.
    authz: Option<Arc<Gate>>,
    metrics: Arc<Metrics>,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Relay<C> {
    async fn run(&mut self, app_addr: SocketAddr) {
        loop {
            // The application is connected to when a request comes, and again after it
            // closed an idle connection.
            if self.requests.unread().is_empty() && !self.wait_for_request().await {
                break;
            }
            let Some(mut app) =
                crate::transport::connect(app_addr, Direction::Inbound, &self.metrics).await
            else {
                self.counters.request();
                self.counters.latency(std::time::Duration::ZERO);
                self.counters.response(&self.metrics, 502, true);
                self.reply(502).await;
                return;
            };
            // A new connection: nothing of the last one's is left to read.
            self.responses.eof = false;
            let end = std::future::poll_fn(|cx| self.poll_relay(cx, &mut app)).await;
            match end {
                End::AppClosed => continue,
                End::Close => break,
                End::Reply(status) => {
                    self.reply(status).await;
                    return;
                }
                End::Refuse(refusal) => {
                    self.refuse(&refusal).await;
                    return;
                }
                End::Abort => return,
            }
        }
        let _ = self.client.shutdown().await;
    }

    /// Waits for the client's next bytes; `false` when it ended or the proxy is
    /// stopping first.
    async fn wait_for_request(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if !self.draining && self.stopping.as_mut().poll(cx).is_ready() {
                self.draining = true;
            }
            if self.draining || self.requests.eof {
                return Poll::Ready(false);
            }
            match self.requests.poll_fill(cx, &mut self.client) {
                Poll::Ready(Ok(more)) => Poll::Ready(more),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Answers the client with `status` and closes the connection.
    async fn reply(&mut self, status: u16) {
        if let Some((_, started)) = self.pending.pop_front() {
            self.counters.latency(started.elapsed());
            self.counters.response(&self.metrics, status, status >= 500);
        }
        let reason = match status {
            400 => "Bad Request",
            431 => "Request Header Fields Too Large",
            _ => "Bad Gateway",
        };
        let answer =
            format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        if self.client.write_all(answer.as_bytes()).await.is_ok() {
            self.responses.moved += answer.len() as u64;
            let _ = self.client.shutdown().await;
        }
    }

    /// Answers the client's request, which the port's policy refused, with 403 and
    /// why (as [`super::client`] answers a refused client), and closes the connection.
    async fn refuse(&mut self, refusal: &Refusal) {
        self.counters.latency(std::time::Duration::ZERO);
        self.counters.response(&self.metrics, 403, false);
        let body = refusal.message() + "\n";
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\n{}: {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            super::client::AUTHZ_HEADER,
            refusal.header(),
            body.len(),
        );
        if self.client.write_all(answer.as_bytes()).await.is_ok() {
            self.responses.moved += answer.len() as u64;
            let _ = self.client.shutdown().await;
        }
    }

    /// Relays both ways until one of the [`End`]s.
    fn poll_relay(&mut self, cx: &mut Context<'_>, app: &mut TcpStream) -> Poll<End> {
        if !self.draining && self.stopping.as_mut().poll(cx).is_ready() {
            self.draining = true;
        }
        loop {
            let before = self.mark();
            if let Poll::Ready(end) = self.poll_requests(cx, app) {
                return Poll::Ready(end);
            }
            if let Poll::Ready(end) = self.poll_responses(cx, app) {
                return Poll::Ready(end);
            }
            if self.draining && !self.tunnel && self.pending.is_empty() && self.quiet() {
                return Poll::Ready(End::Close);
            }
            // A half that waits on the other (a paused client, a drained request) is
            // looked at again once the other moved; otherwise both wait on IO.
            if before == self.mark() {
                return Poll::Pending;
            }
        }
    }

    /// What moves when either half makes progress: bytes read and written, requests
    /// owed, the client paused.
    fn mark(&self) -> (u64, u64, usize, usize, usize, bool) {
        (
            self.requests.moved,
            self.responses.moved,
            self.requests.filled,
            self.responses.filled,
            self.pending.len(),
            self.paused,
        )
    }

    /// Nothing is on its way in either direction.
    fn quiet(&self) -> bool {
        self.requests.reader.at_boundary()
            && self.requests.ready == 0
            && self.responses.idle()
            && !self.responses.unflushed
    }

    /// Client to application. `Pending` when it waits (on IO or on the responses).
    fn poll_requests(&mut self, cx: &mut Context<'_>, app: &mut TcpStream) -> Poll<End> {
        loop {
            let half = &mut self.requests;
            match half.poll_drain(cx, app, self.tunnel) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(End::Abort),
                Poll::Pending => return Poll::Pending,
            }
            if !half.unread().is_empty() {
                if self.paused {
                    return Poll::Pending;
                }
                match half.step() {
                    Ok(Step::Head { len, head }) => {
                        if self.draining {
                            // Not started: the connection closes once quiet.
                            return Poll::Pending;
                        }
                        if let Some(gate) = &self.authz {
                            let busy = !self.pending.is_empty() || !self.responses.idle();
                            if busy && gate.refuses() {
                                // Refused in its turn, once the requests before it are
                                // answered: the refusal ends the connection.
                                return Poll::Pending;
                            }
                            if let Err(refusal) = gate.request() {
                                self.counters.request();
                                // (Busy: the policy changed just now; no answer can
                                // be put between the responses in flight.)
                                return Poll::Ready(if busy {
                                    End::Abort
                                } else {
                                    End::Refuse(refusal)
                                });
                            }
                        }
                        self.counters.request();
                        half.reader.body(head.body);
                        half.ready = len;
                        let waits = head.upgrade || head.connect;
                        self.pending.push_back((head, Instant::now()));
                        self.paused = waits && half.reader.at_boundary();
                        continue;
                    }
                    Ok(Step::Body { len, end }) => {
                        half.ready = len;
                        let upgrading = self
                            .pending
                            .back()
                            .is_some_and(|(h, _)| h.upgrade || h.connect);
                        self.paused = end && upgrading;
                        continue;
                    }
                    Ok(Step::More) => {}
                    Err(error) => {
                        tracing::debug!(%error, "malformed HTTP/1 request from an inbound client");
                        self.metrics.http_client_error(Direction::Inbound);
                        return Poll::Ready(if self.pending.is_empty() && self.responses.idle() {
                            End::Reply(if error == framing::Error::HeadTooLarge {
                                431
                            } else {
                                400
                            })
                        } else {
                            End::Abort
                        });
                    }
                }
            }
            match half.poll_next(cx, &mut self.client, app) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return self.requests_ended(cx, app),
                Poll::Ready(Err(_)) => return Poll::Ready(End::Abort),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The client sent all it will.
    fn requests_ended(&mut self, cx: &mut Context<'_>, app: &mut TcpStream) -> Poll<End> {
        let half = &mut self.requests;
        if self.tunnel {
            if !half.shut {
                if ready!(Pin::new(&mut *app).poll_shutdown(cx)).is_err() {
                    return Poll::Ready(End::Abort);
                }
                half.shut = true;
            }
            return if self.responses.shut {
                Poll::Ready(End::Close)
            } else {
                Poll::Pending
            };
        }
        if !half.idle() {
            // Gone mid-request: it cannot be finished.
            return Poll::Ready(End::Abort);
        }
        if self.pending.is_empty() && self.quiet() {
            return Poll::Ready(End::Close);
        }
        // The responses owed are still relayed.
        Poll::Pending
    }

    /// Application to client.
    fn poll_responses(&mut self, cx: &mut Context<'_>, app: &mut TcpStream) -> Poll<End> {
        loop {
            let half = &mut self.responses;
            match half.poll_drain(cx, &mut self.client, self.tunnel) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(End::Abort),
                Poll::Pending => return Poll::Pending,
            }
            if self.closing && half.reader.at_boundary() {
                // Whatever the application sent after it is never read.
                return match Pin::new(&mut self.client).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(End::Close),
                    Poll::Ready(Err(_)) => Poll::Ready(End::Abort),
                    Poll::Pending => Poll::Pending,
                };
            }
            if !half.unread().is_empty() {
                match half.step() {
                    Ok(Step::Head { len, head }) => {
                        half.ready = len;
                        let Some((request, started)) = self.pending.front() else {
                            // An answer to nothing: not HTTP any more, relay it as is.
                            self.tunnel = true;
                            continue;
                        };
                        match framing::response_body(request, &head) {
                            Next::Interim => half.reader.body(Body::Length(0)),
                            Next::Final(body) => {
                                self.counters.latency(started.elapsed());
                                self.pending.pop_front();
                                let failed = head.status >= 500;
                                self.counters.response(&self.metrics, head.status, failed);
                                half.reader.body(body);
                                self.paused = false;
                                self.closing = head.close;
                            }
                            Next::Tunnel => {
                                self.counters.latency(started.elapsed());
                                self.pending.clear();
                                self.counters.response(&self.metrics, head.status, false);
                                self.tunnel = true;
                                self.paused = false;
                            }
                        }
                        continue;
                    }
                    Ok(Step::Body { len, .. }) => {
                        half.ready = len;
                        continue;
                    }
                    Ok(Step::More) => {}
                    Err(framing::Error::Length) if !self.pending.is_empty() => {
                        // A response that cannot be framed is not passed on (RFC 9112
                        // §6.3): nothing of it was.
                        tracing::debug!("the application's response has an invalid length");
                        return Poll::Ready(End::Reply(502));
                    }
                    Err(error) => {
                        // The application does not speak HTTP/1 here: its bytes are
                        // still its client's, passed on unread.
                        tracing::debug!(%error, "the application's answer is not HTTP/1");
                        self.tunnel = true;
                        continue;
                    }
                }
            }
            match half.poll_next(cx, app, &mut self.client) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return self.responses_ended(cx),
                Poll::Ready(Err(_)) => return Poll::Ready(End::Abort),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The application sent all it will.
    fn responses_ended(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let half = &mut self.responses;
        if self.tunnel {
            if !half.shut {
                if ready!(Pin::new(&mut self.client).poll_shutdown(cx)).is_err() {
                    return Poll::Ready(End::Abort);
                }
                half.shut = true;
            }
            return if self.requests.shut {
                Poll::Ready(End::Close)
            } else {
                Poll::Pending
            };
        }
        if half.reader.until_close() && half.pos == half.filled {
            // The end of a body delimited by it.
            return Poll::Ready(End::Close);
        }
        if !half.idle() {
            return Poll::Ready(End::Abort);
        }
        if !self.pending.is_empty() {
            return Poll::Ready(if self.requests.ready == 0 {
                End::Reply(502)
            } else {
                End::Abort
            });
        }
        if self.requests.eof || !self.requests.reader.at_boundary() || self.requests.ready > 0 {
            // The client is done, or still sending a request the application answered
            // early and will not read: its connection closes too.
            return Poll::Ready(End::Close);
        }
        Poll::Ready(End::AppClosed)
    }
}

mod half;
#[cfg(test)]
mod tests;

//! TCP forwarding: the bytes of a connection copied both ways, half-closes passed
//! through, and the connection counted in the `tcp_*` family Linkerd's dashboards read.
//!
//! [`Counted`] counts the bytes of an IO handed to someone else (hyper, serving HTTP
//! on it), so a connection served request by request is counted like a relayed one.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::metrics::{Metrics, TcpLabels};

/// Copies both ways until both sides are done (a half-close passes through), counting
/// the connection and its bytes.
pub(crate) async fn relay<C, S>(mut client: C, mut server: S, labels: &TcpLabels, metrics: &Metrics)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let labels = metrics.tcp_opened(labels);
    let (from_client, from_server) =
        match tokio::io::copy_bidirectional(&mut client, &mut server).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%error, "connection reset");
                (0, 0)
            }
        };
    let _ = client.shutdown().await;
    metrics.tcp_closed(&labels, from_client, from_server);
}

/// The bytes read from and written to an IO that was handed away.
#[derive(Debug, Default)]
pub(crate) struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
}

impl ByteCounts {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// An IO that counts its bytes into a [`ByteCounts`] kept by the caller.
pub(crate) struct Counted<I> {
    io: I,
    counts: Arc<ByteCounts>,
}

impl<I> Counted<I> {
    pub(crate) fn new(io: I) -> (Self, Arc<ByteCounts>) {
        let counts = Arc::new(ByteCounts::default());
        (
            Self {
                io,
                counts: counts.clone(),
            },
            counts,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

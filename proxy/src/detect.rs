//! Protocol detection: what the first bytes of a connection say it speaks.
//!
//! [`classify`] is pure and total (any input, no panic): a TLS ClientHello (with its
//! SNI, which tells a peer proxy's mTLS from an application's own TLS), the HTTP/2
//! connection preface, an HTTP/1 request line, or something else. [`read_prefix`]
//! reads until [`classify`] decides, the peer stops sending, [`MAX_PREFIX`] bytes
//! arrived, or the detection timeout passes — so a protocol where the server speaks
//! first (MySQL, SMTP) is forwarded as TCP after the timeout instead of hanging.
//! The bytes read are replayed with [`Prefixed`].

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The most bytes read for detection: a ClientHello or a request line longer than
/// this is not something this proxy has to understand to forward.
pub const MAX_PREFIX: usize = 16 * 1024;

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS ClientHello, with its server name when it has one.
    Tls { sni: Option<String> },
    /// The HTTP/2 connection preface (prior knowledge).
    Http2,
    /// An HTTP/1.x request line.
    Http1,
    /// Anything else, or nothing within the timeout: forwarded as TCP.
    Opaque,
}

/// What `prefix` says, or `None` when more bytes are needed to tell.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    if prefix.is_empty() {
        return None;
    }
    if prefix[0] == 0x16 {
        return match client_hello_sni(prefix) {
            Hello::Incomplete => None,
            Hello::Sni(sni) => Some(Protocol::Tls { sni }),
            Hello::NotTls => Some(Protocol::Opaque),
        };
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    http1_request_line(prefix)
}

/// An HTTP/1 request line: `METHOD SP target SP HTTP/1.x CRLF`.
fn http1_request_line(prefix: &[u8]) -> Option<Protocol> {
    // The method: 1 to 16 token characters, then a space.
    let method_len = prefix
        .iter()
        .take(17)
        .position(|b| !is_token(*b))
        .unwrap_or(prefix.len().min(17));
    if method_len == 0 || method_len > 16 {
        return Some(Protocol::Opaque);
    }
    let &after = prefix.get(method_len)?;
    if after != b' ' {
        return Some(Protocol::Opaque);
    }
    let Some(eol) = prefix.iter().position(|b| *b == b'\n') else {
        // A request line can be long; past the cap it is not worth detecting.
        return (prefix.len() >= MAX_PREFIX).then_some(Protocol::Opaque);
    };
    let line = prefix[..eol].strip_suffix(b"\r").unwrap_or(&prefix[..eol]);
    let ok = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    Some(if ok {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

enum Hello {
    Incomplete,
    NotTls,
    Sni(Option<String>),
}

/// Parses a TLS record holding a ClientHello far enough to find its SNI.
fn client_hello_sni(buf: &[u8]) -> Hello {
    // Record header: type 22, version 3.x, length.
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    if buf[1] != 3 {
        return Hello::NotTls;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record_len == 0 || record_len > 16 * 1024 + 2048 {
        return Hello::NotTls;
    }
    let Some(record) = buf.get(5..5 + record_len) else {
        // A ClientHello in several records is legal but rare; the first record is
        // enough when it holds the whole handshake message, which is what is parsed.
        return if buf.len() >= MAX_PREFIX {
            Hello::NotTls
        } else {
            Hello::Incomplete
        };
    };
    match parse_hello(record) {
        Some(sni) => Hello::Sni(sni),
        None => Hello::NotTls,
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// The SNI of a ClientHello handshake message (`Some(None)`: a ClientHello without
/// SNI), or `None` when it is not a well-formed ClientHello.
fn parse_hello(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut hello = Reader(r.take(len)?);
    hello.take(2 + 32)?; // version, random
    let session = usize::from(hello.u8()?);
    hello.take(session)?;
    let suites = hello.u16()?;
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Some(None);
    }
    let extensions_len = hello.u16()?;
    let mut extensions = Reader(hello.take(extensions_len)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        let body = extensions.take(len)?;
        if kind != 0 {
            continue;
        }
        // server_name: a list of (type, name); type 0 is a host name.
        let mut list = Reader(body);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name_len = names.u16()?;
            let name = names.take(name_len)?;
            if name_type == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .map(|n| Some(n.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Reads from `io` until the protocol is known, the peer sends nothing more for
/// `timeout`, or [`MAX_PREFIX`] bytes arrived. Returns the bytes read (to replay) and
/// the protocol; an error only when reading fails.
pub async fn read_prefix<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> io::Result<(Vec<u8>, Protocol)> {
    let mut buf = Vec::with_capacity(512);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok((buf, protocol));
        }
        if buf.len() >= MAX_PREFIX {
            return Ok((buf, Protocol::Opaque));
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(MAX_PREFIX - buf.len());
        match tokio::time::timeout_at(deadline, io.read(&mut chunk[..want])).await {
            // Nothing (more) within the timeout: the server may speak first.
            Err(_) => return Ok((buf, Protocol::Opaque)),
            Ok(Ok(0)) => return Ok((buf, Protocol::Opaque)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => return Err(error),
        }
    }
}

/// An IO that first yields `prefix` (bytes already read for detection), then reads
/// from the inner IO; writes go straight to it.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: Vec<u8>,
    offset: usize,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Vec<u8>, inner: I) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;

//! HTTP/1 message framing, read from bytes that pass through unchanged.
//!
//! A [`Reader`] follows one direction of an HTTP/1 connection: it finds where each
//! message head ends, parses it, and then where its body ends (a `content-length`,
//! chunked encoding with trailers, or the connection's end), without copying or
//! changing a byte. What it reports — a head of so many bytes, so many body bytes —
//! tells the caller what may be forwarded; the body framing of a response depends on
//! its request, so the caller decides it ([`response_body`]) and hands it back.
//!
//! It is pure and total: any input gives a [`Step`] or an [`Error`], never a panic,
//! and bytes may arrive split anywhere. Requests are held to the rules that keep a
//! proxy and an application from reading one stream two ways: a
//! `transfer-encoding` whose last coding is not `chunked`, one together with a
//! `content-length`, or conflicting lengths are refused (400).

/// The most bytes a message head may have.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a message head may have.
pub const MAX_HEADERS: usize = 100;
/// The most bytes of a chunk-size line (its extensions included) and of a body's
/// trailers.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a message cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the message head is not HTTP/1")]
    Head,
    #[error(
        "the message head is larger than {MAX_HEAD} bytes or has more than {MAX_HEADERS} fields"
    )]
    HeadTooLarge,
    #[error("the body's length is ambiguous or invalid")]
    Length,
    #[error("the chunked body is invalid")]
    Chunked,
}

/// A parsed request head: what the framing of its response and the metrics need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// `HEAD`: its response has no body whatever its headers say.
    pub head_method: bool,
    /// `CONNECT`: a 2xx response makes the connection a tunnel.
    pub connect: bool,
    /// It asks for an upgrade (`upgrade` header): a 101 makes the connection a tunnel.
    pub upgrade: bool,
    pub body: Body,
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The framing its headers give, before what its request says ([`response_body`]).
    pub framing: Body,
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// So many bytes (0: no body).
    Length(u64),
    Chunked,
    /// Until the connection ends (a response without a length).
    UntilClose,
}

/// What the next bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<H> {
    /// A whole head, the first `len` bytes. The caller sets its body with
    /// [`Reader::body`].
    Head { len: usize, head: H },
    /// `len` bytes of body; `end`: the message ends with them.
    Body { len: usize, end: bool },
    /// Nothing whole yet: more bytes are needed.
    More,
}

/// Where a reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Where a chunked body's reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, its digits, the line's length, and
    /// whether the size has ended (extensions or whitespace follow).
    Size {
        size: u64,
        digits: u32,
        line: usize,
        ended: bool,
    },
    /// The size line's CR was read.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailers: the current line's length, and their total.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        line: usize,
        total: usize,
    },
}

const CHUNK_START: Chunk = Chunk::Size {
    size: 0,
    digits: 0,
    line: 0,
    ended: false,
};

/// One direction's reader: requests (`Reader<RequestHead>`) or responses.
#[derive(Clone, Debug)]
pub struct Reader<H> {
    state: State,
    /// How far the current head's end was looked for: a head arriving in small
    /// pieces is scanned once, not once per piece.
    searched: usize,
    _head: std::marker::PhantomData<H>,
}

impl<H: ParseHead> Default for Reader<H> {
    fn default() -> Self {
        Self {
            state: State::Head,
            searched: 0,
            _head: std::marker::PhantomData,
        }
    }
}

impl<H: ParseHead> Reader<H> {
    /// Whether it is between messages (no part of one read yet).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head
    }

    /// Whether the current body ends with the connection.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Sets the body of the message whose head was just read.
    pub fn body(&mut self, body: Body) {
        self.state = match body {
            Body::Length(0) => State::Head,
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Chunked(CHUNK_START),
            Body::UntilClose => State::UntilClose,
        };
    }

    /// Reads what `bytes` (all that arrived and was not yet stepped over) begin with.
    pub fn step(&mut self, bytes: &[u8]) -> Result<Step<H>, Error> {
        match self.state {
            State::Head => {
                let Some(end) = head_end(bytes, self.searched.saturating_sub(2)) else {
                    self.searched = bytes.len();
                    return if bytes.len() >= MAX_HEAD {
                        Err(Error::HeadTooLarge)
                    } else {
                        Ok(Step::More)
                    };
                };
                match H::parse(&bytes[..end])? {
                    Some((len, head)) => {
                        self.searched = 0;
                        Ok(Step::Head { len, head })
                    }
                    // Not whole after all (a line end httparse reads otherwise).
                    None if bytes.len() >= MAX_HEAD => Err(Error::HeadTooLarge),
                    None => {
                        self.searched = end;
                        Ok(Step::More)
                    }
                }
            }
            _ if bytes.is_empty() => Ok(Step::More),
            State::Length(left) => {
                let len = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                let left = left - len as u64;
                self.state = if left == 0 {
                    State::Head
                } else {
                    State::Length(left)
                };
                Ok(Step::Body {
                    len,
                    end: left == 0,
                })
            }
            State::UntilClose => Ok(Step::Body {
                len: bytes.len(),
                end: false,
            }),
            State::Chunked(chunk) => {
                let (len, chunk) = chunked(chunk, bytes)?;
                let end = chunk.is_none();
                self.state = chunk.map_or(State::Head, State::Chunked);
                Ok(Step::Body { len, end })
            }
        }
    }
}

/// Steps over the chunked body bytes at the start of `bytes` from `chunk`: how many
/// (all of them, or up to the body's end), and where the body then is (`None`:
/// ended).
fn chunked(mut chunk: Chunk, bytes: &[u8]) -> Result<(usize, Option<Chunk>), Error> {
    let mut i = 0;
    while i < bytes.len() {
        if let Chunk::Data(left) = chunk {
            let n = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(bytes.len() - i);
            i += n;
            let left = left - n as u64;
            chunk = if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            };
            continue;
        }
        let byte = bytes[i];
        i += 1;
        chunk = match chunk {
            Chunk::Size {
                size,
                digits,
                line,
                ended,
            } => {
                let line = line + 1;
                if line > MAX_CHUNK_LINE {
                    return Err(Error::Chunked);
                }
                match (byte, ended) {
                    (b'\r', _) if digits > 0 => Chunk::SizeLf { size },
                    (b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F', false) => {
                        if digits >= 16 {
                            return Err(Error::Chunked);
                        }
                        let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
                        Chunk::Size {
                            size: size << 4 | digit,
                            digits: digits + 1,
                            line,
                            ended,
                        }
                    }
                    // Extensions (`;name=value`) and whitespace after the size are
                    // skipped, not interpreted.
                    (b';' | b' ' | b'\t', _) if digits > 0 => Chunk::Size {
                        size,
                        digits,
                        line,
                        ended: true,
                    },
                    (b'\n', _) => return Err(Error::Chunked),
                    (_, true) if byte >= 0x20 || byte == b'\t' => Chunk::Size {
                        size,
                        digits,
                        line,
                        ended,
                    },
                    _ => return Err(Error::Chunked),
                }
            }
            Chunk::SizeLf { size } if byte == b'\n' => {
                if size == 0 {
                    Chunk::Trailer { line: 0, total: 0 }
                } else {
                    Chunk::Data(size)
                }
            }
            Chunk::DataCr if byte == b'\r' => Chunk::DataLf,
            Chunk::DataLf if byte == b'\n' => CHUNK_START,
            Chunk::Trailer { line, total } => {
                let total = total + 1;
                if total > MAX_TRAILERS {
                    return Err(Error::Chunked);
                }
                match byte {
                    b'\r' => Chunk::TrailerLf { line, total },
                    b'\n' => return Err(Error::Chunked),
                    _ => Chunk::Trailer {
                        line: line + 1,
                        total,
                    },
                }
            }
            Chunk::TrailerLf { line: 0, .. } if byte == b'\n' => return Ok((i, None)),
            Chunk::TrailerLf { total, .. } if byte == b'\n' => Chunk::Trailer { line: 0, total },
            _ => return Err(Error::Chunked),
        };
    }
    Ok((i, Some(chunk)))
}

/// A message head that [`Reader`] can parse.
pub trait ParseHead: Sized {
    /// The head `bytes` begin with and its length, `None` if it is not whole yet.
    fn parse(bytes: &[u8]) -> Result<Option<(usize, Self)>, Error>;
}

impl ParseHead for RequestHead {
    fn parse(bytes: &[u8]) -> Result<Option<(usize, Self)>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let Some(len) = head_len(request.parse(bytes))? else {
            return Ok(None);
        };
        let method = request.method.unwrap_or_default();
        let headers = request.headers;
        let body = match body_of(headers)? {
            Some(body) => body,
            None => Body::Length(0),
        };
        Ok(Some((
            len,
            Self {
                head_method: method == "HEAD",
                connect: method == "CONNECT",
                upgrade: headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("upgrade")),
                body,
            },
        )))
    }
}

impl ParseHead for ResponseHead {
    fn parse(bytes: &[u8]) -> Result<Option<(usize, Self)>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let Some(len) = head_len(response.parse(bytes))? else {
            return Ok(None);
        };
        let status = response.code.unwrap_or_default();
        let framing = match body_of(response.headers) {
            Ok(Some(body)) => body,
            // Without a length, or with a coding other than chunked last, a response
            // ends with the connection.
            Ok(None) | Err(_) => Body::UntilClose,
        };
        Ok(Some((len, Self { status, framing })))
    }
}

/// The length of a head httparse read: `None` while it is not whole.
fn head_len(parsed: httparse::Result<usize>) -> Result<Option<usize>, Error> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Err(Error::HeadTooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Error::HeadTooLarge),
        Err(_) => Err(Error::Head),
    }
}

/// Where the first head `bytes` may hold ends (the blank line after it), looked for
/// from `from`: the index just past it.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = bytes.get(i..)?.iter().position(|&b| b == b'\n') {
        let lf = i + at;
        match bytes.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            None if bytes.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => i = lf + 1,
        }
    }
    None
}

/// The body framing `headers` give: `None` without `transfer-encoding` or
/// `content-length`; an error for an ambiguous or invalid one.
fn body_of(headers: &[httparse::Header<'_>]) -> Result<Option<Body>, Error> {
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).map_err(|_| Error::Length)?;
            // Only the last coding matters; it must be chunked to delimit the body.
            if let Some(last) = value.rsplit(',').map(str::trim).find(|c| !c.is_empty()) {
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).map_err(|_| Error::Length)?;
            for part in value.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::Length);
                }
                let n: u64 = part.parse().map_err(|_| Error::Length)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Length);
                }
                length = Some(n);
            }
        }
    }
    match (chunked, length) {
        (Some(_), Some(_)) | (Some(false), None) => Err(Error::Length),
        (Some(true), None) => Ok(Some(Body::Chunked)),
        (None, Some(n)) => Ok(Some(Body::Length(n))),
        (None, None) => Ok(None),
    }
}

/// What follows a response head, given its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// An interim (1xx) response: the final one is still to come.
    Interim,
    /// The final response, with its body.
    Final(Body),
    /// The connection becomes a tunnel (101 to an upgrade, 2xx to a CONNECT).
    Tunnel,
}

/// What follows `response`, the answer to `request`.
pub fn response_body(request: &RequestHead, response: &ResponseHead) -> Next {
    match response.status {
        101 if request.upgrade => Next::Tunnel,
        100..=199 => Next::Interim,
        200..=299 if request.connect => Next::Tunnel,
        204 | 304 => Next::Final(Body::Length(0)),
        _ if request.head_method => Next::Final(Body::Length(0)),
        _ => Next::Final(response.framing),
    }
}

#[cfg(test)]
mod tests;

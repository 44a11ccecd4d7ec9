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
//! and bytes may arrive split anywhere. It reads strictly (RFC 9112), so that the
//! proxy and the application never read one stream two ways:
//! - a request with a `transfer-encoding` whose last coding is not `chunked`, with
//!   one on HTTP/1.0 (which has none), with one together with a `content-length`, or
//!   with an invalid or conflicting `content-length`, is refused ([`Error::Length`],
//!   answered 400);
//! - a response with a `transfer-encoding` reads it, whatever `content-length` it
//!   also has: chunked if that is its last coding, else until the connection ends.
//!   One that has both is suspect (a response split in two by whoever reads its
//!   length), so its connection closes after it ([`ResponseHead::close`]) rather
//!   than carry another;
//! - a response with an invalid or conflicting `content-length` and no
//!   `transfer-encoding`, or with a `transfer-encoding` on HTTP/1.0, cannot be framed
//!   at all: an [`Error::Length`], which the relay answers 502 in its place;
//! - field values are trimmed of HTTP's whitespace only (space and tab): a coding or
//!   a length with any other byte around it is not that coding or length;
//! - a chunk-size line is hex digits, optional spaces and tabs, then its end or `;`
//!   and extensions (skipped, not interpreted); anything else in it is an
//!   [`Error::Chunked`].

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
    /// Its framing is suspect (a `transfer-encoding` with a `content-length`): the
    /// connection must close once it has ended, not carry another message.
    pub close: bool,
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
    /// In a chunk-size line: the size so far, the line's length, and where in it.
    Size {
        size: u64,
        line: usize,
        at: SizeLine,
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

/// Where in a chunk-size line (`1a ;name=value`) a reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SizeLine {
    /// In the size, after so many hex digits.
    Digits(u32),
    /// In spaces or tabs after it.
    Space,
    /// In its extensions, after a `;`.
    Extension,
}

const CHUNK_START: Chunk = Chunk::Size {
    size: 0,
    line: 0,
    at: SizeLine::Digits(0),
};

/// One direction's reader: requests (`Reader<RequestHead>`) or responses.
#[derive(Clone, Debug)]
pub struct Reader<H> {
    state: State,
    /// Where to go on looking for the current head's end: a head arriving in small
    /// pieces is scanned once, not once per piece.
    searched: usize,
    /// A byte other than a blank line's came: the head has begun.
    begun: bool,
    _head: std::marker::PhantomData<H>,
}

impl<H: ParseHead> Default for Reader<H> {
    fn default() -> Self {
        Self {
            state: State::Head,
            searched: 0,
            begun: false,
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
                if !self.begun {
                    // Blank lines before a head are passed over (RFC 9112 §2.2, as
                    // httparse does): its end is looked for after them.
                    let from = self.searched.min(bytes.len());
                    let Some(at) = bytes[from..]
                        .iter()
                        .position(|b| !matches!(b, b'\r' | b'\n'))
                    else {
                        self.searched = bytes.len();
                        return too_large_or_more(bytes);
                    };
                    self.searched = from + at;
                    self.begun = true;
                }
                loop {
                    let Some(end) = head_end(bytes, self.searched) else {
                        // A line end may still complete one within the last two bytes.
                        self.searched = self.searched.max(bytes.len().saturating_sub(2));
                        return too_large_or_more(bytes);
                    };
                    match H::parse(&bytes[..end])? {
                        Some((len, head)) => {
                            (self.searched, self.begun) = (0, false);
                            return Ok(Step::Head { len, head });
                        }
                        // Not whole after all (a line end httparse reads otherwise):
                        // its end is further on.
                        None => self.searched = end - 1,
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

/// What a head's start without its end is: too large, or waiting for more.
fn too_large_or_more<H>(bytes: &[u8]) -> Result<Step<H>, Error> {
    if bytes.len() >= MAX_HEAD {
        Err(Error::HeadTooLarge)
    } else {
        Ok(Step::More)
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
            Chunk::Size { size, line, at } => size_line(size, line + 1, at, byte)?,
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

/// Where a chunk-size line is after `byte`, its `line`th, from `size` read so far and
/// `at`.
fn size_line(size: u64, line: usize, at: SizeLine, byte: u8) -> Result<Chunk, Error> {
    if line > MAX_CHUNK_LINE {
        return Err(Error::Chunked);
    }
    let (size, at) = match (at, byte) {
        // At most 16 digits: any size fits.
        (SizeLine::Digits(digits @ ..16), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
            let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
            (size << 4 | digit, SizeLine::Digits(digits + 1))
        }
        // After at least one digit: the line's end, blanks, or extensions.
        (SizeLine::Digits(1..) | SizeLine::Space | SizeLine::Extension, b'\r') => {
            return Ok(Chunk::SizeLf { size });
        }
        (SizeLine::Digits(1..) | SizeLine::Space, b' ' | b'\t') => (size, SizeLine::Space),
        (SizeLine::Digits(1..) | SizeLine::Space, b';') => (size, SizeLine::Extension),
        // An extension's text (tokens, `=`, quoted strings) is skipped, not
        // interpreted; a control byte is no part of one.
        (SizeLine::Extension, b'\t' | b' '..=b'~' | 0x80..=0xff) => (size, SizeLine::Extension),
        _ => return Err(Error::Chunked),
    };
    Ok(Chunk::Size { size, line, at })
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
        let fields = Fields::of(headers);
        let body = match (fields.chunked, fields.length?) {
            // HTTP/1.0 has no transfer codings: an application may not read one.
            (Some(_), _) if request.version == Some(0) => return Err(Error::Length),
            (Some(true), None) => Body::Chunked,
            (Some(_), _) => return Err(Error::Length),
            (None, length) => Body::Length(length.unwrap_or(0)),
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
        let fields = Fields::of(response.headers);
        let (framing, close) = match (fields.chunked, fields.length) {
            (Some(_), _) if response.version == Some(0) => return Err(Error::Length),
            // A transfer-encoding overrides any content-length (RFC 9112 §6.3); the
            // two together close the connection after the response.
            (Some(chunked), length) => {
                let framing = if chunked {
                    Body::Chunked
                } else {
                    Body::UntilClose
                };
                (framing, length != Ok(None))
            }
            (None, Ok(Some(n))) => (Body::Length(n), false),
            (None, Ok(None)) => (Body::UntilClose, false),
            (None, Err(error)) => return Err(error),
        };
        Ok(Some((
            len,
            Self {
                status,
                framing,
                close,
            },
        )))
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

/// What a head's framing fields say.
struct Fields {
    /// With a `transfer-encoding`: whether its last coding is `chunked`.
    chunked: Option<bool>,
    /// The `content-length`, if any; an error if it is invalid or conflicting.
    length: Result<Option<u64>, Error>,
}

impl Fields {
    fn of(headers: &[httparse::Header<'_>]) -> Self {
        let mut fields = Self {
            chunked: None,
            length: Ok(None),
        };
        for header in headers {
            if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding matters; it must be chunked to delimit the
                // body. Empty list elements are no codings: a field of nothing else
                // leaves the last one as it was, or, alone, makes one that is not
                // chunked.
                let last = header
                    .value
                    .rsplit(|&b| b == b',')
                    .map(trim)
                    .find(|c| !c.is_empty());
                fields.chunked = Some(match last {
                    Some(coding) => coding.eq_ignore_ascii_case(b"chunked"),
                    None => fields.chunked.unwrap_or(false),
                });
            } else if header.name.eq_ignore_ascii_case("content-length") {
                fields.length = fields.length.and_then(|length| {
                    // The same length repeated is one length.
                    header
                        .value
                        .split(|&b| b == b',')
                        .try_fold(length, |length, part| {
                            let n = decimal(trim(part)).ok_or(Error::Length)?;
                            match length {
                                Some(l) if l != n => Err(Error::Length),
                                _ => Ok(Some(n)),
                            }
                        })
                });
            }
        }
        fields
    }
}

/// `value` without the spaces and tabs around it (HTTP's whitespace, and no other).
fn trim(value: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// The number `digits` spell in decimal: `None` if they are not all digits, none, or
/// more than a `u64`.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
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

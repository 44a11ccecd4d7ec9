//! One direction of a relayed HTTP/1 connection ([`Half`]): the bytes read
//! and not yet written, and where its messages begin and end.

use super::*;

/// One direction: bytes read and not yet written, and where its messages are.
pub(super) struct Half<H> {
    pub(super) buf: Vec<u8>,
    /// `buf[pos..filled]` is read and not yet written; its first `ready` bytes may be.
    pub(super) pos: usize,
    pub(super) filled: usize,
    pub(super) ready: usize,
    pub(super) reader: Reader<H>,
    /// Written since the last flush.
    pub(super) unflushed: bool,
    /// The source has ended.
    pub(super) eof: bool,
    /// The destination was shut down (a tunnel's half-close).
    pub(super) shut: bool,
    /// Bytes read from the source, and written to the destination.
    pub(super) read: u64,
    pub(super) moved: u64,
}

impl<H: framing::ParseHead> Half<H> {
    pub(super) fn new() -> Self {
        Self {
            buf: vec![0; BUFFER],
            pos: 0,
            filled: 0,
            ready: 0,
            reader: Reader::default(),
            unflushed: false,
            eof: false,
            shut: false,
            read: 0,
            moved: 0,
        }
    }

    /// Reads what the unread bytes begin with.
    pub(super) fn step(&mut self) -> Result<Step<H>, framing::Error> {
        self.reader
            .step(&self.buf[self.pos + self.ready..self.filled])
    }

    pub(super) fn unread(&self) -> &[u8] {
        &self.buf[self.pos + self.ready..self.filled]
    }

    /// Nothing is held: between messages, with nothing read beyond them.
    pub(super) fn idle(&self) -> bool {
        self.reader.at_boundary() && self.pos == self.filled
    }

    /// Writes the ready bytes to `to` (in a `tunnel`, every byte read is ready);
    /// `Ready` once none are left.
    pub(super) fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
        tunnel: bool,
    ) -> Poll<io::Result<()>> {
        if tunnel {
            self.ready = self.filled - self.pos;
        }
        while self.ready > 0 {
            let bytes = &self.buf[self.pos..self.pos + self.ready];
            let n = ready!(Pin::new(&mut *to).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
            self.ready -= n;
            self.moved += n as u64;
            self.unflushed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Once the ready bytes are written: flushes `to`, then reads more from `from`;
    /// `Ready(false)` once `from` has ended.
    pub(super) fn poll_next<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<bool>> {
        if self.unflushed {
            ready!(Pin::new(to).poll_flush(cx))?;
            self.unflushed = false;
        }
        if self.eof {
            return Poll::Ready(Ok(false));
        }
        self.poll_fill(cx, from)
    }

    /// Reads more from `from` (making room first); `Ready(false)` at its end.
    pub(super) fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
    ) -> Poll<io::Result<bool>> {
        if self.pos == self.filled {
            (self.pos, self.filled) = (0, 0);
        } else if self.filled == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.filled, 0);
                (self.filled, self.pos) = (self.filled - self.pos, 0);
            } else {
                // A head that does not fit yet; the reader refuses it past its limit.
                let grown = (self.buf.len() * 2).min(framing::MAX_HEAD + BUFFER);
                self.buf.resize(grown, 0);
            }
        }
        if self.filled == self.buf.len() {
            return Poll::Ready(Err(io::Error::other("no room left for a message head")));
        }
        let mut buf = ReadBuf::new(&mut self.buf[self.filled..]);
        ready!(Pin::new(from).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.filled += n;
        self.read += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n > 0))
    }
}

//! HTTP/1 framing on arbitrary bytes, as the inbound relay reads them: the input read
//! as requests and as responses, fed whole and in pieces of a size its first byte
//! picks. Never a panic, no step claims more bytes than it was given, and the pieces
//! read the same messages as the whole.
//!
//! The first byte also picks the request the responses answer (their bodies depend
//! on it), and may put the start of a head before the input whose framing is known
//! whatever follows: an HTTP/1.0 request with a `transfer-encoding` is never read, an
//! HTTP/1.1 one is chunked or refused, and a response with one is never framed by a
//! length. Responses are read as the relay reads them: not past one after which the
//! connection closes.
#![no_main]

use std::fmt::Debug;

use weft_proxy::http::framing::{
    Body, Error, Next, ParseHead, Reader, RequestHead, ResponseHead, Step, response_body,
};

/// What reading found: a head, or a message's end after so many body bytes.
#[derive(Debug, PartialEq, Eq)]
enum Seen<H> {
    Head(H),
    End(usize),
}

/// What `data` holds, fed `piece` bytes at a time, and how many bytes were left
/// unread; or where reading failed. `body_of` gives a head's body, and whether the
/// connection ends with its message.
fn read<H: ParseHead + Debug>(
    data: &[u8],
    piece: usize,
    body_of: &dyn Fn(&H) -> (Body, bool),
) -> Result<(Vec<Seen<H>>, usize), Error> {
    let mut reader = Reader::<H>::default();
    let (mut seen, mut start, mut end, mut body) = (Vec::new(), 0, 0, 0);
    let mut last = false;
    loop {
        end = (end + piece).min(data.len());
        loop {
            if last && reader.at_boundary() {
                return Ok((seen, data.len() - start));
            }
            let unread = &data[start..end];
            match reader.step(unread)? {
                Step::Head { len, head } => {
                    assert!(len > 0 && len <= unread.len(), "{len} of {}", unread.len());
                    start += len;
                    let (next, close) = body_of(&head);
                    reader.body(next);
                    last = close;
                    seen.push(Seen::Head(head));
                    if reader.at_boundary() {
                        seen.push(Seen::End(0));
                    }
                }
                Step::Body { len, end: ended } => {
                    assert!(len > 0 && len <= unread.len(), "{len} of {}", unread.len());
                    start += len;
                    body += len;
                    if ended {
                        seen.push(Seen::End(body));
                        body = 0;
                    }
                }
                Step::More => break,
            }
        }
        if end == data.len() {
            return Ok((seen, end - start));
        }
    }
}

/// Heads the input may follow (fields come next), whose framing is known.
const PREFIXES: [&[u8]; 4] = [
    b"",
    b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n",
    b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n",
];

/// The first head `read` found.
fn first_head<H>(read: &Result<(Vec<Seen<H>>, usize), Error>) -> Option<&H> {
    match read {
        Ok((seen, _)) => seen.iter().find_map(|s| match s {
            Seen::Head(head) => Some(head),
            Seen::End(_) => None,
        }),
        Err(_) => None,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 16) + 1;
    let prefix = usize::from(first >> 4) % PREFIXES.len();
    let data = [PREFIXES[prefix], data].concat();
    let get = RequestHead {
        head_method: false,
        connect: false,
        upgrade: false,
        body: Body::Length(0),
    };
    let request = match first >> 6 {
        0 => get,
        1 => RequestHead {
            head_method: true,
            ..get
        },
        2 => RequestHead {
            connect: true,
            ..get
        },
        _ => RequestHead {
            upgrade: true,
            ..get
        },
    };
    let whole = data.len().max(1);

    let requests = |piece| read::<RequestHead>(&data, piece, &|h| (h.body, false));
    let read_whole = requests(whole);
    assert_eq!(read_whole, requests(piece));
    match prefix {
        1 => assert!(first_head(&read_whole).is_none(), "{read_whole:?}"),
        2 => {
            if let Some(head) = first_head(&read_whole) {
                assert_eq!(head.body, Body::Chunked, "{read_whole:?}");
            }
        }
        _ => {}
    }

    let responses = |piece| {
        read::<ResponseHead>(&data, piece, &|h| match response_body(&request, h) {
            Next::Interim => (Body::Length(0), false),
            Next::Final(body) => (body, h.close),
            // The rest is relayed unread.
            Next::Tunnel => (Body::UntilClose, false),
        })
    };
    let read_whole = responses(whole);
    assert_eq!(read_whole, responses(piece));
    if prefix == 3 {
        if let Some(head) = first_head(&read_whole) {
            assert!(
                matches!(head.framing, Body::Chunked | Body::UntilClose),
                "{read_whole:?}"
            );
        }
    }
});

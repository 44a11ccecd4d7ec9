//! HTTP/1 framing on arbitrary bytes, as the inbound relay reads them: the input read
//! as requests and as responses, fed whole and in pieces of a size its first byte
//! picks. Never a panic, no step claims more bytes than it was given, and the pieces
//! read the same messages as the whole.
#![no_main]

use std::fmt::Debug;

use weft_proxy::http::framing::{
    Body, Error, ParseHead, Reader, RequestHead, ResponseHead, Step,
};

/// The heads and message ends `data` holds, fed `piece` bytes at a time, and how many
/// bytes were left unread; or where reading failed.
fn read<H: ParseHead + Debug>(
    data: &[u8],
    piece: usize,
    body_of: fn(&H) -> Body,
) -> Result<(Vec<String>, usize), Error> {
    let mut reader = Reader::<H>::default();
    let (mut seen, mut start, mut end, mut body) = (Vec::new(), 0, 0, 0);
    loop {
        end = (end + piece).min(data.len());
        loop {
            let unread = &data[start..end];
            match reader.step(unread)? {
                Step::Head { len, head } => {
                    assert!(len > 0 && len <= unread.len(), "{len} of {}", unread.len());
                    start += len;
                    reader.body(body_of(&head));
                    seen.push(format!("{head:?}"));
                    if reader.at_boundary() {
                        seen.push("end".into());
                    }
                }
                Step::Body { len, end: last } => {
                    assert!(len > 0 && len <= unread.len(), "{len} of {}", unread.len());
                    start += len;
                    body += len;
                    if last {
                        seen.push(format!("end after {body}"));
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

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 16) + 1;
    let whole = data.len().max(1);
    let requests = |piece| read::<RequestHead>(data, piece, |h| h.body);
    assert_eq!(requests(whole), requests(piece));
    let responses = |piece| read::<ResponseHead>(data, piece, |h| h.framing);
    assert_eq!(responses(whole), responses(piece));
});

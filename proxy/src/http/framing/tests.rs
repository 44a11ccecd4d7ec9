use super::*;

/// Steps `reader` over all of `bytes` fed `chunk` bytes at a time, as the relay
/// does; the heads and body lengths seen (a body split over reads is summed).
fn read_all<H: ParseHead + std::fmt::Debug>(
    reader: &mut Reader<H>,
    bytes: &[u8],
    chunk: usize,
    body_of: impl Fn(&H) -> Body,
) -> Result<Vec<String>, Error> {
    let mut seen = Vec::new();
    let (mut start, mut end, mut body) = (0, 0, 0);
    while start < bytes.len() {
        end = (end + chunk).min(bytes.len()).max(end);
        loop {
            match reader.step(&bytes[start..end])? {
                Step::Head { len, head } => {
                    start += len;
                    reader.body(body_of(&head));
                    seen.push(format!("{head:?}"));
                    if reader.at_boundary() {
                        seen.push("end 0".into());
                    }
                }
                Step::Body { len, end: last } => {
                    start += len;
                    body += len;
                    if last {
                        seen.push(format!("end {body}"));
                        body = 0;
                    }
                }
                Step::More => break,
            }
        }
        if end == bytes.len() && start < end {
            seen.push(format!("left {}", end - start));
            break;
        }
    }
    Ok(seen)
}

fn requests(bytes: &[u8], chunk: usize) -> Result<Vec<String>, Error> {
    read_all(&mut Reader::<RequestHead>::default(), bytes, chunk, |h| {
        h.body
    })
}

fn responses(bytes: &[u8], chunk: usize) -> Result<Vec<String>, Error> {
    read_all(&mut Reader::<ResponseHead>::default(), bytes, chunk, |h| {
        h.framing
    })
}

/// The same as `read` fed whole, whatever the pieces `bytes` arrive in.
fn split_anywhere(
    read: fn(&[u8], usize) -> Result<Vec<String>, Error>,
    bytes: &[u8],
) -> Result<Vec<String>, Error> {
    let whole = read(bytes, bytes.len());
    for chunk in [1, 2, 3, 7] {
        assert_eq!(read(bytes, chunk), whole, "split by {chunk}: {bytes:?}");
    }
    whole
}

#[test]
fn requests_are_framed_by_length_chunks_or_nothing_however_the_bytes_are_split() {
    let stream = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n\
        POST /o HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
        PUT /c HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 1\r\n\r\n\
        HEAD /h HTTP/1.1\r\n\r\n";
    let whole = requests(stream, stream.len()).unwrap();
    assert_eq!(whole.len(), 8, "{whole:?}");
    assert_eq!(whole[1], "end 0");
    assert_eq!(whole[3], "end 5");
    assert_eq!(whole[5], "end 53");
    assert!(whole[6].contains("head_method: true"));
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(requests(stream, chunk).unwrap(), whole, "split by {chunk}");
    }
}

#[test]
fn ambiguous_or_invalid_lengths_are_refused() {
    for head in [
        "POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        // A transfer-encoding with no coding has no chunked last.
        "POST / HTTP/1.1\r\ntransfer-encoding: , \t,\r\n\r\n",
    ] {
        assert_eq!(requests(head.as_bytes(), 1), Err(Error::Length), "{head}");
    }
    // The same length twice is one length.
    let same = b"POST / HTTP/1.1\r\ncontent-length: 2, 2\r\n\r\nok";
    assert_eq!(requests(same, 1).unwrap().last().unwrap(), "end 2");
}

#[test]
fn malformed_heads_and_chunks_are_errors_not_guesses() {
    assert_eq!(
        requests(b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 4),
        Err(Error::Head)
    );
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("x-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(requests(many.as_bytes(), 100), Err(Error::HeadTooLarge));
    let endless = vec![b'a'; MAX_HEAD + 10];
    let mut head = b"GET /".to_vec();
    head.extend_from_slice(&endless);
    assert_eq!(requests(&head, 4096), Err(Error::HeadTooLarge));
    for body in [
        "zz\r\n",
        "5\r\nhelloX",
        "5\nhello\r\n",
        "\r\n",
        "11111111111111111\r\n",
        "0\r\nbad\ntrailer\r\n\r\n",
    ] {
        let request = format!("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{body}");
        assert_eq!(
            requests(request.as_bytes(), 3),
            Err(Error::Chunked),
            "{body:?}"
        );
    }
}

#[test]
fn a_response_body_depends_on_its_request() {
    let get = RequestHead {
        head_method: false,
        connect: false,
        upgrade: false,
        body: Body::Length(0),
    };
    let response = |status, framing| ResponseHead {
        status,
        framing,
        close: false,
    };
    let sized = Body::Length(10);
    assert_eq!(
        response_body(&get, &response(200, sized)),
        Next::Final(sized)
    );
    assert_eq!(response_body(&get, &response(100, sized)), Next::Interim);
    assert_eq!(response_body(&get, &response(101, sized)), Next::Interim);
    let none = Next::Final(Body::Length(0));
    assert_eq!(response_body(&get, &response(204, sized)), none);
    assert_eq!(response_body(&get, &response(304, sized)), none);
    let head = RequestHead {
        head_method: true,
        ..get.clone()
    };
    assert_eq!(response_body(&head, &response(200, Body::Chunked)), none);
    let upgrade = RequestHead {
        upgrade: true,
        ..get.clone()
    };
    assert_eq!(response_body(&upgrade, &response(101, sized)), Next::Tunnel);
    let connect = RequestHead {
        connect: true,
        ..get
    };
    assert_eq!(response_body(&connect, &response(200, sized)), Next::Tunnel);
    assert_eq!(
        response_body(&connect, &response(407, sized)),
        Next::Final(sized)
    );
}

#[test]
fn a_response_without_a_length_ends_with_the_connection() {
    let mut reader = Reader::<ResponseHead>::default();
    let bytes = b"HTTP/1.0 200 OK\r\nserver: old\r\n\r\nall of it";
    let Ok(Step::Head { len, head }) = reader.step(bytes) else {
        panic!("no head");
    };
    assert_eq!(head.framing, Body::UntilClose);
    reader.body(head.framing);
    assert!(reader.until_close());
    assert_eq!(
        reader.step(&bytes[len..]),
        Ok(Step::Body { len: 9, end: false })
    );
}

#[test]
fn noise_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..2000 {
        let mut bytes = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..(round % 97) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let alphabet = b"0123456789abcdef\r\n;x \t";
            bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        let _ = requests(&bytes, 1 + round % 5);
        let _ = read_all(&mut Reader::<ResponseHead>::default(), &bytes, 3, |h| {
            h.framing
        });
    }
}

#[test]
fn a_transfer_encoding_on_an_http10_request_is_refused() {
    for head in [
        "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.0\r\ntransfer-encoding: gzip\r\n\r\n",
        "POST / HTTP/1.0\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\nhello",
    ] {
        assert_eq!(
            split_anywhere(requests, head.as_bytes()),
            Err(Error::Length),
            "{head}"
        );
    }
    // HTTP/1.0 framed by its length is read as ever.
    let sized = b"POST / HTTP/1.0\r\ncontent-length: 5\r\n\r\nhello";
    assert_eq!(split_anywhere(requests, sized).unwrap()[1], "end 5");
}

#[test]
fn field_values_are_trimmed_of_spaces_and_tabs_only() {
    // Blanks around codings and lengths are no part of them.
    let blanks = b"POST / HTTP/1.1\r\ntransfer-encoding: \tgzip ,\t chunked \t\r\n\r\n\
        2\r\nok\r\n0\r\n\r\n\
        POST / HTTP/1.1\r\ncontent-length: \t2 , 2\t\r\n\r\nok";
    let read = split_anywhere(requests, blanks).unwrap();
    assert_eq!((read[1].as_str(), read[3].as_str()), ("end 12", "end 2"));
    // Any other whitespace (here U+00A0 and U+0085, which `str::trim` would take
    // off) makes another coding, or no length.
    for field in [
        "transfer-encoding: chunked\u{a0}",
        "transfer-encoding: \u{85}chunked",
        "content-length: 2\u{a0}",
    ] {
        let request = format!("POST / HTTP/1.1\r\n{field}\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        assert_eq!(
            split_anywhere(requests, request.as_bytes()),
            Err(Error::Length),
            "{field:?}"
        );
    }
    // ASCII controls do not even make a field.
    let formfeed = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\x0c\r\n\r\n0\r\n\r\n";
    assert_eq!(split_anywhere(requests, formfeed), Err(Error::Head));
    // A response's coding that is not quite chunked leaves it to end with the
    // connection.
    let response = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\u{a0}\r\n\r\n0\r\n\r\n";
    let read = split_anywhere(responses, response.as_bytes()).unwrap();
    assert!(read[0].contains("framing: UntilClose"), "{read:?}");
}

#[test]
fn a_chunk_size_is_hex_digits_then_blanks_then_its_end_or_extensions() {
    let sizes = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
        5 \t\r\nhello\r\n\
        5\t ;a=b ; c=\"d e\"\t\xff\r\nhello\r\n\
        5;\r\nhello\r\n\
        0 ;last\r\n\r\n";
    assert_eq!(split_anywhere(requests, sizes).unwrap()[1], "end 62");
    for line in [
        "5 x\r\n",
        "5 6\r\n",
        "5garbage\r\n",
        "5\t\t0\r\n",
        " 5\r\n",
        ";a\r\n",
        "5 \n",
        "5;a\x01b\r\n",
        "5;a\x7f\r\n",
        "5;a\nhello\r\n",
    ] {
        let request = format!(
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{line}hello\r\n0\r\n\r\n"
        );
        assert_eq!(
            split_anywhere(requests, request.as_bytes()),
            Err(Error::Chunked),
            "{line:?}"
        );
    }
}

#[test]
fn a_response_with_a_transfer_encoding_reads_it_and_closes_if_it_has_a_length_too() {
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (fields, framing, close) in [
        ("transfer-encoding: chunked", "Chunked", false),
        (
            "content-length: 3\r\ntransfer-encoding: chunked",
            "Chunked",
            true,
        ),
        (
            "transfer-encoding: chunked\r\ncontent-length: 3",
            "Chunked",
            true,
        ),
        // Overridden, the length need not even be valid.
        (
            "transfer-encoding: chunked\r\ncontent-length: x, 4",
            "Chunked",
            true,
        ),
        ("transfer-encoding: gzip", "UntilClose", false),
        (
            "transfer-encoding: chunked, gzip\r\ncontent-length: 3",
            "UntilClose",
            true,
        ),
    ] {
        let response = format!("HTTP/1.1 200 OK\r\n{fields}\r\n\r\n{body}");
        let read = split_anywhere(responses, response.as_bytes()).unwrap();
        let head = format!("framing: {framing}, close: {close}");
        assert!(read[0].contains(&head), "{fields:?}: {read:?}");
        if framing == "Chunked" {
            assert_eq!(read[1..], ["end 15"], "{fields:?}");
        }
    }
}

#[test]
fn a_response_that_cannot_be_framed_is_an_error() {
    for fields in [
        "content-length: 3\r\ncontent-length: 4",
        "content-length: 3, 4",
        "content-length: -3",
        "content-length: ",
        "content-length: 3\u{a0}",
        "content-length: 99999999999999999999999",
    ] {
        let response = format!("HTTP/1.1 200 OK\r\n{fields}\r\n\r\nabcd");
        assert_eq!(
            split_anywhere(responses, response.as_bytes()),
            Err(Error::Length),
            "{fields:?}"
        );
    }
    let http10 = b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(split_anywhere(responses, http10), Err(Error::Length));
    // One length, however many times it is given, frames it.
    let same = b"HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\ncontent-length: 4\r\n\r\nabcd";
    let read = split_anywhere(responses, same).unwrap();
    assert!(
        read[0].contains("framing: Length(4), close: false"),
        "{read:?}"
    );
    assert_eq!(read[1], "end 4");
}

#[test]
fn blank_lines_before_a_head_are_passed_over_however_the_bytes_are_split() {
    for stream in [
        &b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..],
        b"\n\nGET / HTTP/1.1\r\n\r\n",
        b"\r\n\n\r\n\nGET / HTTP/1.1\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let read = split_anywhere(requests, stream).unwrap();
        assert_eq!(read.len(), 2, "{stream:?}: {read:?}");
    }
}

use super::*;

/// A real ClientHello, made by rustls, for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn a_client_hello_gives_its_sni_and_needs_the_whole_record() {
    let hello = client_hello("web.shop.serviceaccount.identity.weft.cluster.local");
    assert_eq!(
        classify(&hello),
        Some(Protocol::Tls {
            sni: Some("web.shop.serviceaccount.identity.weft.cluster.local".into())
        })
    );
    for cut in [1, 4, 5, 40, hello.len() - 1] {
        assert_eq!(classify(&hello[..cut]), None, "cut at {cut}");
    }
}

#[test]
fn http_is_recognised_by_its_first_line() {
    assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    assert_eq!(classify(&H2_PREFACE[..10]), None);
    assert_eq!(
        classify(b"GET /books HTTP/1.1\r\nHost: x\r\n"),
        Some(Protocol::Http1)
    );
    assert_eq!(classify(b"POST / HTTP/1.0\n"), Some(Protocol::Http1));
    assert_eq!(classify(b"GET /books"), None, "needs the line's end");
    assert_eq!(classify(b"GET / SSH-2.0\r\n"), Some(Protocol::Opaque));
    assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
    assert_eq!(classify(b"\x00\x01binary"), Some(Protocol::Opaque));
    assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque));
}

#[test]
fn garbage_never_panics_and_always_ends() {
    // Every prefix of every TLS-looking and HTTP-looking input, and noise.
    let mut inputs = vec![
        client_hello("a.b"),
        H2_PREFACE.to_vec(),
        b"GET / HTTP/1.1\r\n".to_vec(),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in 0..300 {
        let mut noise = vec![0x16, 0x03];
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            noise.push(seed as u8);
        }
        inputs.push(noise);
    }
    for input in &inputs {
        for cut in 0..=input.len() {
            let _ = classify(&input[..cut]);
        }
    }
    let hello = client_hello("a.b");
    for i in 0..hello.len() {
        let mut bad = hello.clone();
        bad[i] ^= 0xff;
        let _ = classify(&bad);
    }
}

#[tokio::test]
async fn a_silent_peer_is_opaque_after_the_timeout_and_bytes_are_replayed() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let (prefix, protocol) = read_prefix(&mut server, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!((prefix.len(), protocol), (0, Protocol::Opaque));

    tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nrest")
        .await
        .unwrap();
    let (prefix, protocol) = read_prefix(&mut server, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(protocol, Protocol::Http1);
    drop(client);
    let mut replayed = Vec::new();
    Prefixed::new(prefix, server)
        .read_to_end(&mut replayed)
        .await
        .unwrap();
    assert_eq!(replayed, b"GET / HTTP/1.1\r\nrest");
}

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

async fn read(input: &[u8]) -> Result<Request, HttpError> {
    read_request(&mut &input[..], &Limits::default()).await
}

async fn refused(input: &[u8]) -> HttpError {
    match read(input).await {
        Ok(request) => panic!("accepted {request:?}"),
        Err(e) => e,
    }
}

/// What `response` writes, as text.
async fn written(response: &Response, head_only: bool) -> String {
    let mut out = Vec::new();
    response.write_to(&mut out, head_only).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_get_with_a_query_is_read_and_decoded() {
    let request = read(
        b"GET /quarantine/a%20b/%C3%A9?token=abc%2Bdef&to=x+y&flag&bad=%ZZ&&t=2 HTTP/1.1\r\n\
          Host: 127.0.0.1:8025\r\n\
          Cookie: theme=dark; session=s3cret\r\n\
          X-Forwarded-For:  192.0.2.1 \t\r\n\
          \r\n",
    )
    .await
    .unwrap();
    assert_eq!(request.method, Method::Get);
    assert_eq!(request.path, "/quarantine/a b/é");
    assert_eq!(
        request.query,
        [
            ("token".into(), "abc+def".into()),
            ("to".into(), "x y".into()),
            ("flag".into(), String::new()),
            ("t".into(), "2".into()),
        ]
    );
    assert_eq!(request.query_value("to"), Some("x y"));
    assert_eq!(request.query_value("bad"), None);
    assert_eq!(request.header("HOST"), Some("127.0.0.1:8025"));
    assert_eq!(request.header("x-forwarded-for"), Some("192.0.2.1"));
    assert_eq!(request.cookie("session"), Some("s3cret"));
    assert_eq!(request.cookie("theme"), Some("dark"));
    assert_eq!(request.cookie("Session"), None);
    assert!(request.body.is_empty());
    assert!(request.form().is_empty());
}

#[tokio::test]
async fn bare_lf_line_ends_are_accepted() {
    let request = read(b"HEAD / HTTP/1.0\nHost: x\n\n").await.unwrap();
    assert_eq!(request.method, Method::Head);
    assert_eq!(request.path, "/");
    assert_eq!(request.headers, [("host".into(), "x".into())]);
}

#[tokio::test]
async fn a_post_form_is_decoded_and_bad_pairs_dropped() {
    let body = "recipient=alice%40example.test&note=hello+there+%26+bye&raw=%FF%FE&ok=1";
    let input = format!(
        "POST /release HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let request = read(input.as_bytes()).await.unwrap();
    assert_eq!(request.method, Method::Post);
    assert_eq!(request.body, body.as_bytes());
    assert_eq!(
        request.form(),
        [
            ("recipient".into(), "alice@example.test".into()),
            ("note".into(), "hello there & bye".into()),
            ("ok".into(), "1".into()),
        ]
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_form_has_no_form_fields() {
    let request =
        read(b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\na=1")
            .await
            .unwrap();
    assert!(request.form().is_empty());
}

#[tokio::test]
async fn a_peer_that_sends_nothing_is_closed_and_a_partial_head_truncated() {
    assert!(matches!(refused(b"").await, HttpError::Closed));
    assert!(!HttpError::Closed.responds());
    assert!(matches!(
        refused(b"GET / HTTP/1.1\r\nHost: x\r\n").await,
        HttpError::Truncated
    ));
    assert!(matches!(refused(b"GET / HT").await, HttpError::Truncated));
}

#[tokio::test]
async fn a_head_beyond_the_limit_is_431() {
    let input = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(17 * 1024));
    let e = refused(input.as_bytes()).await;
    assert!(matches!(e, HttpError::HeadTooLarge), "{e:?}");
    assert_eq!(e.status(), 431);

    // Right at the limit is fine.
    let limits = Limits {
        max_head: 22,
        ..Limits::default()
    };
    let input = b"GET / HTTP/1.1\r\nA: b\r\n\r\n";
    assert_eq!(input.len(), 24);
    let e = read_request(&mut &input[..], &limits).await.unwrap_err();
    assert!(matches!(e, HttpError::HeadTooLarge), "{e:?}");
    let limits = Limits {
        max_head: 24,
        ..Limits::default()
    };
    assert!(read_request(&mut &input[..], &limits).await.is_ok());
}

#[tokio::test]
async fn more_header_fields_than_the_limit_is_431() {
    let mut input = String::from("GET / HTTP/1.1\r\n");
    for i in 0..65 {
        input.push_str(&format!("X-{i}: v\r\n"));
    }
    input.push_str("\r\n");
    let e = refused(input.as_bytes()).await;
    assert!(matches!(e, HttpError::TooManyHeaders), "{e:?}");
    assert_eq!(e.status(), 431);
}

#[tokio::test]
async fn control_characters_in_the_head_are_refused() {
    for input in [
        &b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\x1bb\r\n\r\n",
    ] {
        let e = refused(input).await;
        assert!(matches!(e, HttpError::BadHeader), "{input:?}: {e:?}");
        assert_eq!(e.status(), 400);
    }
    for input in [
        &b"GET /\0 HTTP/1.1\r\n\r\n"[..],
        b"GET /a\rb HTTP/1.1\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
    ] {
        let e = refused(input).await;
        assert!(matches!(e, HttpError::BadRequestLine), "{input:?}: {e:?}");
    }
    // A tab inside a value is allowed.
    let request = read(b"GET / HTTP/1.1\r\nX-A: a\tb\r\n\r\n").await.unwrap();
    assert_eq!(request.header("x-a"), Some("a\tb"));
}

#[tokio::test]
async fn bad_header_names_and_obs_fold_are_refused() {
    let e = refused(b"GET / HTTP/1.1\r\nX-A: a\r\n  continued\r\n\r\n").await;
    assert!(matches!(e, HttpError::ObsFold), "{e:?}");
    let e = refused(b"GET / HTTP/1.1\r\n\tX-A: a\r\n\r\n").await;
    assert!(matches!(e, HttpError::ObsFold), "{e:?}");
    for input in [
        &b"GET / HTTP/1.1\r\nX-A : a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX(A): a\r\n\r\n",
        b"GET / HTTP/1.1\r\n: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: \xff\r\n\r\n",
    ] {
        let e = refused(input).await;
        assert!(matches!(e, HttpError::BadHeader), "{input:?}: {e:?}");
    }
}

#[tokio::test]
async fn transfer_encoding_is_not_implemented() {
    for value in ["chunked", "identity", "gzip, chunked", ""] {
        let input = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n0\r\n\r\n");
        let e = refused(input.as_bytes()).await;
        assert!(matches!(e, HttpError::TransferEncoding), "{value}: {e:?}");
        assert_eq!(e.status(), 501);
    }
    // Also next to a Content-Length: no guessing which one the proxy used.
    let e = refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nx")
        .await;
    assert!(matches!(e, HttpError::TransferEncoding), "{e:?}");
}

#[tokio::test]
async fn content_length_must_be_single_and_plain_and_within_the_limit() {
    let e = refused(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n").await;
    assert!(matches!(e, HttpError::BodyTooLarge), "{e:?}");
    assert_eq!(e.status(), 413);
    let e = refused(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n").await;
    assert!(matches!(e, HttpError::BodyTooLarge), "{e:?}");

    let e = refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx").await;
    assert!(matches!(e, HttpError::DuplicateContentLength), "{e:?}");
    assert_eq!(e.status(), 400);

    for value in ["+1", "-1", "1 1", "0x10", "1,1", ""] {
        let input = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        let e = refused(input.as_bytes()).await;
        assert!(matches!(e, HttpError::BadContentLength), "{value:?}: {e:?}");
    }

    let e = refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(matches!(e, HttpError::DuplicateHost), "{e:?}");
}

#[tokio::test]
async fn only_origin_form_targets_are_accepted() {
    for target in ["http://evil.test/", "evil.test:443", "*", "//x#frag"] {
        let input = format!("GET {target} HTTP/1.1\r\n\r\n");
        let e = refused(input.as_bytes()).await;
        assert!(matches!(e, HttpError::BadTarget), "{target}: {e:?}");
    }
    for line in [
        "GET / HTTP/2.0",
        "GET / HTTP/1.10",
        "GET /  HTTP/1.1",
        "GET / HTTP/1.1 x",
        "GET /",
        "G(T / HTTP/1.1",
        "",
    ] {
        let input = format!("{line}\r\n\r\n");
        let e = refused(input.as_bytes()).await;
        assert!(matches!(e, HttpError::BadRequestLine), "{line:?}: {e:?}");
    }
    let request = read(b"DELETE / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(request.method, Method::Other("DELETE".into()));
    let request = read(b"get / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(request.method, Method::Other("get".into()));
}

#[tokio::test]
async fn bad_escapes_and_line_breaks_in_the_path_are_refused() {
    for target in [
        "/a%",
        "/a%2",
        "/a%zz",
        "/%00",
        "/a%0d%0aSet-Cookie:x",
        "/%0A",
        "/%ff",
    ] {
        let input = format!("GET {target} HTTP/1.1\r\n\r\n");
        let e = refused(input.as_bytes()).await;
        assert!(matches!(e, HttpError::BadPath), "{target}: {e:?}");
    }
    // Kept as given, decoded: `..` and `%2F` are the handler's business.
    let request = read(b"GET /a/../b%2Fc+d HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(request.path, "/a/../b/c+d");
}

#[tokio::test]
async fn a_truncated_body_is_refused() {
    let e = refused(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").await;
    assert!(matches!(e, HttpError::Truncated), "{e:?}");
    // More than announced is left unread: one request per connection.
    let request = read(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(request.body, b"abc");
}

#[tokio::test]
async fn a_response_carries_the_hardening_headers_and_no_location() {
    let response = Response::html(200, "<p>hi</p>".into())
        .with_header("Location", "https://evil.test/")
        .with_header("Content-Security-Policy", "default-src *")
        .with_header("Set-Cookie", "a=b; HttpOnly");
    let out = written(&response, false).await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "<p>hi</p>");
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(
        lines,
        [
            "HTTP/1.1 200 OK",
            "Content-Length: 9",
            "Connection: close",
            "Cache-Control: no-store",
            "Referrer-Policy: no-referrer",
            "X-Content-Type-Options: nosniff",
            "X-Frame-Options: DENY",
            &format!("Content-Security-Policy: {CSP}"),
            "Content-Type: text/html; charset=utf-8",
            "Set-Cookie: a=b; HttpOnly",
        ]
    );
    assert!(CSP.contains("frame-ancestors 'none'") && CSP.contains("default-src 'none'"));
    assert!(!out.to_ascii_lowercase().contains("location"));
}

#[tokio::test]
async fn values_set_directly_lose_their_line_breaks() {
    let response = Response {
        status: 200,
        headers: vec![
            ("X-A", "a\r\nSet-Cookie: x\0".into()),
            ("Bad Name", "v".into()),
        ],
        body: Vec::new(),
    };
    let out = written(&response, false).await;
    assert!(out.contains("\r\nX-A: aSet-Cookie: x\r\n"), "{out:?}");
    assert!(!out.contains("Bad Name"), "{out:?}");
}

#[tokio::test]
async fn head_gets_no_body_and_odd_statuses_are_sane() {
    let out = written(&Response::text(404, "not here"), true).await;
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out:?}");
    assert!(out.contains("\r\nContent-Length: 8\r\n"), "{out:?}");
    assert!(out.ends_with("\r\n\r\n"), "{out:?}");

    let out = written(&Response::text(204, "ignored"), false).await;
    assert!(out.starts_with("HTTP/1.1 204 No Content\r\n"), "{out:?}");
    assert!(
        !out.contains("Content-Length") && out.ends_with("\r\n\r\n"),
        "{out:?}"
    );

    let out = written(&Response::json(1000, b"{}".to_vec()), false).await;
    assert!(
        out.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{out:?}"
    );
    assert!(
        out.contains("Content-Type: application/json\r\n"),
        "{out:?}"
    );
    let out = written(&Response::text(299, ""), false).await;
    assert!(out.starts_with("HTTP/1.1 299 \r\n"), "{out:?}");
}

#[test]
fn percent_encode_keeps_only_unreserved_characters() {
    assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
    assert_eq!(
        percent_encode("a b/c?d&e=f+g%"),
        "a%20b%2Fc%3Fd%26e%3Df%2Bg%25"
    );
    assert_eq!(percent_encode("é\r\n"), "%C3%A9%0D%0A");
    assert_eq!(percent_encode(""), "");
}

#[tokio::test]
async fn percent_encoded_values_come_back_as_they_were() {
    let value = "alice+tag@example.test & <b> é ?=%";
    let input = format!("GET /x?v={} HTTP/1.1\r\n\r\n", percent_encode(value));
    let request = read(input.as_bytes()).await.unwrap();
    assert_eq!(request.query_value("v"), Some(value));
}

const SHORT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn serve_one_answers_and_closes() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        serve_one(server, &Limits::default(), Duration::from_secs(5), |request| async move {
            Response::text(200, &format!("you asked for {}", request.path))
        })
        .await
    });
    client
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    serving.await.unwrap().unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
    assert!(out.contains("\r\nX-Frame-Options: DENY\r\n"), "{out:?}");
    assert!(out.ends_with("\r\n\r\nyou asked for /hello"), "{out:?}");
}

#[tokio::test]
async fn serve_one_answers_head_without_a_body() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        serve_one(
            server,
            &Limits::default(),
            Duration::from_secs(5),
            |_| async { Response::html(200, "<p>body</p>".into()) },
        )
        .await
    });
    client.write_all(b"HEAD / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    serving.await.unwrap().unwrap();
    assert!(out.contains("\r\nContent-Length: 11\r\n"), "{out:?}");
    assert!(out.ends_with("\r\n\r\n"), "{out:?}");
}

#[tokio::test]
async fn serve_one_refuses_a_bad_request_without_calling_the_handler() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        serve_one(
            server,
            &Limits::default(),
            Duration::from_secs(5),
            |_| async { panic!("the handler must not run") },
        )
        .await
    });
    client
        .write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    serving.await.unwrap().unwrap();
    assert!(
        out.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
        "{out:?}"
    );
    assert!(out.contains("\r\nContent-Security-Policy: "), "{out:?}");
    assert!(
        out.ends_with("\r\n\r\nTransfer-Encoding is not supported\n"),
        "{out:?}"
    );
}

#[tokio::test]
async fn serve_one_sends_nothing_to_a_peer_that_sent_nothing() {
    let (mut client, server) = tokio::io::duplex(1024);
    client.shutdown().await.unwrap();
    let result = serve_one(server, &Limits::default(), SHORT, |_| async {
        panic!("the handler must not run")
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[tokio::test]
async fn serve_one_drops_a_silent_or_slow_client() {
    for sent in [&b""[..], b"GET / HTTP/1.1\r\nHost: x\r\n"] {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            serve_one(server, &Limits::default(), SHORT, |_| async {
                panic!("the handler must not run")
            }),
        )
        .await
        .expect("serve_one gave up on its own");
        let e = result.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // Dropped: the client sees the end of the stream and no response.
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty(), "{out:?}");
    }
}

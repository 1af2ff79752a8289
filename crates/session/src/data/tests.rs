use super::*;

/// Feeds `input` in pieces of `step` octets; returns (content, octets consumed, verdict).
fn run(framer: DataFramer, input: &[u8], step: usize) -> (String, Option<usize>, Verdict) {
    let mut framer = framer;
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for piece in input.chunks(step) {
        if let Progress::End { consumed } = framer.feed(piece, &mut out) {
            end = Some(offset + consumed);
            break;
        }
        offset += piece.len();
    }
    let verdict = framer.finish(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), end, verdict)
}

#[test]
fn data_ends_only_at_crlf_dot_crlf_in_any_split() {
    let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    for step in 1..input.len() {
        let (content, end, verdict) = run(DataFramer::data(1000), input, step);
        assert_eq!(content, "Subject: x\r\n\r\nhello\r\n", "step {step}");
        assert_eq!(end, Some(input.len() - 6), "step {step}");
        assert_eq!(verdict, Verdict::Clean);
    }
}

#[test]
fn empty_message() {
    let (content, end, verdict) = run(DataFramer::data(1000), b".\r\n", 100);
    assert_eq!(
        (content.as_str(), end, verdict),
        ("", Some(3), Verdict::Clean)
    );
}

#[test]
fn dot_stuffing_is_undone() {
    let input = b"..leading dot\r\n...\r\n.x\r\n.\r\n";
    for step in 1..input.len() {
        let (content, end, _) = run(DataFramer::data(1000), input, step);
        assert_eq!(content, ".leading dot\r\n..\r\nx\r\n", "step {step}");
        assert_eq!(end, Some(input.len()));
    }
}

#[test]
fn smuggling_sequences_never_end_data_and_taint_it() {
    for smuggle in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\r\n\x00.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
    ] {
        let mut input = b"Subject: a\r\n\r\nfirst".to_vec();
        input.extend_from_slice(smuggle);
        input.extend_from_slice(
            b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<v@y.org>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n",
        );
        for step in [1, 2, 3, 7, input.len()] {
            let (content, end, verdict) = run(DataFramer::data(10_000), &input, step);
            assert_eq!(end, Some(input.len()), "{smuggle:?} step {step}");
            assert_eq!(verdict, Verdict::BadLineEndings, "{smuggle:?} step {step}");
            assert!(content.contains("smuggled"), "{smuggle:?}");
        }
    }
}

#[test]
fn bare_cr_at_the_very_end_of_bdat_taints() {
    let (_, _, verdict) = run(DataFramer::bdat(100), b"text\r", 100);
    assert_eq!(verdict, Verdict::BadLineEndings);
    let (content, end, verdict) = run(DataFramer::bdat(100), b"a\r\n.\r\nb\r\n", 3);
    assert_eq!(
        (content.as_str(), end, verdict),
        ("a\r\n.\r\nb\r\n", None, Verdict::Clean)
    );
}

#[test]
fn oversize_data_is_counted_not_kept() {
    let (content, end, verdict) = run(DataFramer::data(5), b"0123456789\r\n.\r\n", 4);
    assert_eq!(content, "01234");
    assert_eq!(end, Some(15));
    assert_eq!(verdict, Verdict::TooBig);
}

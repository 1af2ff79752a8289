use super::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn options_are_read_as_sendmail_writes_them() {
    let o = Options::parse(&args(&[
        "-oi",
        "-t",
        "-fme@example.org",
        "-F",
        "Me Myself",
        "-N",
        "failure,delay",
        "-R",
        "hdrs",
        "-V",
        "env1",
        "-oem",
        "-odb",
        "-L",
        "cron",
        "you@example.net, two@example.net",
    ]))
    .unwrap();
    assert!(o.extract);
    assert!(!o.dot_ends);
    assert_eq!(o.sender.as_deref(), Some("me@example.org"));
    assert_eq!(o.full_name.as_deref(), Some("Me Myself"));
    assert_eq!(
        o.notify,
        Some(Notify::On {
            success: false,
            failure: true,
            delay: true
        })
    );
    assert_eq!(o.ret, Some(Ret::Headers));
    assert_eq!(o.envid.as_deref(), Some("env1"));
    assert_eq!(o.recipients, ["you@example.net, two@example.net"]);

    let o = Options::parse(&args(&["-i", "-r", "<>", "--", "-odd@example.net"])).unwrap();
    assert!(!o.dot_ends);
    assert_eq!(o.sender.as_deref(), Some("<>"));
    assert_eq!(o.recipients, ["-odd@example.net"]);
    assert!(Options::parse(&[]).unwrap().dot_ends);
}

#[test]
fn options_it_cannot_honour_are_errors() {
    for (line, why) in [
        (&["-f"][..], "-f needs a value"),
        (&["-Z"][..], "unknown option -Z"),
        (&["-bp"][..], "-bp: the queue is `backstop queue list`"),
        (&["-bs"][..], "-bs is not supported"),
        (
            &["-N", "sometimes"][..],
            "-N sometimes: never, or a list of success, failure, delay",
        ),
        (&["-R", "all"][..], "-R all: full or hdrs"),
    ] {
        assert_eq!(Options::parse(&args(line)), Err(why.to_owned()), "{line:?}");
    }
}

#[test]
fn the_message_gets_crlf_and_ends_at_a_dot_unless_told_otherwise() {
    let input = b"Subject: x\n\nline 1\r\n.\nafter\nlast";
    assert_eq!(read_message(input, true), b"Subject: x\r\n\r\nline 1\r\n");
    assert_eq!(
        read_message(input, false),
        b"Subject: x\r\n\r\nline 1\r\n.\r\nafter\r\nlast\r\n"
    );
    assert_eq!(read_message(b"", true), b"");
    // An mbox envelope line is no header field.
    assert_eq!(
        read_message(
            b"From git Mon Sep 17 00:00:00 2001\nSubject: patch\n\nx\n",
            true
        ),
        b"Subject: patch\r\n\r\nx\r\n"
    );
    assert_eq!(read_message(b"\n", true), b"\r\n");
}

fn submitter() -> Submitter {
    Submitter {
        sender: ReversePath::Address(Address::parse("alice@host.example").unwrap()),
        full_name: Some("Alice Smith".into()),
        domain: "host.example".into(),
    }
}

fn prepared(message: &[u8], extract: bool, who: &Submitter) -> (String, Vec<String>) {
    let (out, recipients) = prepare(message, extract, who, UnixTime(0), "u1");
    (String::from_utf8(out).unwrap(), recipients)
}

use backstop_types::UnixTime;

#[test]
fn with_t_the_recipients_come_from_to_cc_and_bcc_and_bcc_is_taken_out() {
    let message = b"To: Bob <bob@example.net>, carol@example.net\r\n\
Cc: undisclosed:;\r\n\
Bcc: secret@example.net,\r\n  other-secret@example.net\r\n\
Subject: hello\r\n\
From: me@host.example\r\n\
Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <given@host.example>\r\n\
\r\n\
Bcc: in the body stays\r\n";
    let (out, recipients) = prepared(message, true, &submitter());
    assert_eq!(
        recipients,
        [
            "bob@example.net",
            "carol@example.net",
            "secret@example.net",
            "other-secret@example.net"
        ]
    );
    assert_eq!(
        out,
        "To: Bob <bob@example.net>, carol@example.net\r\n\
Cc: undisclosed:;\r\n\
Subject: hello\r\n\
From: me@host.example\r\n\
Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <given@host.example>\r\n\
\r\n\
Bcc: in the body stays\r\n"
    );
    // Without -t the header's addresses are not recipients (and Bcc still goes).
    let (out, recipients) = prepared(message, false, &submitter());
    assert!(recipients.is_empty());
    assert!(!out.contains("secret@"));
}

#[test]
fn a_message_without_from_date_or_message_id_gets_them() {
    let (out, _) = prepared(b"Subject: cron\r\n\r\nbody\r\n", false, &submitter());
    assert_eq!(
        out,
        "From: Alice Smith <alice@host.example>\r\n\
Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n\
Message-ID: <u1@host.example>\r\n\
Subject: cron\r\n\
\r\n\
body\r\n"
    );
    // No header at all: all of it is body, under the fields made here.
    let (out, _) = prepared(b"just text: with a colon\r\nmore\r\n", false, &submitter());
    assert!(
        out.ends_with("Message-ID: <u1@host.example>\r\n\r\njust text: with a colon\r\nmore\r\n"),
        "{out}"
    );
    // A header that ends without the empty line gets one before the first line that is no
    // field.
    let (out, _) = prepared(b"Subject: x\r\nbody line\r\n", false, &submitter());
    assert!(out.ends_with("Subject: x\r\n\r\nbody line\r\n"), "{out}");
    let (out, _) = prepared(b"Subject: only\r\n", false, &submitter());
    assert!(out.ends_with("Subject: only\r\n\r\n"), "{out}");
}

#[test]
fn a_full_name_is_quoted_or_encoded_and_never_breaks_the_header() {
    let mut who = submitter();
    who.full_name = Some("Smith, Alice \"Al\"\r\nBcc: evil@example.net".into());
    let (out, _) = prepared(b"Subject: x\r\n\r\n", false, &who);
    assert!(
        out.starts_with(
            "From: \"Smith, Alice \\\"Al\\\"Bcc: evil@example.net\" <alice@host.example>\r\n"
        ),
        "{out}"
    );
    who.full_name = Some("Zoë".into());
    let (out, _) = prepared(b"Subject: x\r\n\r\n", false, &who);
    assert!(
        out.starts_with("From: =?utf-8?b?Wm/Dqw==?= <alice@host.example>\r\n"),
        "{out}"
    );
    who.sender = ReversePath::Null;
    who.full_name = None;
    let (out, _) = prepared(b"Subject: x\r\n\r\n", false, &who);
    assert!(
        out.starts_with("From: MAILER-DAEMON@host.example\r\n"),
        "{out}"
    );
}

#[test]
fn recipients_may_be_lists_with_brackets_and_are_checked() {
    let got = parse_recipients(
        &args(&["a@x.example, <b@y.example>", "Bob <a@x.example>", "root"]),
        "host.example",
    )
    .unwrap();
    let got: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["a@x.example", "b@y.example", "root@host.example"]);
    let err = parse_recipients(&args(&["bad\u{7}@x.example"]), "host.example").unwrap_err();
    assert!(err.starts_with("bad\\u{7}@x.example: "), "{err}");
    assert_eq!(parse_sender("<>"), Ok(ReversePath::Null));
    assert_eq!(parse_sender(""), Ok(ReversePath::Null));
    assert!(parse_sender("x@").is_err());
}

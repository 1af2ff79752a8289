//! What the fuzz targets share: a small random source seeded by the input (where a chunk
//! ends, what a driver answers), the checks of what goes on a wire, and a sample message for
//! the content scanners' changes.
//!
//! Every check here is an invariant the code promises, not a property of the fuzzer's input:
//! a failing `assert!` is a bug in backstop (or in the check), never an uninteresting input.

use backstop_types::{
    Address, BodyType, ClientInfo, DsnParams, Envelope, Notify, Orcpt, Recipient, Reply,
    ReversePath, TrustClass, UnixTime,
};

/// splitmix64: deterministic, so a crash input replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True about once in `n` times.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// `data` cut into pieces of 1 to `max` octets, where the random source says: what a socket
/// may hand over in one read.
pub fn chunks<'a>(data: &'a [u8], rng: &mut Rng, max: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Often whole, often a byte at a time: the two ends where framing bugs live.
        let n = match rng.below(4) {
            0 => rest.len(),
            1 => 1,
            _ => 1 + rng.below(max as u64) as usize,
        }
        .min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// `bytes` is a run of complete lines, each ending in CRLF, with no CR, LF or NUL inside one:
/// what every line-based protocol writer must produce, whatever it was given.
pub fn assert_crlf_lines(what: &str, bytes: &[u8]) {
    assert!(
        bytes.ends_with(b"\r\n"),
        "{what}: does not end with CRLF: {:?}",
        String::from_utf8_lossy(bytes)
    );
    assert_line_ends(what, bytes);
}

/// Every CR is followed by LF, every LF follows a CR, and there is no NUL.
pub fn assert_line_ends(what: &str, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        let fine = match b {
            0 => false,
            b'\r' => bytes.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && bytes[i - 1] == b'\r',
            _ => true,
        };
        assert!(
            fine,
            "{what}: a NUL, bare CR or bare LF at {i}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// A reply as the session writes it: `DDD-text` lines and a last `DDD text` line, one code
/// throughout, 2xx to 5xx, and no control character in any line's text.
pub fn assert_reply(reply: &Reply) {
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    assert_crlf_lines("reply", &wire);
    let text = std::str::from_utf8(&wire).expect("a reply is UTF-8");
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert!(!lines.is_empty(), "an empty reply");
    let code = reply.code().to_string();
    assert!((200..600).contains(&reply.code()), "reply code {code}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&code), "a line of another code: {line:?}");
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        assert_eq!(
            line[3..].chars().next(),
            Some(sep),
            "a reply line without its separator: {line:?}"
        );
        assert!(
            !line.chars().any(char::is_control),
            "a control character in a reply: {line:?}"
        );
    }
}

/// A message as it goes on to the queue or a next hop: CRLF line ends only, no NUL, and a
/// header section of fields (`name:` with a printable name, or a folded continuation) ended by
/// an empty line or the end of the message.
pub fn assert_message_well_formed(what: &str, message: &[u8]) {
    assert_line_ends(what, message);
    let mut first = true;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            assert!(
                !first,
                "{what}: the header starts with a continuation line: {:?}",
                String::from_utf8_lossy(message)
            );
            continue;
        }
        first = false;
        let colon = line.iter().position(|&b| b == b':');
        let name = &line[..colon.unwrap_or(line.len())];
        assert!(
            colon.is_some()
                && !name.is_empty()
                && name.iter().all(|&b| (33..=126).contains(&b) && b != b':'),
            "{what}: a header line that is no field: {:?} in {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(message)
        );
    }
}

/// An address prints as one line and parses back to itself (the queue and every next hop
/// read what `Display` writes).
pub fn check_address(address: &Address) {
    let text = address.to_string();
    assert!(!text.contains(['\r', '\n', '\0']), "{text:?}");
    assert_eq!(Address::parse(&text).as_ref(), Ok(address), "{text:?}");
}

pub fn check_path(path: &ReversePath) {
    if let Some(address) = path.address() {
        check_address(address);
    }
}

/// What is passed on of an ORCPT is printable ASCII without spaces, and reads back the same;
/// so does what is stored, and what a report shows is one line.
pub fn check_orcpt(orcpt: &Orcpt) {
    let param = orcpt.to_param();
    assert!(
        param.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "{param:?}"
    );
    assert_eq!(Orcpt::parse_param(&param).as_ref(), Ok(orcpt), "{param:?}");
    assert_eq!(Orcpt::from_stored(&orcpt.to_stored()).as_ref(), Ok(orcpt));
    assert!(!orcpt.to_string().contains(['\r', '\n', '\0']));
}

/// An envelope with one of everything a check might look at.
pub fn sample_envelope() -> Envelope {
    let address = |a: &str| Address::parse(a).expect("a sample address");
    Envelope {
        sender: ReversePath::Address(address("alice@example.org")),
        recipients: vec![
            Recipient {
                address: address("bob@local.test"),
                notify: Notify::Default,
                orcpt: None,
            },
            Recipient {
                address: address("carol@local.test"),
                notify: Notify::Never,
                orcpt: None,
            },
        ],
        dsn: DsnParams {
            ret: None,
            envid: None,
        },
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client: ClientInfo {
            ip: "192.0.2.1".parse().expect("an IP address"),
            helo: "client.example.org".into(),
            ptr: None,
            tls: None,
            auth: None,
            listener: "mx".into(),
        },
        arrival: UnixTime(1_795_367_999),
        trust: TrustClass::Unverified,
    }
}

/// A message as the session hands it on: our `Received:` on top, folded fields, a body.
pub const SAMPLE_MESSAGE: &[u8] = b"Received: from client.example.org (unknown [192.0.2.1])\r\n\
\tby mx.test (backstop) with ESMTP; Sun, 22 Nov 2026 17:19:59 +0000\r\n\
From: Alice <alice@example.org>\r\n\
To: bob@local.test\r\n\
Subject: hello\r\n\
X-Tag: one\r\n\
X-Tag: two\r\n\
\r\n\
Hello Bob,\r\n\
.\r\n\
bye\r\n";

#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/seed-*, from the transcript tests
and fixtures, in each target's input format (see the target's doc comment). Run from the
repository root after the tests change: python3 fuzz/seed_corpora.py

The fuzzer's own finds go to a corpus under fuzz/target (git-ignored); only these seeds are
committed."""

import hashlib
import hmac
import os
import re
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, seeds):
    folder = os.path.join(CORPUS, target)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for name, data in seeds:
        with open(os.path.join(folder, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds")


def rust_string(body):
    """The bytes of a Rust (byte) string literal's body."""
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        e = body[i + 1]
        if e == "\n":  # a line continuation: the newline and the next line's indent go
            i += 2
            while i < len(body) and body[i] in " \t":
                i += 1
            continue
        simple = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\", '"': b'"', "'": b"'"}
        if e in simple:
            out += simple[e]
            i += 2
        elif e == "x":
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif e == "u":
            end = body.index("}", i)
            out += chr(int(body[i + 3 : end], 16)).encode()
            i = end + 1
        else:
            raise ValueError(f"escape \\{e}")
    return bytes(out)


STRING = r'"((?:[^"\\]|\\.|\\\n)*)"'


def tests(path):
    """(name, body) of each #[test] in a file, with the expect![...] transcripts cut out."""
    text = open(path, encoding="utf-8").read()
    text = re.sub(r'r#"(?:.|\n)*?"#', '""', text)
    parts = re.split(r"#\[test\]\s*(?:async )?fn (\w+)", text)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def session_seeds():
    seeds = []
    for n, (name, body) in enumerate(tests(os.path.join(ROOT, "crates/session/src/tests.rs"))):
        flags = 0
        if "submission()" in body:
            flags |= 1
        if "AuthPolicy::AllowPlaintext" in body:
            flags = (flags & ~3) | 2
        if "starttls: false" in body:
            flags |= 4
        for field, bit in (("check_recipients", 8), ("check_senders", 16), ("check_messages", 32)):
            if f"{field}: true" in body:
                flags |= bit
        if "local_submitter: true" in body:
            flags |= 64
        stream = b"".join(rust_string(s) for s in re.findall(r"\bb" + STRING, body))
        if stream:
            seeds.append((name, bytes([flags, n, 0]) + stream))
    return seeds


def params_seeds(session):
    lines = set()
    for _, data in session:
        for line in data[3:].split(b"\r\n"):
            if re.match(rb"(?i)(MAIL|RCPT|BDAT)\b", line):
                lines.add(line + b"\r\n")
    lines |= {
        b"RCPT TO:<bob@x.test> NOTIFY=FAILURE ORCPT=utf-8;j\\x{F6}rg@b\xc3\xbccher.test\r\n",
        b"MAIL FROM:<a@b> ENVID=QQ314159+2B1 SIZE=184467440737095516160\r\n",
        b"BDAT 18446744073709551615 LAST\r\n",
    }
    return [(f"{i:02}", line) for i, line in enumerate(sorted(lines))]


def smtp_client_seeds():
    path = os.path.join(ROOT, "crates/smtp-client/src/session/tests.rs")
    text = open(path, encoding="utf-8").read()
    consts = {
        m.group(1): rust_string(m.group(2)).replace(b"\n", b"\r\n")
        for m in re.finditer(r"const (\w+): &str =\s*" + STRING, text)
    }
    seeds = []
    for name, body in tests(path):
        # One seed per harness the test makes.
        for k, part in enumerate(re.split(r"(?=Harness::(?:new|smtp)\()", body)[1:]):
            head = re.match(r"Harness::(?:smtp\(\)|new\((true|false), TlsMode::(\w+), (\w+))", part)
            flags = 0
            if head and head.group(1) == "true":
                flags |= 1
            if head and head.group(2):
                flags |= {"Off": 0, "Opportunistic": 1, "Require": 2}[head.group(2)] << 1
            if head and head.group(3) and head.group(3) != "None":
                flags |= 8
            if ".command(" in part:
                flags |= 16
            if "EightBitMime" in part:
                flags |= 1 << 5
            stream = b""
            for m in re.finditer(r"\.(server|raw)\((?:b?" + STRING + r"|(\w+))\)", part):
                if m.group(3):
                    stream += consts.get(m.group(3), b"")
                elif m.group(1) == "server":
                    stream += rust_string(m.group(2)).replace(b"\n", b"\r\n")
                else:
                    stream += rust_string(m.group(2))
            if stream:
                seeds.append((f"{name}-{k}", bytes([flags, len(seeds), 0]) + stream))
    return seeds


def milter_packet(command, data=b""):
    return struct.pack(">I", len(data) + 1) + command + data


def milter_seeds():
    def negotiate(protocol):
        return milter_packet(b"O", struct.pack(">III", 6, 0x1FF, protocol))

    # With every step and every reply: connect, HELO, MAIL, two RCPTs, DATA, the sample
    # message's six header fields, end of header, one body chunk.
    steps = 1 + 1 + 1 + 2 + 1 + 6 + 1 + 1
    go_on = milter_packet(b"c") * steps
    skip_all = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x200
    every_change = (
        milter_packet(b"h", b"X-Milter\0checked\0")
        + milter_packet(b"i", struct.pack(">I", 0) + b"X-First\0one\n\ttwo\0")
        + milter_packet(b"m", struct.pack(">I", 1) + b"Subject\0[milter] hello\0")
        + milter_packet(b"m", struct.pack(">I", 2) + b"X-Tag\0\0")
        + milter_packet(b"e", b"<bounces@example.org>\0")
        + milter_packet(b"+", b"<dave@local.test>\0")
        + milter_packet(b"2", b"<erin@local.test>\0NOTIFY=NEVER\0")
        + milter_packet(b"-", b"<carol@local.test>\0")
        + milter_packet(b"b", b"the milter's body\r\n")
        + milter_packet(b"p")
        + milter_packet(b"a")
    )
    return [
        ("continue", b"\0\0\0" + negotiate(0) + go_on + milter_packet(b"c")),
        ("opendkim", b"\x03\0\0" + negotiate(0) + go_on
         + milter_packet(b"h", b"Authentication-Results\0mx.test; dkim=pass header.d=example.org\0")
         + milter_packet(b"a")),
        ("every-change", b"\0\0\0" + negotiate(skip_all) + every_change),
        ("every-change-no-replies", b"\x02\0\0" + negotiate(0x1FFFFF & ~0x100000) + every_change),
        ("leading-space", b"\0\0\0" + negotiate(skip_all | 0x100000)
         + milter_packet(b"h", b"X-Spam\0 yes\0") + milter_packet(b"c")),
        ("reply-code", b"\0\0\0" + negotiate(skip_all)
         + milter_packet(b"y", b"550 5.7.1 Rejected by the test milter\0")),
        ("tempfail-at-rcpt", b"\x04\0\0" + negotiate(0) + milter_packet(b"c") * 3
         + milter_packet(b"t")),
        ("discard", b"\0\0\0" + negotiate(skip_all) + milter_packet(b"d")),
        ("skip-body", b"\x01\0\0" + negotiate(0) + milter_packet(b"c") * (steps - 1)
         + milter_packet(b"s") + milter_packet(b"q", b"the test milter quarantines it\0")
         + milter_packet(b"c")),
        ("reject", b"\0\0\0" + negotiate(0) + milter_packet(b"r")),
    ]


def rspamd_seeds():
    def http(body, chunked=False):
        if chunked:
            payload = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + payload
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    answers = [
        b'{"action":"no action","score":0.5,"required_score":15}',
        b'{"action":"reject","score":20,"required_score":15}',
        b'{"action":"soft reject","messages":{"smtp_message":"Slow down"}}',
        b'{"action":"greylist","score":4,"required_score":15}',
        b'{"action":"add header","score":7,"required_score":15,'
        b'"milter":{"add_headers":{"X-Spamd-Bar":"+++","X-Extra":[{"value":"1","order":0},"2"]},'
        b'"remove_headers":{"X-Tag":0,"Subject":1}}}',
        b'{"action":"rewrite subject","score":7.5,"required_score":15,"subject":"*** SPAM *** hi",'
        b'"milter":{"add_headers":{"X-Extra":{"value":"1","order":0}}}}',
        b'{"action":"explode"}',
        b"{}",
    ]
    seeds = [(f"{i:02}", http(a)) for i, a in enumerate(answers)]
    seeds.append(("chunked", http(answers[4], chunked=True)))
    seeds.append(("to-the-end", b"HTTP/1.1 200 OK\r\n\r\n" + answers[5]))
    seeds.append(("error", b"HTTP/1.1 500 Oops\r\n\r\n"))
    return seeds


def provenance_seeds():
    seeds = []
    for name, body in tests(os.path.join(ROOT, "crates/filter/src/provenance.rs")):
        for k, m in enumerate(re.finditer(r"\bb" + STRING, body)):
            seeds.append((f"{name}-{k}", rust_string(m.group(1))))
    golden = os.path.join(ROOT, "crates/dsn/tests/golden")
    for file in sorted(os.listdir(golden)):
        seeds.append((file, open(os.path.join(golden, file), "rb").read()))
    return seeds


def batv_seeds():
    secret = b"the current secret of key 3"

    def tagged(local, domain, expiry_day):
        ddd = expiry_day % 1000
        mac = hmac.new(secret, f"3{ddd:03}".encode() + f"{local}@{domain}".lower().encode(),
                       hashlib.sha1).hexdigest()[:6]
        return f"prvs=3{ddd:03}{mac}={local}@{domain}"

    today = 20_000 + 779
    day = struct.pack("<H", today - 20_000)
    lifetime = bytes([6])  # 1 + 6 % 365 = 7 days
    addresses = [
        "alice@example.test",
        "Alice@Example.TEST",
        '"john doe"@example.test',
        "jörg@bücher.test",
        tagged("bob", "example.test", today + 7),
        tagged("bob", "example.test", today - 1),
        tagged("bob", "example.test", today + 7).upper(),
        "prvs=0000000000=eve@example.test",
        "prvs=3786zzzzzz=eve@example.test",
        "x" * 60 + "@example.test",
    ]
    seeds = [(f"{i:02}", day + lifetime + a.encode()) for i, a in enumerate(addresses)]
    # Across the day number's wrap at 1000.
    wrap = struct.pack("<H", 20_998 - 20_000)
    seeds.append(("wrap", wrap + lifetime + tagged("bob", "example.test", 21_005).encode()))
    return seeds


def queue_record_seeds():
    fixtures = os.path.join(ROOT, "crates/queue/tests/fixtures")
    seeds = []
    for file in sorted(os.listdir(fixtures)):
        kind = b"\x01" if file.startswith("quarantine") else b"\x00"
        seeds.append((file, kind + open(os.path.join(fixtures, file), "rb").read()))
    return seeds


def config_seeds():
    etc = os.path.join(ROOT, "etc")
    seeds = [(f, open(os.path.join(etc, f), "rb").read())
             for f in sorted(os.listdir(etc)) if f.endswith(".toml")]
    # The configs the tests check: the string literals with a key and a line break in them,
    # MINIMAL filled in where a format! puts it (the raw strings are expected messages).
    text = open(os.path.join(ROOT, "crates/config/src/tests.rs"), encoding="utf-8").read()
    minimal = rust_string(re.search(r"const MINIMAL: &str = " + STRING, text).group(1))
    text = re.sub(r'r#"(?:.|\n)*?"#', '""', text)
    for m in re.finditer(STRING, text):
        body = rust_string(m.group(1))
        if b"=" in body and b"\n" in body:
            body = body.replace(b"{MINIMAL}", minimal).replace(b"{{", b"{").replace(b"}}", b"}")
            seeds.append((f"test-{len(seeds):02}", body))
    return seeds


if __name__ == "__main__":
    session = session_seeds()
    write("session", session)
    write("params", params_seeds(session))
    write("smtp_client", smtp_client_seeds())
    write("milter", milter_seeds())
    write("rspamd", rspamd_seeds())
    write("provenance", provenance_seeds())
    write("batv", batv_seeds())
    write("queue_record", queue_record_seeds())
    write("config", config_seeds())

//! DKIM signatures checked by three independent verifiers: dkimpy, Mail::DKIM and OpenDKIM.
//!
//! Each verifier reads the public keys from this test instead of DNS, which is not what is
//! under test: dkimpy through `dnsfunc`, Mail::DKIM through a resolver object of our own
//! (`Mail::DKIM::DNS::resolver`), OpenDKIM through its test mode (`opendkim -t`) with
//! `TestPublicKeys`. That is libopendkim, as `opendkim-testmsg` is, but the latter only asks
//! DNS on port 53 (the system resolver) and takes no key.
//!
//! The signatures are made by the delivery crate's signer (`backstop_delivery::dkim`), which
//! is the binary's, directly: 400 messages through a server would take minutes and test the
//! same function; `mx.rs` checks a message the binary signed and delivered (with dkimpy), and
//! `bounces.rs` a signed report, as Postfix delivered it, with all three.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use backstop_delivery::dkim::{DomainKey, Keys};
use backstop_types::Domain;

use crate::harness::have;
use crate::mx::dkim_key;

/// Whether all three verifiers are installed (and openssl, which makes the keys).
pub fn have_verifiers(test: &str) -> bool {
    have("/usr/bin/python3", test)
        && have("/usr/lib/python3/dist-packages/dkim", test)
        && have("/usr/share/perl5/Mail/DKIM/Verifier.pm", test)
        && have("/usr/sbin/opendkim", test)
        && have("openssl", test)
}

/// A public key as DNS would publish it: `selector._domainkey.domain` and the TXT value.
pub struct PublicKey {
    pub name: String,
    pub record: String,
}

/// What each verifier said of each message, in the order of the files: `pass`, or the
/// verifier's words for anything else.
#[derive(Debug)]
pub struct Verdicts {
    pub dkimpy: Vec<String>,
    pub mail_dkim: Vec<String>,
    pub opendkim: Vec<String>,
}

/// Runs the three verifiers over `files` (each a whole message, CRLF line ends), one process
/// each; `dir` takes their scripts, key files and file lists.
pub fn verify(dir: &Path, files: &[PathBuf], keys: &[PublicKey]) -> Verdicts {
    let list = dir.join("messages.list");
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    std::fs::write(&list, names.join("\n") + "\n").unwrap();
    let records: Vec<String> = keys
        .iter()
        .map(|k| format!("{}={}", k.name, k.record))
        .collect();
    Verdicts {
        dkimpy: by_file(
            &names,
            &output("/usr/bin/python3", "-c", DKIMPY, &list, &records),
        ),
        mail_dkim: by_file(&names, &output("perl", "-e", MAIL_DKIM, &list, &records)),
        opendkim: opendkim(dir, &names, keys),
    }
}

/// Reads each message of the list in `argv[1]` and prints `file: pass` or `file: <why not>`;
/// the keys are `name=record` arguments.
const DKIMPY: &str = r#"
import sys, dkim
records = dict(a.split("=", 1) for a in sys.argv[2:])
def dnsfunc(name, timeout=5):
    record = records.get(name.decode().rstrip("."))
    return record.encode() if record else None
for file in open(sys.argv[1]).read().split("\n"):
    if not file:
        continue
    d = dkim.DKIM(open(file, "rb").read())
    try:
        verdict = "pass" if d.verify(dnsfunc=dnsfunc) else "fail"
    except dkim.DKIMException as e:
        verdict = "error " + str(e)
    print(file + ": " + verdict)
"#;

/// The same with Mail::DKIM, whose DNS lookups go to a resolver object that answers from the
/// `name=record` arguments (split into TXT strings of 255 octets, as DNS would).
const MAIL_DKIM: &str = r#"
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS;
package Records;
sub new { my ($class, %records) = @_; bless { %records }, $class }
sub send {
    my ($self, $name, $type) = @_;
    my $packet = Net::DNS::Packet->new($name, $type);
    my $record = $self->{lc $name};
    if (defined $record) {
        my @strings = unpack('(a255)*', $record);
        $packet->push(answer => Net::DNS::RR->new(name => $name, type => 'TXT', txtdata => \@strings));
    } else {
        $packet->header->rcode('NXDOMAIN');
    }
    return $packet;
}
sub errorstring { 'NOERROR' }
package main;
my ($list, @records) = @ARGV;
Mail::DKIM::DNS::resolver(Records->new(map { split /=/, $_, 2 } @records));
open my $files, '<', $list or die "$list: $!";
while (my $file = <$files>) {
    chomp $file;
    open my $message, '<', $file or die "$file: $!";
    my $verifier = Mail::DKIM::Verifier->new;
    $verifier->load($message);
    print "$file: ", $verifier->result_detail, "\n";
}
"#;

/// OpenDKIM's test mode over all the files at once; it says `<file>: verification (...)
/// succeeded` or `failed: <why>` on standard output.
fn opendkim(dir: &Path, names: &[String], keys: &[PublicKey]) -> Vec<String> {
    let key_file = dir.join("opendkim.keys");
    let lines: Vec<String> = keys
        .iter()
        .map(|k| format!("{} {}", k.name, k.record))
        .collect();
    std::fs::write(&key_file, lines.join("\n") + "\n").unwrap();
    let conf = dir.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!("Mode v\nSyslog no\nTestPublicKeys {}\n", key_file.display()),
    )
    .unwrap();
    let out = Command::new("/usr/sbin/opendkim")
        .arg("-x")
        .arg(&conf)
        .arg("-t")
        .arg(names.join(","))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "opendkim -t: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: String = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("opendkim: "))
        .filter_map(|line| {
            let (file, words) = line.split_once(": ")?;
            let verdict = match words.ends_with(" succeeded") {
                true => "pass",
                false => words,
            };
            Some(format!("{file}: {verdict}\n"))
        })
        .collect();
    by_file(names, &said)
}

fn output(program: &str, flag: &str, script: &str, list: &Path, records: &[String]) -> String {
    let out = Command::new(program)
        .args([flag, script])
        .arg(list)
        .args(records)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The verdict for each file from `file: verdict` lines; `no verdict` for a file not named.
fn by_file(names: &[String], said: &str) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            said.lines()
                .find_map(|line| line.strip_prefix(name.as_str())?.strip_prefix(": "))
                .unwrap_or("no verdict")
                .to_owned()
        })
        .collect()
}

/// How many messages per key.
const VARIANTS: usize = 200;

/// Message `i` from `alice@<domain>`: which optional header fields it has and their order
/// (which set the `h=` list, and so where the signature's tags fall on its lines), the From,
/// To and Subject lengths and the body all vary with `i`. Long fields are folded, as mail
/// clients fold them.
fn variant(i: usize, domain: &str) -> String {
    const OPTIONAL: [&str; 8] = [
        "Cc: carol@example.net\r\n",
        "Reply-To: alice@example.org\r\n",
        "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n",
        "Message-ID: <variant@example.org>\r\n",
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n",
        "In-Reply-To: <0@example.net>\r\nReferences: <0@example.net>\r\n",
        "List-Id: <list.example.org>\r\n",
        "X-Mailer: not signed\r\n",
    ];
    let from = format!(
        "From: \"{}\" <alice@{domain}>",
        "Alice ".repeat((i * 7) % 13).trim_end()
    );
    let to: Vec<String> = (0..1 + i % 6)
        .map(|n| format!("user{n}-{}@example.net", "x".repeat((i + n) % 17)))
        .collect();
    let subject: Vec<String> = (0..(i * 37) % 41).map(|w| format!("w{w}")).collect();
    let mut fields = vec![
        fold(&from),
        fold(&format!("To: {}", to.join(", "))),
        fold(&format!("Subject: {}", subject.join(" "))),
    ];
    // 200 different choices of the optional fields (37 is coprime with 256), in one of
    // several orders.
    let bits = (i * 37) % 256;
    for (n, field) in OPTIONAL.iter().enumerate() {
        if bits & (1 << n) != 0 {
            fields.push((*field).to_owned());
        }
    }
    let turn = i % fields.len();
    fields.rotate_left(turn);
    let mut message = fields.concat() + "\r\n";
    for line in 0..1 + i % 4 {
        // Trailing white space and empty lines at the end, which relaxed body
        // canonicalisation drops.
        message += &format!("line {line} of message {i}{}\r\n", " ".repeat(line));
    }
    message + &"\r\n".repeat(i % 3)
}

/// `field` with CRLF, folded before a space where a line would pass 72 characters.
fn fold(field: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (n, word) in field.split(' ').enumerate() {
        if n > 0 {
            match line + 1 + word.len() > 72 {
                true => {
                    out += "\r\n ";
                    line = 1;
                }
                false => {
                    out += " ";
                    line += 1;
                }
            }
        }
        out += word;
        line += word.len();
    }
    out + "\r\n"
}

#[test]
fn signatures_verify_with_dkimpy_mail_dkim_and_opendkim() {
    let test = "signatures_verify_with_dkimpy_mail_dkim_and_opendkim";
    if !have_verifiers(test) {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // RSA (2048 bits) and Ed25519, in domains of different lengths.
    let (rsa_file, rsa_record) = dkim_key(d, "rsa", "rsa");
    let (ed_file, ed_record) = dkim_key(d, "ed", "ed25519");
    let signers = [
        ("example.test", "r1", rsa_file, rsa_record),
        ("ed.example.test", "ed25519-selector", ed_file, ed_record),
    ];
    let mut keys = Vec::new();
    let mut public = Vec::new();
    for (domain, selector, file, record) in &signers {
        keys.push(DomainKey::load(Domain::parse(domain).unwrap(), selector, file).unwrap());
        public.push(PublicKey {
            name: format!("{selector}._domainkey.{domain}"),
            record: record.clone(),
        });
    }
    let keys = Keys::new(keys);

    let messages = d.join("messages");
    std::fs::create_dir(&messages).unwrap();
    let mut files = Vec::new();
    // Per key: how many signatures have the b= value fill its last line to the end (76
    // columns), where mail-auth folds before the closing `;`.
    let mut full_last_line = [0; 2];
    for (k, (domain, ..)) in signers.iter().enumerate() {
        for i in 0..VARIANTS {
            let message = variant(i, domain);
            let signature = keys.sign(message.as_bytes()).unwrap().unwrap();
            let value = signature.trim_end().trim_end_matches(';').trim_end();
            if value.rsplit("\r\n").next().unwrap().len() == 76 {
                full_last_line[k] += 1;
            }
            let file = messages.join(format!("{domain}-{i}.eml"));
            std::fs::write(&file, signature + &message).unwrap();
            files.push(file);
        }
    }
    // The case that failed with dkimpy: a 2048-bit RSA signature's b= starting at column 32.
    // (Ed25519's b= never starts where it would end a line.)
    assert!(
        full_last_line[0] > 0,
        "the variants never fill b='s last line: {full_last_line:?}"
    );
    // And one changed after signing, per key: each verifier must see that.
    let mut tampered = Vec::new();
    for file in [&files[0], &files[VARIANTS]] {
        let changed = d.join(format!(
            "tampered-{}",
            file.file_name().unwrap().to_string_lossy()
        ));
        let text = std::fs::read_to_string(file).unwrap();
        std::fs::write(&changed, text.replacen("line 0 of", "line 0 0f", 1)).unwrap();
        tampered.push(changed);
    }
    let all: Vec<PathBuf> = files.iter().chain(&tampered).cloned().collect();
    let verdicts = verify(d, &all, &public);

    let n = files.len();
    // Mail::DKIM in Debian 12 (1.20230212) has no Ed25519 yet, and says so.
    let no_ed25519 = "invalid (unsupported algorithm ed25519-sha256)";
    let mut report = String::new();
    for (verifier, verdicts) in [
        ("dkimpy", &verdicts.dkimpy),
        ("Mail::DKIM", &verdicts.mail_dkim),
        ("OpenDKIM", &verdicts.opendkim),
    ] {
        let wrong: Vec<usize> = (0..n)
            .filter(|&i| {
                let ed25519 = i >= VARIANTS;
                !(verdicts[i] == "pass"
                    || (verifier == "Mail::DKIM" && ed25519 && verdicts[i] == no_ed25519))
            })
            .collect();
        if let Some(&first) = wrong.first() {
            report += &format!(
                "{verifier}: {} of {n} not verified, e.g. {}: {}\n{}\n",
                wrong.len(),
                files[first].display(),
                verdicts[first],
                std::fs::read_to_string(&files[first]).unwrap()
            );
        }
        // The tampered ones fail.
        if let Some(passed) = verdicts[n..].iter().position(|v| v == "pass") {
            report += &format!("{verifier} passed {}\n", tampered[passed].display());
        }
    }
    assert!(
        report.is_empty(),
        "{report}({full_last_line:?} signatures with b= filling its last line)"
    );
    eprintln!(
        "{test}: {n} signatures (RSA and Ed25519, {full_last_line:?} with a full last line) \
         verified by dkimpy, Mail::DKIM and OpenDKIM in {:.1?}",
        started.elapsed()
    );
}

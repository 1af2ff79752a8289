//! Tests of the self-signed certificate: its names and validity, and when it is made again.

use super::*;

/// 2026-12-01 12:00:00 UTC.
const NOW: UnixTime = UnixTime(1_796_126_400);

fn at(days: i64) -> UnixTime {
    UnixTime(NOW.0.checked_add_signed(days * DAY as i64).unwrap())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn the_certificate_names_the_host_and_is_valid_for_a_year() {
    let dir = tempfile::tempdir().unwrap();
    let made = ensure(dir.path(), "mx.example.org", NOW).unwrap();
    assert_eq!(made.made, Made::Now);
    assert_eq!(made.not_after, at(365));
    let facts = Facts::read(&made.cert).unwrap();
    assert_eq!(facts.common_name.as_deref(), Some("mx.example.org"));
    assert_eq!(facts.dns_names, ["mx.example.org"]);
    assert_eq!(facts.not_before, at(-1));
    assert_eq!(facts.not_after, at(365));

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&made.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A key without its certificate (a first start that did not finish) is replaced, and the
/// new key is the owner's alone whatever the old file's permissions were.
#[test]
fn a_key_left_without_a_certificate_is_replaced_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join(KEY_FILE);
    std::fs::write(&key, "half a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let made = ensure(dir.path(), "mx.test", NOW).unwrap();
    assert_eq!(made.made, Made::Now);
    assert!(KeyPair::from_pem(&std::fs::read_to_string(&key).unwrap()).is_ok());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_good_certificate_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = ensure(dir.path(), "mx.test", NOW).unwrap();
    let (cert, key) = (read(&first.cert), read(&first.key));
    // Up to the day before the renewal window: the same files.
    for day in [0, 1, 100, 365 - 61] {
        let again = ensure(dir.path(), "mx.test", at(day)).unwrap();
        assert_eq!(again.made, Made::Earlier, "day {day}");
        assert_eq!(again.not_after, at(365));
        assert_eq!(read(&again.cert), cert);
        assert_eq!(read(&again.key), key);
    }
    // Host names are not case-sensitive.
    assert_eq!(
        ensure(dir.path(), "MX.Test", NOW).unwrap().made,
        Made::Earlier
    );
}

#[test]
fn an_expired_certificate_is_replaced_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = ensure(dir.path(), "mx.test", NOW).unwrap();
    let (old_cert, key) = (read(&first.cert), read(&first.key));
    let later = at(400);
    let renewed = ensure(dir.path(), "mx.test", later).unwrap();
    assert_eq!(
        renewed.made,
        Made::Renewed(Renewal::Expired { not_after: at(365) })
    );
    assert_eq!(renewed.not_after, at(400 + 365));
    assert_ne!(read(&renewed.cert), old_cert);
    assert_eq!(read(&renewed.key), key);
    let facts = Facts::read(&renewed.cert).unwrap();
    assert_eq!(facts.not_before, at(399));
    assert_eq!(facts.not_after, at(765));
    // The key pair is the same, the serial number is not.
    let old_der = der(&old_cert);
    let (_, old) = x509_parser::parse_x509_certificate(&old_der).unwrap();
    let new_der = der(&read(&renewed.cert));
    let (_, new) = x509_parser::parse_x509_certificate(&new_der).unwrap();
    assert_eq!(old.public_key().raw, new.public_key().raw);
    assert_ne!(old.raw_serial(), new.raw_serial());
    // And the new one is then reused.
    assert_eq!(
        ensure(dir.path(), "mx.test", at(401)).unwrap().made,
        Made::Earlier
    );
}

#[test]
fn a_certificate_that_expires_within_60_days_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), "mx.test", NOW).unwrap();
    let renewed = ensure(dir.path(), "mx.test", at(365 - 60)).unwrap();
    assert_eq!(
        renewed.made,
        Made::Renewed(Renewal::ExpiresSoon { not_after: at(365) })
    );
    assert_eq!(renewed.not_after, at(2 * 365 - 60));
}

#[test]
fn a_certificate_for_another_host_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), "old.test", NOW).unwrap();
    let renewed = ensure(dir.path(), "new.test", at(1)).unwrap();
    assert_eq!(
        renewed.made,
        Made::Renewed(Renewal::OtherHost {
            common_name: Some("old.test".into())
        })
    );
    let facts = Facts::read(&renewed.cert).unwrap();
    assert_eq!(facts.common_name.as_deref(), Some("new.test"));
    assert_eq!(facts.dns_names, ["new.test"]);
}

#[test]
fn a_certificate_from_the_future_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), "mx.test", NOW).unwrap();
    let renewed = ensure(dir.path(), "mx.test", at(-2)).unwrap();
    assert_eq!(
        renewed.made,
        Made::Renewed(Renewal::NotYetValid { not_before: at(-1) })
    );
}

/// What backstop wrote before certificates had a lifetime: rcgen's defaults, 1975 to 4096,
/// with the CN "rcgen self signed cert", and a key that is kept.
#[test]
fn an_older_backstops_certificate_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let key = pair.signing_key.serialize_pem();
    std::fs::write(dir.path().join(KEY_FILE), &key).unwrap();
    std::fs::write(dir.path().join(CERT_FILE), pair.cert.pem()).unwrap();
    let renewed = ensure(dir.path(), "mx.test", NOW).unwrap();
    let Made::Renewed(Renewal::TooLong { days }) = renewed.made else {
        panic!("not renewed for its length: {:?}", renewed.made)
    };
    assert!(days > 700_000, "{days}");
    assert_eq!(read(&renewed.key), key.as_bytes());
    let facts = Facts::read(&renewed.cert).unwrap();
    assert_eq!(facts.common_name.as_deref(), Some("mx.test"));
    assert_eq!(facts.not_after, at(365));
}

#[test]
fn reasons_read_well_in_the_log() {
    let cases = [
        (
            Renewal::Expired { not_after: NOW },
            "expired Tue, 01 Dec 2026 12:00:00 +0000",
        ),
        (
            Renewal::ExpiresSoon { not_after: NOW },
            "expires Tue, 01 Dec 2026 12:00:00 +0000",
        ),
        (
            Renewal::NotYetValid { not_before: NOW },
            "not valid before Tue, 01 Dec 2026 12:00:00 +0000",
        ),
        (
            Renewal::TooLong { days: 776_000 },
            "valid for 776000 days, longer than backstop makes them now",
        ),
        (
            Renewal::OtherHost {
                common_name: Some("old.test".into()),
            },
            "made for old.test",
        ),
        (
            Renewal::OtherHost { common_name: None },
            "made without a host name",
        ),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text);
    }
}

#[test]
fn a_damaged_certificate_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), "mx.test", NOW).unwrap();
    std::fs::write(
        dir.path().join(CERT_FILE),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = ensure(dir.path(), "mx.test", NOW).unwrap_err();
    let file = dir.path().join(CERT_FILE);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", file.display())),
        "{err}"
    );
}

fn der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

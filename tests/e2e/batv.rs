//! `backstop batv sign|verify` against an independent implementation of
//! draft-levine-smtp-batv-01, written anew in Python: each accepts the other's tags, and both
//! refuse an expired one.

use std::process::Command;

use crate::harness::{have, BIN};

/// `sign KEYFILE K DAY ADDRESS` prints a tag for expiry day DAY; `check KEYFILE ADDRESS`
/// prints `valid`, `bad signature` or `expired` (lifetime 7 days).
const PRVS: &str = r#"
import hmac, hashlib, sys, time
def mac(secret, k, ddd, address):
    return hmac.new(secret, (k + ddd + address.lower()).encode(), hashlib.sha1).hexdigest()[:6]
secret = open(sys.argv[2], "rb").read().strip()
if sys.argv[1] == "sign":
    k, day, address = sys.argv[3], int(sys.argv[4]), sys.argv[5]
    ddd = "%03d" % (day % 1000)
    local, domain = address.rsplit("@", 1)
    print("prvs=%s%s%s=%s@%s" % (k, ddd, mac(secret, k, ddd, address), local, domain))
else:
    local, domain = sys.argv[3].rsplit("@", 1)
    _, tag, core = local.split("=", 2)
    today = int(time.time()) // 86400
    if mac(secret, tag[0], tag[1:4], core + "@" + domain) != tag[4:].lower():
        print("bad signature")
    elif (int(tag[1:4]) - today % 1000) % 1000 > 7:
        print("expired")
    else:
        print("valid")
"#;

fn python(args: &[&str]) -> String {
    crate::harness::python(PRVS, args)
}

#[test]
fn batv_tags_agree_with_an_independent_implementation() {
    if !have(
        "/usr/bin/python3",
        "batv_tags_agree_with_an_independent_implementation",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("batv-4.key");
    std::fs::write(&key, "a secret of twenty-some bytes\n").unwrap();
    let config = d.join("backstop.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[batv]\nsign_with = 4\n[[batv.key]]\nnumber = 4\nsecret_file = \"{}\"\n\
             [[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n",
            d.join("var").display(),
            key.display()
        ),
    )
    .unwrap();
    let backstop = |verb: &str, address: &str| {
        let out = Command::new(BIN)
            .args(["batv", verb, address, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text.trim().to_owned())
    };
    let key = key.display().to_string();

    // Ours, checked by theirs.
    let (ok, tagged) = backstop("sign", "Alice.Smith@Example.Test");
    assert!(ok, "{tagged}");
    assert!(tagged.starts_with("prvs=4"), "{tagged}");
    assert!(tagged.ends_with("=Alice.Smith@example.test"), "{tagged}");
    assert_eq!(python(&["check", &key, &tagged]), "valid");
    let forged = tagged.replace("Alice.Smith", "Eve");
    assert_eq!(python(&["check", &key, &forged]), "bad signature");
    assert!(!backstop("verify", &forged).0);

    // Theirs, checked by ours: one valid for a few more days, one that expired yesterday.
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let fresh = python(&[
        "sign",
        &key,
        "4",
        &(today + 3).to_string(),
        "bob@example.test",
    ]);
    assert_eq!(
        backstop("verify", &fresh),
        (true, "bob@example.test".to_owned())
    );
    let stale = python(&[
        "sign",
        &key,
        "4",
        &(today - 1).to_string(),
        "bob@example.test",
    ]);
    let (ok, why) = backstop("verify", &stale);
    assert!(!ok);
    assert!(why.contains("expired"), "{why}");
    assert_eq!(python(&["check", &key, &stale]), "expired");
}

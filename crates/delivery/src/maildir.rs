//! Local delivery into Maildir folders: `root/<domain>/<local part>/{tmp,new,cur}`.
//!
//! A message is written to `tmp/`, synced, then renamed into `new/` (and the directory
//! synced), so a reader never sees half a message and a crash never loses a delivered one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_types::{
    Address, Attempt, AttemptOutcome, EnhancedStatus, QueueId, RemoteReply, ReversePath, UnixTime,
};

/// Delivers `body` for `recipient`, with `Return-Path:` and `Delivered-To:` on top as a local
/// delivery agent adds them.
pub fn deliver(
    root: &Path,
    hostname: &str,
    id: QueueId,
    sender: &ReversePath,
    recipient: &Address,
    body: &[u8],
    now: UnixTime,
) -> AttemptOutcome {
    let Some(folder) = folder(root, recipient) else {
        return AttemptOutcome::Permanent(attempt(
            550,
            EnhancedStatus(5, 1, 3),
            "mailbox name not allowed for local delivery".into(),
        ));
    };
    match write(&folder, hostname, id, sender, recipient, body, now) {
        Ok(path) => AttemptOutcome::Delivered(attempt(
            250,
            EnhancedStatus(2, 0, 0),
            format!("delivered to maildir as {}", path.display()),
        )),
        Err(e) if e.raw_os_error() == Some(28) => AttemptOutcome::Transient(attempt(
            452,
            EnhancedStatus(4, 3, 1),
            format!("local delivery: disk full: {e}"),
        )),
        Err(e) => AttemptOutcome::Transient(attempt(
            451,
            EnhancedStatus(4, 3, 0),
            format!("local delivery failed: {e}"),
        )),
    }
}

/// The recipient's Maildir, or `None` when the local part cannot be a folder name.
fn folder(root: &Path, recipient: &Address) -> Option<PathBuf> {
    let local = recipient.local_part().to_lowercase();
    let safe = !local.is_empty()
        && !local.starts_with('.')
        && !local.contains(['/', '\\', '\0'])
        && local.len() <= 64;
    let domain = recipient.domain().as_str();
    let safe_domain = !domain.starts_with('.') && !domain.contains(['/', '\\']);
    (safe && safe_domain).then(|| root.join(domain).join(local))
}

fn write(
    folder: &Path,
    hostname: &str,
    id: QueueId,
    sender: &ReversePath,
    recipient: &Address,
    body: &[u8],
    now: UnixTime,
) -> std::io::Result<PathBuf> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(folder.join(sub))?;
    }
    // Maildir names: time.unique.host, unique within this host.
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}.{}_{n}.{hostname}", now.0, id);
    let tmp = folder.join("tmp").join(&name);
    let new = folder.join("new").join(&name);
    {
        let mut file = std::fs::File::create(&tmp)?;
        write!(
            file,
            "Return-Path: {sender}\r\nDelivered-To: {recipient}\r\n"
        )?;
        file.write_all(body)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &new)?;
    std::fs::File::open(folder.join("new"))?.sync_all()?;
    Ok(new)
}

fn attempt(code: u16, status: EnhancedStatus, text: String) -> Attempt {
    Attempt {
        remote_host: None,
        reply: RemoteReply {
            code,
            status: Some(status),
            text,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new_with_trace_headers() {
        let root = tempfile::tempdir().unwrap();
        let sender = ReversePath::Address(Address::parse("a@example.org").unwrap());
        let rcpt = Address::parse("Bob@Example.test").unwrap();
        let outcome = deliver(
            root.path(),
            "mx.test",
            QueueId(7),
            &sender,
            &rcpt,
            b"Subject: x\r\n\r\nhi\r\n",
            UnixTime(1_800_000_000),
        );
        assert!(
            matches!(outcome, AttemptOutcome::Delivered(_)),
            "{outcome:?}"
        );
        let new = root.path().join("example.test/bob/new");
        let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(text, "Return-Path: <a@example.org>\r\nDelivered-To: Bob@example.test\r\nSubject: x\r\n\r\nhi\r\n");
        assert_eq!(
            std::fs::read_dir(root.path().join("example.test/bob/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn refuses_local_parts_that_are_no_folder_names() {
        let root = tempfile::tempdir().unwrap();
        for local in ["../etc", ".hidden", "a/b"] {
            let rcpt = Address::new(
                local,
                backstop_types::Domain::parse("example.test").unwrap(),
            )
            .unwrap();
            let outcome = deliver(
                root.path(),
                "mx",
                QueueId(1),
                &ReversePath::Null,
                &rcpt,
                b"x",
                UnixTime(0),
            );
            assert!(
                matches!(outcome, AttemptOutcome::Permanent(_)),
                "{local}: {outcome:?}"
            );
        }
    }
}

//! Local delivery into Maildir folders: `root/<domain>/<local part>/{tmp,new,cur}`.
//!
//! A message is written to `tmp/`, synced, then renamed into `new/` (and the directory
//! synced), so a reader never sees half a message and a crash never loses a delivered one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_types::{
    Address, Attempt, AttemptOutcome, Body, EnhancedStatus, QueueId, RemoteReply, ReversePath,
    UnixTime,
};

/// Delivers `body` for `recipient`, with `Return-Path:` and `Delivered-To:` on top as a local
/// delivery agent adds them.
pub fn deliver(
    root: &Path,
    hostname: &str,
    id: QueueId,
    sender: &ReversePath,
    recipient: &Address,
    body: &Body,
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

/// The recipient's Maildir, or `None` when the local part cannot be a folder name (the session
/// refuses those at RCPT; this is the last line).
pub fn folder(root: &Path, recipient: &Address) -> Option<PathBuf> {
    let local = backstop_types::address::maildir_folder_name(recipient)?;
    let domain = recipient.domain().as_str();
    let safe_domain = !domain.starts_with('.') && !domain.contains(['/', '\\']);
    safe_domain.then(|| root.join(domain).join(local))
}

fn write(
    folder: &Path,
    hostname: &str,
    id: QueueId,
    sender: &ReversePath,
    recipient: &Address,
    body: &Body,
    now: UnixTime,
) -> std::io::Result<PathBuf> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    for sub in ["tmp", "new", "cur"] {
        private_dirs(folder.parent().and_then(Path::parent), &folder.join(sub))?;
    }
    // Maildir names: time.unique.host, unique within this host.
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}.{}_{n}.{hostname}", now.0, id);
    let tmp = folder.join("tmp").join(&name);
    let new = folder.join("new").join(&name);
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A new file only (never one that is there, never through a symlink), readable by
        // its owner only.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        write!(
            file,
            "Return-Path: {sender}\r\nDelivered-To: {recipient}\r\n"
        )?;
        let written = (|| {
            file.write_all(body.head())?;
            if let Some(tail) = body.tail() {
                let copied = std::io::copy(&mut tail.open()?.take(tail.len), &mut file)?;
                if copied < tail.len {
                    return Err(backstop_types::body::short(&tail.path, copied, tail.len));
                }
            }
            file.sync_all()
        })();
        if let Err(e) = written {
            // Nothing half-written stays behind in tmp/.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    std::fs::rename(&tmp, &new)?;
    std::fs::File::open(folder.join("new"))?.sync_all()?;
    Ok(new)
}

/// Creates `dir` and what is missing of its parents below `root` with mode 0700, and refuses
/// to go through a symlink anywhere below `root`: a mailbox directory replaced by a link to
/// `/etc` must not make delivery write there.
fn private_dirs(root: Option<&Path>, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let root = root.unwrap_or(Path::new("/"));
    // The root is the administrator's (it may well be a symlink to another disk).
    std::fs::create_dir_all(root)?;
    let below = dir.strip_prefix(root).unwrap_or(dir);
    let mut path = root.to_path_buf();
    for part in below.components() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(std::io::Error::other(format!(
                    "{} is a symlink: not delivering through it",
                    path.display()
                )));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                    Ok(()) => {}
                    // Made by another delivery meanwhile: checked on the next round.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
            &Body::new(b"Subject: x\r\n\r\nhi\r\n".to_vec()),
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
                &Body::new(b"x".to_vec()),
                UnixTime(0),
            );
            assert!(
                matches!(outcome, AttemptOutcome::Permanent(_)),
                "{local}: {outcome:?}"
            );
        }
    }
}

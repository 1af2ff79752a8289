//! A full disk: the client hears 452 4.3.1 (try later) instead of 250, and nothing that got a
//! 250 is lost. The data directory is a small tmpfs (root only: it mounts one).

use std::process::Command;

use backstop_types::QueueId;

use crate::harness::{config, is_root, queue_id_in, queued, RawClient, Server};

/// A tmpfs mounted for the test; unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs failed");
        SmallDisk(path.to_owned())
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn send(c: &mut RawClient, body: &[u8]) -> String {
    assert!(c.command("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(body);
    c.send(b"\r\n.\r\n");
    c.reply()
}

#[test]
fn a_full_disk_answers_452_and_loses_nothing() {
    if !is_root("a_full_disk_answers_452_and_loses_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("var"), "24m");
    // Messages of 1 MB are spooled, and a spool file is started only with room for 1.5 times
    // the largest message: 4M keeps that well inside the 24 MB disk.
    let server = Server::start(dir.path(), &config(dir.path(), "max_message_size = \"4M\""));
    let line = [b'x'; 998];
    let mut body = b"Subject: filler\r\n\r\n".to_vec();
    for _ in 0..1024 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    let mut accepted: Vec<QueueId> = Vec::new();
    let mut full_reply = None;
    for _ in 0..100 {
        let reply = send(&mut c, &body);
        if reply.starts_with("250 ") {
            accepted.push(queue_id_in(&reply));
        } else {
            full_reply = Some(reply);
            break;
        }
    }
    let full_reply = full_reply.expect("the 24 MB disk never filled up");
    assert!(
        full_reply.starts_with("452 4.3.1 Insufficient system storage"),
        "{full_reply:?}\n{}",
        server.log()
    );
    assert!(!accepted.is_empty());
    // The session is still usable: the client may try again later.
    assert!(c.command("RSET").starts_with("250"));
    // Small messages (held in memory, stored in the database itself) fill what is left, until
    // the database's own write finds the disk full: 452 as well.
    let mut small = b"Subject: small\r\n\r\n".to_vec();
    for _ in 0..100 {
        small.extend_from_slice(&line);
        small.extend_from_slice(b"\r\n");
    }
    let mut database_full = None;
    for _ in 0..2000 {
        let reply = send(&mut c, &small);
        if reply.starts_with("250 ") {
            accepted.push(queue_id_in(&reply));
        } else {
            database_full = Some(reply);
            break;
        }
    }
    let database_full = database_full.expect("the database never found the disk full");
    assert!(
        database_full.starts_with("452 4.3.1 Insufficient system storage"),
        "{database_full:?}"
    );
    drop(c);
    server.stop();

    // With room again, every message that got a 250 is there after a restart.
    disk.grow("256m");
    let server = Server::restart(dir.path());
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    assert!(send(&mut c, b"Subject: after\r\n\r\nroom again").starts_with("250 "));
    drop(c);
    let ids: Vec<QueueId> = queued(dir.path())
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    server.stop();
    for id in &accepted {
        assert!(ids.contains(id), "{id} got a 250 but is not in the queue");
    }
    assert_eq!(ids.len(), accepted.len() + 1);
}

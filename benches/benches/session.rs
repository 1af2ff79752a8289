//! The receive path without I/O: a pipelined transaction with a 5 KB and a 100 KB message,
//! through the session state machine (parsing, framing, dot-unstuffing, Received: header).

use backstop_benches::{data, session_config};
use backstop_session::{Output, Peer, ServerSession};
use backstop_types::{QueueId, UnixTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn transaction(c: &mut Criterion) {
    let config = session_config();
    let mut group = c.benchmark_group("session");
    for size in [5 * 1024, 100 * 1024] {
        let body = data(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("pipelined transaction, {} KB", size / 1024), |b| {
            b.iter(|| {
                let peer = Peer {
                    ip: "192.0.2.1".parse().unwrap(),
                    local_submitter: false,
                    tls: None,
                    id: 1,
                };
                let mut s = ServerSession::new(config.clone(), peer, UnixTime(1_800_000_000));
                s.greet();
                s.handle_bytes(b"EHLO client.example.org\r\n", UnixTime(1_800_000_000));
                s.handle_bytes(
                    b"MAIL FROM:<a@example.org> SIZE=6000\r\nRCPT TO:<b@bench.test>\r\nDATA\r\n",
                    UnixTime(1_800_000_000),
                );
                s.handle_bytes(&body, UnixTime(1_800_000_000));
                let mut queued = 0;
                while let Some(output) = s.poll_output() {
                    if let Output::Enqueue(message) = output {
                        queued += message.body.len();
                        s.handle_enqueued(Ok(QueueId(1)));
                    }
                }
                assert!(queued > size as u64);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);

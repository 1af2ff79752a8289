//! The queue's accept path under concurrency: commits per second with 1, 10 and 50 writers
//! (each `enqueue` is a synced write), beside the raw fsyncs per second of the same disk.
//!
//! Group commit is what makes the 50-writer number far above the fsync rate: one writer thread
//! folds every waiting accept into one synced batch. Run with
//! `cargo bench -p backstop-benches --bench queue_commit`; the files go under the target dir
//! (a real disk, not a tmpfs /tmp).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_queue::Queue;

const RUN: Duration = Duration::from_secs(3);
const BODY: usize = 5 * 1024;

fn main() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    let fsyncs = raw_fsyncs_per_second(base);
    println!("disk: {fsyncs:.0} fsyncs/s (4 KB write + fdatasync, one writer)");
    println!("{:>8} {:>12} {:>16}", "writers", "commits/s", "x fsyncs/s");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for writers in [1, 10, 50] {
        let rate = runtime.block_on(commits_per_second(base, writers));
        println!("{writers:>8} {rate:>12.0} {:>16.1}", rate / fsyncs);
    }
}

fn raw_fsyncs_per_second(base: &Path) -> f64 {
    let dir = tempfile::tempdir_in(base).unwrap();
    let mut file = std::fs::File::create(dir.path().join("fsync")).unwrap();
    let block = vec![0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn commits_per_second(base: &Path, writers: usize) -> f64 {
    let dir = tempfile::tempdir_in(base).unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let envelope = Arc::new(backstop_benches::envelope());
    let body = vec![b'x'; BODY];
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (queue, envelope, body, done) =
            (queue.clone(), envelope.clone(), body.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < RUN {
                queue.enqueue(&envelope, body.clone()).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

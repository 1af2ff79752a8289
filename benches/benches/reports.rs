//! The anti-backscatter hot paths: rendering an RFC 3464 report (with the original's header)
//! for a trusted sender, and BATV: signing a return path as mail leaves, verifying a tag as a
//! bounce comes in.

use backstop_batv::Keys;
use backstop_dsn::render::{Action, RecipientReport, Report};
use backstop_types::{Address, EnhancedStatus, UnixTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn report(c: &mut Criterion) {
    let envelope = backstop_benches::envelope();
    let original = backstop_benches::data(5 * 1024);
    let to = Address::parse("sender@example.org").unwrap();
    let mut group = c.benchmark_group("dsn");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render a failure report, 5 KB original", |b| {
        b.iter(|| {
            let report = Report {
                reporting_mta: "mx.bench.test",
                to: &to,
                envelope: &envelope,
                action: Action::Failed,
                recipients: vec![RecipientReport {
                    recipient: &envelope.recipients[0],
                    status: EnhancedStatus(5, 1, 1),
                    remote_host: Some("mx1.example.net[192.0.2.25:25]"),
                    diagnostic: Some((550, "5.1.1 <user@bench.test>: User unknown")),
                    last_attempt: UnixTime(1_800_000_100),
                    will_retry_until: None,
                }],
                original: &original,
                date: UnixTime(1_800_000_100),
                message_id: "000660E2757FF57D.dsn@mx.bench.test".into(),
                boundary: "000660E2757FF57D/mx.bench.test".into(),
            };
            std::hint::black_box(report.render())
        })
    });
    group.finish();
}

fn batv(c: &mut Criterion) {
    let keys = Keys::new(&[(0, b"a BATV secret of thirty-two bytes".to_vec())], 0, 7).unwrap();
    let address = Address::parse("alice@example.test").unwrap();
    let today = 20_500;
    let tagged = keys.sign(&address, today);
    let mut group = c.benchmark_group("batv");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| {
        b.iter(|| std::hint::black_box(keys.sign(&address, today)))
    });
    group.bench_function("verify", |b| {
        b.iter(|| std::hint::black_box(keys.verify(&tagged, today).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, report, batv);
criterion_main!(benches);

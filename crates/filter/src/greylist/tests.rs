use backstop_state::{MemoryState, Unreachable};

use super::*;

const POLICY: GreylistPolicy = GreylistPolicy {
    delay: Duration::from_secs(300),
    retry_window: Duration::from_secs(2 * 86_400),
    auto_pass: Duration::from_secs(35 * 86_400),
};

fn sender() -> ReversePath {
    ReversePath::Address(Address::parse("news@example.org").unwrap())
}

fn rcpt(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[tokio::test]
async fn first_deferred_early_retry_deferred_real_retry_passes() {
    let store = MemoryState::default();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let t0 = UnixTime(1_800_000_000);
    let bob = rcpt("bob@example.com");
    assert_eq!(
        check(&store, &POLICY, ip, &sender(), &bob, t0).await,
        GreyVerdict::Defer { retry_after: 300 }
    );
    assert_eq!(
        check(&store, &POLICY, ip, &sender(), &bob, UnixTime(t0.0 + 100)).await,
        GreyVerdict::Defer { retry_after: 200 }
    );
    // The retry comes from a neighbour in the same /24, as big senders' pools do.
    let neighbour: IpAddr = "192.0.2.77".parse().unwrap();
    assert_eq!(
        check(
            &store,
            &POLICY,
            neighbour,
            &sender(),
            &bob,
            UnixTime(t0.0 + 300)
        )
        .await,
        GreyVerdict::Pass
    );
    // Auto-pass: the network retried once, so new triplets from it pass at once...
    let later = UnixTime(t0.0 + 400);
    assert_eq!(
        check(
            &store,
            &POLICY,
            ip,
            &ReversePath::Null,
            &rcpt("carol@example.com"),
            later
        )
        .await,
        GreyVerdict::Pass
    );
    // ...until the auto-pass runs out.
    let much_later = UnixTime(t0.0 + 300 + 35 * 86_400);
    assert_eq!(
        check(
            &store,
            &POLICY,
            ip,
            &ReversePath::Null,
            &rcpt("dave@example.com"),
            much_later
        )
        .await,
        GreyVerdict::Defer { retry_after: 300 }
    );
}

#[tokio::test]
async fn other_networks_and_forgotten_attempts_start_over() {
    let store = MemoryState::default();
    let t0 = UnixTime(1_800_000_000);
    let bob = rcpt("bob@example.com");
    let a: IpAddr = "192.0.2.10".parse().unwrap();
    let b: IpAddr = "198.51.100.10".parse().unwrap();
    check(&store, &POLICY, a, &sender(), &bob, t0).await;
    assert_eq!(
        check(&store, &POLICY, b, &sender(), &bob, UnixTime(t0.0 + 600)).await,
        GreyVerdict::Defer { retry_after: 300 }
    );
    // A retry after the window is a first attempt again.
    let too_late = UnixTime(t0.0 + 2 * 86_400 + 1);
    assert_eq!(
        check(&store, &POLICY, a, &sender(), &bob, too_late).await,
        GreyVerdict::Defer { retry_after: 300 }
    );
    // IPv6 clients are grouped by /64.
    let v6a: IpAddr = "2001:db8:1:2::25".parse().unwrap();
    let v6b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    check(&store, &POLICY, v6a, &sender(), &bob, t0).await;
    assert_eq!(
        check(&store, &POLICY, v6b, &sender(), &bob, UnixTime(t0.0 + 300)).await,
        GreyVerdict::Pass
    );
}

#[tokio::test]
async fn a_store_that_cannot_answer_is_unavailable_not_a_pass() {
    let verdict = check(
        &Unreachable,
        &POLICY,
        "192.0.2.1".parse().unwrap(),
        &sender(),
        &rcpt("bob@example.com"),
        UnixTime(0),
    )
    .await;
    assert_eq!(
        verdict,
        GreyVerdict::Unavailable("the state store cannot be reached: store down".into())
    );
}

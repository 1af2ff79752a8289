//! `[state]`: where the site's shared state is (greylisting, rate counters, callahead answers,
//! sent Message-IDs): on this node, or in the site's Redis (one server or a cluster).

use std::time::Duration;

use backstop_state::redis::{Servers, Settings};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{secs, Seconds};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawState {
    redis: Option<Spanned<String>>,
    redis_cluster: Vec<Spanned<String>>,
    prefix: String,
    timeout: Spanned<Seconds>,
    tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for RawState {
    fn default() -> RawState {
        RawState {
            redis: None,
            redis_cluster: Vec::new(),
            prefix: "backstop:".to_owned(),
            timeout: Spanned::new(0..0, secs(1)),
            tls_ca_file: None,
        }
    }
}

/// `None`: the state is this node's (the queue's database and memory).
pub(crate) fn check(
    ctx: &mut Ctx<'_>,
    raw: RawState,
    sent_retention: Duration,
) -> Option<Settings> {
    let timeout = raw.timeout.get_ref().0;
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        ctx.error(
            raw.timeout.span(),
            "state.timeout",
            "must be more than 0 and at most 60s (a session waits this long for each answer)",
        );
    }
    let url = |ctx: &mut Ctx<'_>, key: &str, url: &Spanned<String>| {
        let text = url.get_ref();
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| text.starts_with(s));
        match scheme_ok && backstop_state::redis::parses(text) {
            true => Some(text.clone()),
            false => {
                ctx.error(
                    url.span(),
                    key,
                    "not a Redis URL: redis://HOST:PORT/DB (rediss:// for TLS, redis+unix:///PATH)",
                );
                None
            }
        }
    };
    let servers = match (&raw.redis, raw.redis_cluster.is_empty()) {
        (None, true) => return None,
        (Some(one), true) => Servers::One(url(ctx, "state.redis", one)?),
        (None, false) => {
            let nodes: Vec<String> = raw
                .redis_cluster
                .iter()
                .filter_map(|u| url(ctx, "state.redis_cluster", u))
                .collect();
            if nodes.len() != raw.redis_cluster.len() {
                return None;
            }
            Servers::Cluster(nodes)
        }
        (Some(one), false) => {
            ctx.error(
                one.span(),
                "state.redis",
                "redis (one server) and redis_cluster (the nodes of a cluster) exclude each other",
            );
            return None;
        }
    };
    Some(Settings {
        servers,
        prefix: raw.prefix,
        timeout: timeout.clamp(Duration::from_millis(1), Duration::from_secs(60)),
        sent_retention,
        ca_file: raw.tls_ca_file,
    })
}

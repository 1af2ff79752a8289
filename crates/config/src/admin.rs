//! `[admin]` (the admin API), `[metrics]` (Prometheus) and `[sendmail]` (the local socket
//! `backstop sendmail` submits through).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminEndpoint {
    /// A Unix socket only its owner may use (the default: `data_dir/admin.sock`).
    Unix(PathBuf),
    /// HTTP on a loopback address; every request must carry `Authorization: Bearer <token>`,
    /// the token read from `token_file` by the loading step.
    /// The Unix socket is served too (the CLI on the host uses either).
    Http {
        address: SocketAddr,
        token_file: Located<PathBuf>,
        socket: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    socket: PathBuf,
    http: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
}

impl Default for RawAdmin {
    fn default() -> RawAdmin {
        RawAdmin {
            socket: PathBuf::from("admin.sock"),
            http: None,
            token_file: None,
        }
    }
}

/// The admin API is never reachable from the network: a Unix socket, or HTTP on loopback.
pub(crate) fn admin(ctx: &mut Ctx<'_>, raw: RawAdmin, data_dir: &Path) -> AdminEndpoint {
    let socket = data_dir.join(&raw.socket);
    let unix = AdminEndpoint::Unix(socket.clone());
    match (raw.http, raw.token_file) {
        (None, None) => unix,
        (None, Some(t)) => {
            ctx.error(t.span(), "", "token_file goes with http");
            unix
        }
        (Some(h), None) => {
            ctx.error(h.span(), "", "http needs a token_file (the bearer token)");
            unix
        }
        (Some(h), Some(t)) => {
            let Some(address) = crate::socket_address(ctx, &h, "127.0.0.1:8025") else {
                return unix;
            };
            if !address.ip().is_loopback() {
                ctx.error(
                    h.span(),
                    "",
                    format!("{address}: the admin API listens on loopback only"),
                );
                return unix;
            }
            AdminEndpoint::Http {
                address,
                token_file: crate::path(ctx, &t),
                socket,
            }
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    address: Option<Spanned<String>>,
}

pub(crate) fn metrics(ctx: &mut Ctx<'_>, raw: RawMetrics) -> Option<SocketAddr> {
    crate::socket_address(ctx, raw.address.as_ref()?, "127.0.0.1:9025")
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSendmail {
    enabled: bool,
    socket: PathBuf,
    trusted_users: Vec<String>,
}

impl Default for RawSendmail {
    fn default() -> RawSendmail {
        RawSendmail {
            enabled: true,
            socket: PathBuf::from("sendmail.sock"),
            trusted_users: vec!["root".to_owned()],
        }
    }
}

/// The local submission socket (relative to `data_dir` unless absolute); `None` when off.
pub(crate) fn sendmail(raw: RawSendmail, data_dir: &Path) -> (Option<PathBuf>, Vec<String>) {
    (
        raw.enabled.then(|| data_dir.join(&raw.socket)),
        raw.trusted_users,
    )
}

//! `[tls]`: the listeners' certificate.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Certificate chain and key from PEM files.
    Files {
        cert: Located<PathBuf>,
        key: Located<PathBuf>,
    },
    /// None configured: a self-signed one under the data directory.
    SelfSigned,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
}

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: RawTls) -> Tls {
    match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => Tls::Files {
            cert: crate::path(ctx, &cert),
            key: crate::path(ctx, &key),
        },
        (None, None) => Tls::SelfSigned,
        (Some(only), None) => {
            ctx.error(only.span(), "tls.cert", "cert needs a key too");
            Tls::SelfSigned
        }
        (None, Some(only)) => {
            ctx.error(only.span(), "tls.key", "key needs a cert too");
            Tls::SelfSigned
        }
    }
}

//! `[[dkim]]`: the keys that sign our users' mail, one per From domain.

use std::path::PathBuf;

use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};

/// One signing key; the key file is read (and checked) by the loading step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    pub domain: Domain,
    pub selector: String,
    pub key_file: Located<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkim {
    domain: Spanned<String>,
    selector: Spanned<String>,
    key_file: Spanned<PathBuf>,
}

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: Vec<RawDkim>) -> Vec<DkimKey> {
    let mut keys: Vec<DkimKey> = Vec::new();
    for key in raw {
        let domain = match Domain::parse(key.domain.get_ref()) {
            Ok(domain) => domain,
            Err(e) => {
                ctx.error(
                    key.domain.span(),
                    "",
                    format!("{:?}: {e}", key.domain.get_ref()),
                );
                continue;
            }
        };
        if keys.iter().any(|k| k.domain == domain) {
            ctx.error(key.domain.span(), "", format!("{domain} has a key already"));
            continue;
        }
        // The selector is a DNS label (or several): it becomes part of a name to look up.
        let selector = key.selector.get_ref();
        if selector.is_empty() || Domain::parse(selector).is_err() {
            ctx.error(
                key.selector.span(),
                "",
                format!("{selector:?} is not a selector like \"s2026\""),
            );
            continue;
        }
        keys.push(DkimKey {
            domain,
            selector: selector.clone(),
            key_file: crate::path(ctx, &key.key_file),
        });
    }
    keys
}

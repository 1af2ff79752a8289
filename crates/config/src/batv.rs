//! `[batv]`: the keys that tag our users' return paths, and the check of bounces coming in.

use std::path::{Path, PathBuf};

use backstop_types::{Address, Domain};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batv {
    pub keys: BatvKeys,
    /// How many days a new tag is valid, and the longest a tag may claim.
    pub lifetime_days: u16,
    /// Refuse bounces to local addresses without a valid tag.
    pub check_bounces: bool,
    /// Addresses (`user@domain`, lower case) and domains (`@domain`) that take untagged
    /// bounces.
    pub exempt: Vec<String>,
}

/// Where the BATV secrets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatvKeys {
    /// Keys from the files the config names (numbers 0–9, each once), signing with one.
    Files {
        keys: Vec<(u8, Located<PathBuf>)>,
        sign_with: u8,
    },
    /// None named: key 0 from this file, made with a random secret on first use.
    Generated { file: PathBuf },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawBatv {
    enabled: bool,
    sign_with: Spanned<u8>,
    lifetime_days: Spanned<u16>,
    key: Vec<RawBatvKey>,
    check_bounces: bool,
    exempt: Vec<Spanned<String>>,
}

impl Default for RawBatv {
    fn default() -> RawBatv {
        RawBatv {
            enabled: true,
            sign_with: Spanned::new(0..0, 0),
            lifetime_days: Spanned::new(0..0, 7),
            key: Vec::new(),
            check_bounces: true,
            exempt: Vec::new(),
        }
    }
}

/// A numbered secret (`[[batv.key]]`, `[[quarantine.key]]`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatvKey {
    number: Spanned<u8>,
    secret_file: Spanned<PathBuf>,
}

/// Numbered keys (0–9, each once) and the one that signs, which must be among them; each
/// problem at its line. `section` names them in messages (`batv`: `[[batv.key]]`).
pub(crate) fn numbered_keys(
    ctx: &mut Ctx<'_>,
    raw: &[RawBatvKey],
    sign_with: &Spanned<u8>,
    section: &str,
) -> BatvKeys {
    let mut keys: Vec<(u8, Located<PathBuf>)> = Vec::new();
    for key in raw {
        let number = *key.number.get_ref();
        if number > 9 {
            ctx.error(
                key.number.span(),
                "",
                format!("key number {number} is not between 0 and 9"),
            );
        } else if keys.iter().any(|(n, _)| *n == number) {
            ctx.error(
                key.number.span(),
                "",
                format!("key {number} is given twice"),
            );
        } else {
            keys.push((number, crate::path(ctx, &key.secret_file)));
        }
    }
    let signing = *sign_with.get_ref();
    if !keys.iter().any(|(n, _)| *n == signing) {
        // Without sign_with, key 0 signs: the problem is at the keys the file has.
        let at = raw.first().map(|k| k.number.span());
        let spans: Vec<_> = std::iter::once(sign_with.span()).chain(at).collect();
        ctx.error(
            Ctx::first_written(&spans),
            &format!("{section}.sign_with"),
            format!(
                "the signing key {signing} (sign_with) is not among the [[{section}.key]] numbers"
            ),
        );
    }
    BatvKeys::Files {
        keys,
        sign_with: signing,
    }
}

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: RawBatv, data_dir: &Path) -> Option<Batv> {
    if !raw.enabled {
        return None;
    }
    let mut lifetime_days = *raw.lifetime_days.get_ref();
    if !(1..=365).contains(&lifetime_days) {
        ctx.error(
            raw.lifetime_days.span(),
            "batv.lifetime_days",
            "the lifetime must be between 1 and 365 days",
        );
        lifetime_days = 7;
    }
    let keys = if raw.key.is_empty() {
        BatvKeys::Generated {
            file: data_dir.join("batv").join("0.key"),
        }
    } else {
        numbered_keys(ctx, &raw.key, &raw.sign_with, "batv")
    };
    let mut exempt = Vec::new();
    for e in &raw.exempt {
        let text = e.get_ref().to_ascii_lowercase();
        let valid = match text.strip_prefix('@') {
            Some(domain) => Domain::parse(domain).is_ok(),
            None => Address::parse(&text).is_ok(),
        };
        if valid {
            exempt.push(text);
        } else {
            ctx.error(
                e.span(),
                "",
                format!("{:?} is neither an address nor @domain", e.get_ref()),
            );
        }
    }
    Some(Batv {
        keys,
        lifetime_days,
        check_bounces: raw.check_bounces,
        exempt,
    })
}

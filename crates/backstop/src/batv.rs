//! BATV keys as the config names them, and the `batv sign` / `batv verify` commands.

use backstop_types::Clock as _;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use backstop_types::Address;

use crate::load::{BatvSource, Setup};

/// The keys to sign and verify with; `None` when BATV is off. The key of the default setup is
/// made on first use: 32 random bytes, hex, in a file only its owner can read.
pub fn keys(setup: &Setup) -> anyhow::Result<Option<backstop_batv::Keys>> {
    match &setup.batv {
        None => Ok(None),
        Some(BatvSource::Keys(keys)) => Ok(Some((**keys).clone())),
        Some(BatvSource::Generated {
            file,
            lifetime_days,
        }) => {
            let secret = read_or_make(file)?;
            let keys = backstop_batv::Keys::new(&[(0, secret)], 0, *lifetime_days)
                .with_context(|| format!("{}", file.display()))?;
            Ok(Some(keys))
        }
    }
}

pub(crate) fn read_or_make(file: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(file) {
        Ok(secret) => return Ok(secret.trim_ascii().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    let secret = make(file)?;
    tracing::info!(file = %file.display(), "made a new key");
    Ok(secret)
}

/// `backstop batv new-key FILE`: a new secret in a new file (never over an existing one: that
/// would invalidate every tag made with it).
pub fn new_key(file: &Path) -> anyhow::Result<()> {
    make(file).map(|_| ())
}

/// Writes 32 random bytes, hex, to a new file `file` of mode 0600; the secret.
fn make(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no random numbers for a BATV key"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    out.write_all(secret.as_bytes())?;
    out.write_all(b"\n")?;
    out.sync_all()?;
    Ok(secret.into_bytes())
}

/// `backstop batv sign ADDRESS`: prints the address with a tag valid from today.
pub fn sign(setup: &Setup, address: &str) -> anyhow::Result<String> {
    let keys = keys(setup)?.context("BATV is off in this config ([batv] enabled = false)")?;
    let address = Address::parse(address).with_context(|| format!("{address:?}"))?;
    Ok(keys.sign(&address, today()).to_string())
}

/// `backstop batv verify ADDRESS`: the untagged address, or why the tag is not valid today.
pub fn verify(setup: &Setup, address: &str) -> anyhow::Result<Result<String, String>> {
    let keys = keys(setup)?.context("BATV is off in this config ([batv] enabled = false)")?;
    let address = Address::parse(address).with_context(|| format!("{address:?}"))?;
    Ok(keys
        .verify(&address, today())
        .map(|a| a.to_string())
        .map_err(|e| e.to_string()))
}

fn today() -> u64 {
    backstop_batv::day_of(backstop_types::SystemClock.now())
}

//! BATV on bounces: a bounce (null sender) to one of our addresses must carry a valid tag of
//! our keys, because our own mail leaves with one; the tag is removed before any lookup.

use std::sync::Arc;

use backstop_session::BounceProblem;
use backstop_types::{Address, Clock};

/// Bounces to our addresses must answer mail we sent: carry a valid BATV tag of our keys.
pub struct BounceCheck {
    pub keys: backstop_batv::Keys,
    /// Refuse bounces without a valid tag (`[batv] check_bounces`); without it valid tags are
    /// only removed.
    pub enforce: bool,
    /// `user@domain` and `@domain` entries that take untagged bounces.
    pub exempt: Vec<String>,
    pub clock: Arc<dyn Clock>,
}

impl BounceCheck {
    /// The address without its tag, when it carries a valid one of our keys.
    pub fn untagged(&self, address: &Address) -> Option<Address> {
        let today = backstop_batv::day_of(self.clock.now());
        self.keys.verify(address, today).ok()
    }

    /// The address to deliver to (the tag stripped), or why the bounce is refused. abuse@ and
    /// the configured exemptions pass untagged; postmaster@ never gets here.
    pub fn recipient(&self, address: &Address) -> Result<Address, BounceProblem> {
        let lower = address.to_string().to_ascii_lowercase();
        let exempt = address.local_part().eq_ignore_ascii_case("abuse")
            || self.exempt.iter().any(|e| match e.strip_prefix('@') {
                Some(domain) => address.domain().as_str() == domain,
                None => *e == lower,
            });
        let today = backstop_batv::day_of(self.clock.now());
        match self.keys.verify(address, today) {
            Ok(untagged) => Ok(untagged),
            Err(_) if exempt => Ok(address.clone()),
            Err(backstop_batv::TagError::Missing) => Err(BounceProblem::Missing),
            Err(backstop_batv::TagError::Expired) => Err(BounceProblem::Expired),
            Err(_) => Err(BounceProblem::Invalid),
        }
    }
}

//! Counts of what the listeners refuse, by the stage of the session and the reason (the
//! enhanced status code of the reply), for `smtp_rejections_total{stage,reason}`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Refusals (4xx and 5xx replies) counted by (stage, reason).
#[derive(Debug, Default)]
pub struct Rejections {
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Rejections {
    pub fn count(&self, stage: &'static str, reason: String) {
        *self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((stage, reason))
            .or_default() += 1;
    }

    /// The counts in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP smtp_rejections_total Replies refusing or deferring something, by stage and reason.\n\
             # TYPE smtp_rejections_total counter\n",
        );
        for ((stage, reason), n) in self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            out.push_str(&format!(
                "smtp_rejections_total{{stage=\"{stage}\",reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}

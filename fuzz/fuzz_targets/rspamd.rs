//! rspamd's answer decoder (`crates/filter/src/rspamd.rs`, [`decode_answer`]): the HTTP
//! status line and header fields, the body by Content-Length, chunked or to the end, the JSON
//! and what its action and `milter` block ask for.
//!
//! Input: the whole HTTP answer as read from the connection. The seeds in `corpus/rspamd/`
//! are the unit tests' answers and rspamd's own for each action.
//!
//! Checked, besides "no panic":
//! - a refusal is a 4xx or 5xx reply with clean lines, whatever text rspamd gave;
//! - the header changes it asks for, when the pipeline makes them (`Draft::apply_all`),
//!   leave a message a next hop reads as we do: CRLF line ends only, no NUL, a header of
//!   fields ended by an empty line.

#![no_main]

use backstop_filter::pipeline::{Draft, Step};
use backstop_filter::rspamd::decode_answer;
use backstop_fuzz::{assert_message_well_formed, assert_reply, sample_envelope, SAMPLE_MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_answer(data) {
        Ok(Step::Continue(changes)) => {
            let mut draft = Draft::new(sample_envelope(), SAMPLE_MESSAGE.to_vec());
            // Changes that would break the message are refused whole (the check fails).
            if draft.apply_all(changes).is_err() {
                return;
            }
            assert_message_well_formed("the message after rspamd's changes", &draft.message);
        }
        Ok(Step::Refuse(reply)) => {
            assert_reply(&reply);
            assert!(matches!(reply.code() / 100, 4 | 5), "{reply:?}");
        }
        Ok(Step::Quarantine(_) | Step::Discard(_)) | Err(_) => {}
    }
});

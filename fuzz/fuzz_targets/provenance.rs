//! Bounce provenance's parse of a returned message (`crates/filter/src/provenance.rs`): the
//! Message-ID of the original a bounce carries as `message/rfc822` or `text/rfc822-headers`,
//! found with mail-parser in whatever a stranger sends as a bounce.
//!
//! Input: the bounce as received (header and body). The seeds in `corpus/provenance/` are
//! reports as MTAs write them, backstop's own among them.
//!
//! Checked: no panic, no endless loop or runaway recursion on any MIME structure, and the same
//! answer twice (a client that retries a refused bounce must get the same verdict).

#![no_main]

use backstop_filter::provenance::returned_message_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = returned_message_id(data);
    assert_eq!(returned_message_id(data), id);
});

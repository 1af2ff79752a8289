//! The queue's on-disk records (`crates/queue/src/record.rs`): entries of every version
//! (envelope, recipients' states, hold flag, reports) and quarantine records, decoded from
//! whatever a damaged or hostile file holds. Built without RocksDB (`default-features = false`).
//!
//! Input: octet 0 chooses the record kind, the rest is the record. The seeds in
//! `corpus/queue_record/` are the committed fixtures of each version.
//!
//! Checked, besides "no panic" and "no allocation the record's size does not justify":
//! - a record that decodes encodes to one that decodes to the same value, and that encoding
//!   is canonical: encoding what it decodes to gives the same bytes;
//! - so whatever the queue reads, it can write back and read again.

#![no_main]

use backstop_queue::record::{decode_entry, decode_quarantine, encode_entry, encode_quarantine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [kind, record @ ..] = data else {
        return;
    };
    if kind & 1 == 0 {
        let Ok(entry) = decode_entry(record) else {
            return;
        };
        let encoded = encode_entry(&entry);
        let again = decode_entry(&encoded).expect("what was written reads back");
        assert_eq!(again, entry);
        assert_eq!(encode_entry(&again), encoded, "the encoding is canonical");
    } else {
        let Ok(quarantine) = decode_quarantine(record) else {
            return;
        };
        let encoded = encode_quarantine(&quarantine);
        let again = decode_quarantine(&encoded).expect("what was written reads back");
        assert_eq!(again, quarantine);
        assert_eq!(
            encode_quarantine(&again),
            encoded,
            "the encoding is canonical"
        );
    }
});

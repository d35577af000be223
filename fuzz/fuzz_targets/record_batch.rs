//! Arbitrary bytes as the records of a Produce request: batch splitting, CRC
//! and record validation, and the base offset rewrite of accepted batches.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rafka::storage::batch::{seal, unseal, validate_produce_records, with_base_offset};

#[global_allocator]
static ALLOCATOR: rafka::huge_alloc::ReservingAllocator = rafka::huge_alloc::ReservingAllocator;

fuzz_target!(|data: &[u8]| {
    if let Ok(batches) = validate_produce_records(&Bytes::copy_from_slice(data), 1 << 20) {
        for batch in batches {
            let stored = with_base_offset(&batch.bytes, 1234);
            assert_eq!(unseal(&seal(&stored)), Some(&stored[..]));
            assert!(
                validate_produce_records(&Bytes::from(stored), 1 << 20).is_ok(),
                "rewritten batch stays valid"
            );
        }
    }
});

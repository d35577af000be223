//! Arbitrary bytes as the records of a Produce request: batch splitting, CRC
//! and record validation, and the base offset rewrite of accepted batches.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rafka::storage::batch::{seal, unseal, validate_produce_records, with_base_offset};

#[global_allocator]
static ALLOCATOR: rafka::huge_alloc::ReservingAllocator = rafka::huge_alloc::ReservingAllocator;

/// Makes the input one well-framed v2 batch with a correct CRC-32C, so that the
/// fuzzer reaches record decoding and decompression instead of stopping at the CRC.
fn framed(data: &[u8]) -> Option<Vec<u8>> {
    let mut batch = data.to_vec();
    if batch.len() < 61 {
        return None;
    }
    let length = i32::try_from(batch.len() - 12).ok()?;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    batch[16] = 2;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Some(batch)
}

fuzz_target!(|data: &[u8]| {
    let _ = validate_produce_records(&Bytes::copy_from_slice(data), 1 << 20);
    let Some(batch) = framed(data) else { return };
    if let Ok(batches) = validate_produce_records(&Bytes::from(batch), 1 << 20) {
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

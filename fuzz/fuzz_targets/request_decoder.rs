//! Arbitrary bytes through the broker's framing and request decoder, as a
//! connection would feed them.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rafka::protocol::codec::{decode_request, take_frame};

// The broker's allocator: decoded array counts far beyond the input must not abort.
#[global_allocator]
static ALLOCATOR: rafka::huge_alloc::ReservingAllocator = rafka::huge_alloc::ReservingAllocator;

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(frame)) = take_frame(&mut buffer, 1 << 20) {
        let _ = decode_request(frame);
    }
});

//! Decompression of record batches for validation, with a cap on the output.
//!
//! `kafka-protocol`'s own decompressors have no cap and trust the sizes a batch
//! declares (raw snappy zero-fills the length in its header, up to 4 GB), so a
//! small compressed batch could make the broker allocate gigabytes. Here every
//! codec stops at [`MAX_UNCOMPRESSED_BATCH_BYTES`].

use std::io::Read;

use anyhow::{ensure, Context};
use bytes::{Buf, Bytes};
use kafka_protocol::records::Compression;

/// Largest decompressed batch accepted. Producers batch well below this
/// (librdkafka's batch.size defaults to 1 MB of uncompressed records).
pub const MAX_UNCOMPRESSED_BATCH_BYTES: usize = 64 << 20;

/// snappy-java's stream header, which Kafka's Java clients write before the blocks.
const XERIAL_HEADER: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

pub fn decompress(compressed: &mut Bytes, codec: Compression) -> anyhow::Result<Bytes> {
    let input = std::mem::take(compressed);
    match codec {
        Compression::None => Ok(input),
        Compression::Gzip => read_capped(flate2::read::GzDecoder::new(input.reader())),
        Compression::Zstd => read_capped(zstd::stream::read::Decoder::new(input.reader())?),
        Compression::Lz4 => read_capped(lz4::Decoder::new(input.reader())?),
        Compression::Snappy if input.starts_with(XERIAL_HEADER) => xerial_snappy(input),
        Compression::Snappy => {
            let mut out = Vec::new();
            append_snappy_block(&input, &mut out)?;
            Ok(out.into())
        }
    }
}

fn read_capped(reader: impl Read) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    reader
        .take(MAX_UNCOMPRESSED_BATCH_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .context("cannot decompress batch")?;
    ensure!(
        out.len() <= MAX_UNCOMPRESSED_BATCH_BYTES,
        "batch decompresses to more than {MAX_UNCOMPRESSED_BATCH_BYTES} bytes"
    );
    Ok(out.into())
}

fn xerial_snappy(mut input: Bytes) -> anyhow::Result<Bytes> {
    ensure!(input.len() >= XERIAL_HEADER_LEN, "truncated snappy stream header");
    input.advance(XERIAL_HEADER_LEN);
    let mut out = Vec::new();
    while input.has_remaining() {
        ensure!(input.remaining() >= 4, "truncated snappy block length");
        let size = input.get_u32() as usize;
        ensure!(size <= input.remaining(), "snappy block longer than the batch");
        append_snappy_block(&input.split_to(size), &mut out)?;
    }
    Ok(out.into())
}

/// Decompresses one raw snappy block onto `out`, checking its declared size first.
fn append_snappy_block(block: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let len = snap::raw::decompress_len(block).context("bad snappy block header")?;
    ensure!(
        out.len() + len <= MAX_UNCOMPRESSED_BATCH_BYTES,
        "batch decompresses to more than {MAX_UNCOMPRESSED_BATCH_BYTES} bytes"
    );
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .context("cannot decompress snappy block")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bombs_are_refused_before_they_grow() {
        let zeros = vec![0u8; MAX_UNCOMPRESSED_BATCH_BYTES + 1];
        let gzip = {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
            encoder.finish().unwrap()
        };
        assert!(gzip.len() < 1 << 20, "a small input");
        assert!(decompress(&mut Bytes::from(gzip), Compression::Gzip).is_err());
        let zstd = zstd::encode_all(&zeros[..], 3).unwrap();
        assert!(decompress(&mut Bytes::from(zstd), Compression::Zstd).is_err());
        // A raw snappy block that claims 4 GB in its header.
        let mut claim = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        claim.extend_from_slice(&[0; 16]);
        assert!(decompress(&mut Bytes::from(claim), Compression::Snappy).is_err());
    }

    #[test]
    fn snappy_framing_round_trips() {
        let block = snap::raw::Encoder::new().compress_vec(b"hello hello hello").unwrap();
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(
            &decompress(&mut Bytes::from(framed), Compression::Snappy).unwrap()[..],
            b"hello hello hello"
        );
        assert_eq!(
            &decompress(&mut Bytes::from(block), Compression::Snappy).unwrap()[..],
            b"hello hello hello"
        );
    }
}

//! Sans-io framing and (de)serialisation of Kafka requests and responses, all
//! through the `kafka-protocol` crate. Nothing here touches sockets.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{bridge, supported_versions};

/// Size of the length prefix of every frame.
const LENGTH_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: i64, max: usize },
}

/// Takes one complete frame (without its length prefix) off the front of `buf`,
/// or returns `None` until enough bytes have arrived. The size is checked before
/// any of the frame is buffered, so an absurd length never allocates.
pub fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let size = usize::try_from(size)
        .ok()
        .filter(|size| *size <= max)
        .ok_or(FrameError::TooLarge { size: size as i64, max })?;
    if buf.len() < LENGTH_PREFIX + size {
        buf.reserve(LENGTH_PREFIX + size - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(size).freeze()))
}

#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("{api_key:?} v{version} is not supported")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api_key:?} v{version}: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

pub fn decode_request(mut frame: Bytes) -> Result<Request, DecodeError> {
    // api key (2), api version (2), correlation id (4) lead every request header version.
    if frame.len() < 8 {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| DecodeError::UnknownApiKey(raw_key))?;
    let supported = supported_versions(api_key).ok_or(DecodeError::UnknownApiKey(raw_key))?;
    if version < supported.min || version > supported.max {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |reason: anyhow::Error| DecodeError::Malformed {
        api_key,
        version,
        reason: reason.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version)).map_err(malformed)?;
    let body = if bridge::needs_bridge(api_key, version) {
        bridge::decode_request(api_key, &mut frame, version)
    } else {
        RequestKind::decode(api_key, &mut frame, version)
    }
    .map_err(malformed)?;
    Ok(Request { api_key, header, body })
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, anyhow::Error> {
    let mut out = BytesMut::new();
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut out, api_key.response_header_version(version))?;
    if bridge::needs_bridge(api_key, version) {
        bridge::encode_response(api_key, version, body, &mut out)?;
    } else {
        body.encode(&mut out, version)?;
    }
    let size = i32::try_from(out.len() - LENGTH_PREFIX)?;
    out[..LENGTH_PREFIX].copy_from_slice(&size.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn request_frame(api_key: ApiKey, version: i16, body: &RequestKind) -> BytesMut {
        let mut frame = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        let mut out = BytesMut::new();
        out.put_i32(frame.len() as i32);
        out.extend_from_slice(&frame);
        out
    }

    #[test]
    fn frames_wait_for_all_bytes_and_reject_oversize() {
        let mut buf = request_frame(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        );
        let full = buf.clone();
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(take_frame(&mut partial, 1024), Ok(None));
        let frame = take_frame(&mut buf, 1024).unwrap().unwrap();
        assert!(buf.is_empty());
        let request = decode_request(frame).unwrap();
        assert_eq!(request.header.correlation_id, 7);
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(take_frame(&mut huge, 1024).is_err());
        let mut negative = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
        assert!(take_frame(&mut negative, 1024).is_err());
    }

    #[test]
    fn flexible_and_legacy_versions_decode() {
        for version in [1, 4, 9, 12] {
            let mut buf = request_frame(
                ApiKey::Metadata,
                version,
                &RequestKind::Metadata(MetadataRequest::default()),
            );
            let frame = take_frame(&mut buf, 1 << 20).unwrap().unwrap();
            let request = decode_request(frame).unwrap();
            assert!(matches!(request.body, RequestKind::Metadata(_)), "v{version}");
        }
    }

    /// Every advertised maximum decodes, and the version after it is refused
    /// before the body is read: the table is the only gate.
    #[test]
    fn every_advertised_maximum_decodes_and_the_next_version_is_refused() {
        use kafka_protocol::messages::FetchRequest;
        for (api_key, version) in [(ApiKey::Fetch, 18), (ApiKey::Metadata, 13), (ApiKey::ApiVersions, 4)] {
            let body = match api_key {
                ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
                ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
                _ => RequestKind::ApiVersions(ApiVersionsRequest::default()),
            };
            let mut buf = request_frame(api_key, version, &body);
            let frame = take_frame(&mut buf, 1 << 20).unwrap().unwrap();
            assert!(decode_request(frame).is_ok(), "{api_key:?} v{version}");
            let mut buf = request_frame(api_key, version, &body);
            buf[4 + 2..4 + 4].copy_from_slice(&(version + 1).to_be_bytes());
            let frame = take_frame(&mut buf, 1 << 20).unwrap().unwrap();
            assert!(
                matches!(decode_request(frame), Err(DecodeError::UnsupportedVersion { .. })),
                "{api_key:?} v{}",
                version + 1
            );
        }
        for (api_key, range) in crate::protocol::SUPPORTED_APIS {
            assert!(
                range.max <= api_key.valid_versions().max,
                "{api_key:?} beyond the crate"
            );
        }
    }

    #[test]
    fn rejects_unknown_keys_unsupported_versions_and_garbage() {
        let mut frame = BytesMut::from(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1][..]);
        assert!(matches!(
            decode_request(frame.split().freeze()),
            Err(DecodeError::UnknownApiKey(0x7f00))
        ));
        let mut buf = request_frame(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()));
        buf[4 + 2..4 + 4].copy_from_slice(&99i16.to_be_bytes());
        let frame = take_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(matches!(
            decode_request(frame),
            Err(DecodeError::UnsupportedVersion { correlation_id: 7, .. })
        ));
        let mut buf = request_frame(ApiKey::Metadata, 4, &RequestKind::Metadata(MetadataRequest::default()));
        let truncated = buf.split_to(buf.len() - 2).split_off(4).freeze();
        assert!(matches!(decode_request(truncated), Err(DecodeError::Malformed { .. })));
        assert!(matches!(
            decode_request(Bytes::from_static(&[1, 2, 3])),
            Err(DecodeError::TooShort(3))
        ));
    }
}

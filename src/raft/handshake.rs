//! The peer handshake, sans-io: every connection to the Raft port opens with it,
//! so that only processes that know the cluster's id and secret are served.
//!
//! ```text
//! accepting node -> Challenge { version, nonce }             (fresh random nonce)
//! dialling node  -> Hello { version, cluster_id, node_id, mac }
//!                   mac = HMAC-SHA256(secret, nonce | cluster_id | node_id as u64 big-endian)
//! accepting node -> Welcome { version }                      (or closes the connection)
//! ```
//!
//! The nonce makes a recorded Hello useless on another connection; binding the
//! cluster id and node id into the MAC keeps them from being swapped. Without a
//! configured secret the key is empty: the cluster id is still checked, which
//! keeps nodes of two clusters on one network apart, but anyone can compute the
//! MAC. Each message carries the handshake version so a later release can
//! change the exchange and still recognise (and refuse clearly) this one.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::NodeId;

/// The version of the exchange, and of the peer messages that follow it
/// (`wire.rs`), this release speaks. Version 2: leader claims carry the
/// partition's leader epoch. Version 3: leadership hand-over requests, and
/// announcements say whether the node is shutting down; a version-2 node
/// could not decode them, so it is refused at the handshake rather than
/// dropping a connection that carries every group's RPCs on the first one.
pub const HANDSHAKE_VERSION: u16 = 3;
/// Handshake frames are tiny; a larger length prefix is garbage, not a peer.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
const NONCE_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub version: u16,
    pub nonce: [u8; NONCE_BYTES],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub mac: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u16,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandshakeError {
    #[error("handshake version {0} (this node speaks {HANDSHAKE_VERSION})")]
    Version(u16),
    #[error("cluster id {found:?}, expected {expected:?}")]
    ClusterId { found: String, expected: String },
    #[error("wrong MAC from node {0}: the cluster secrets differ")]
    Mac(NodeId),
}

/// What this node proves, and checks, in every handshake.
#[derive(Clone)]
pub struct PeerCredentials {
    cluster_id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for PeerCredentials {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl PeerCredentials {
    pub fn new(cluster_id: &str, secret: Option<&str>) -> Self {
        PeerCredentials {
            cluster_id: cluster_id.to_string(),
            secret: secret.unwrap_or_default().as_bytes().to_vec(),
        }
    }

    /// A challenge with a fresh random nonce (two v4 UUIDs: 244 random bits
    /// from the operating system's generator).
    pub fn challenge() -> Challenge {
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        nonce[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Challenge {
            version: HANDSHAKE_VERSION,
            nonce,
        }
    }

    /// The dialling node's answer to `challenge`.
    pub fn hello(&self, node_id: NodeId, challenge: &Challenge) -> Result<Hello, HandshakeError> {
        if challenge.version != HANDSHAKE_VERSION {
            return Err(HandshakeError::Version(challenge.version));
        }
        Ok(Hello {
            version: HANDSHAKE_VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id,
            mac: self
                .mac(&challenge.nonce, &self.cluster_id, node_id)
                .finalize()
                .into_bytes()
                .to_vec(),
        })
    }

    /// The accepting node's check of a Hello against the challenge it sent.
    pub fn check(&self, challenge: &Challenge, hello: &Hello) -> Result<Welcome, HandshakeError> {
        if hello.version != HANDSHAKE_VERSION {
            return Err(HandshakeError::Version(hello.version));
        }
        if hello.cluster_id != self.cluster_id {
            return Err(HandshakeError::ClusterId {
                found: hello.cluster_id.clone(),
                expected: self.cluster_id.clone(),
            });
        }
        // verify_slice compares in constant time.
        self.mac(&challenge.nonce, &hello.cluster_id, hello.node_id)
            .verify_slice(&hello.mac)
            .map_err(|_| HandshakeError::Mac(hello.node_id))?;
        Ok(Welcome {
            version: HANDSHAKE_VERSION,
        })
    }

    fn mac(&self, nonce: &[u8], cluster_id: &str, node_id: NodeId) -> Hmac<Sha256> {
        // HMAC takes keys of any length, the empty one included.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(nonce);
        mac.update(cluster_id.as_bytes());
        mac.update(&node_id.to_be_bytes());
        mac
    }
}

/// The frame codec of the handshake: the peer protocol's framing with a small
/// limit, raised to the protocol's own once the peer is known.
pub fn frame_codec() -> tokio_util::codec::LengthDelimitedCodec {
    let mut codec = super::wire::frame_codec();
    codec.set_max_frame_length(MAX_HANDSHAKE_FRAME);
    codec
}

pub fn encode<T: Serialize>(message: &T) -> Result<bytes::Bytes, bincode::Error> {
    bincode::serialize(message).map(bytes::Bytes::from)
}

pub fn decode<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_secret_and_cluster_id_pass() {
        let credentials = PeerCredentials::new("c1", Some("s3cret"));
        let challenge = PeerCredentials::challenge();
        let hello = credentials.hello(2, &challenge).unwrap();
        assert_eq!(
            credentials.check(&challenge, &hello).unwrap().version,
            HANDSHAKE_VERSION
        );
        // No secret on either side: the empty key still proves the cluster id.
        let open = PeerCredentials::new("c1", None);
        assert!(open.check(&challenge, &open.hello(2, &challenge).unwrap()).is_ok());
    }

    #[test]
    fn a_wrong_secret_cluster_id_nonce_node_id_or_version_fails() {
        let ours = PeerCredentials::new("c1", Some("s3cret"));
        let challenge = PeerCredentials::challenge();
        let wrong_secret = PeerCredentials::new("c1", Some("guess")).hello(2, &challenge).unwrap();
        assert_eq!(ours.check(&challenge, &wrong_secret), Err(HandshakeError::Mac(2)));
        let no_secret = PeerCredentials::new("c1", None).hello(2, &challenge).unwrap();
        assert_eq!(ours.check(&challenge, &no_secret), Err(HandshakeError::Mac(2)));
        let other_cluster = PeerCredentials::new("c2", Some("s3cret")).hello(2, &challenge).unwrap();
        assert!(matches!(
            ours.check(&challenge, &other_cluster),
            Err(HandshakeError::ClusterId { .. })
        ));
        // A Hello recorded on one connection does not answer another's challenge.
        let replayed = ours.hello(2, &PeerCredentials::challenge()).unwrap();
        assert_eq!(ours.check(&challenge, &replayed), Err(HandshakeError::Mac(2)));
        let mut renamed = ours.hello(2, &challenge).unwrap();
        renamed.node_id = 3;
        assert_eq!(ours.check(&challenge, &renamed), Err(HandshakeError::Mac(3)));
        let mut future = ours.hello(2, &challenge).unwrap();
        future.version = HANDSHAKE_VERSION + 1;
        assert_eq!(
            ours.check(&challenge, &future),
            Err(HandshakeError::Version(HANDSHAKE_VERSION + 1))
        );
    }

    #[test]
    fn the_secret_is_not_printed() {
        let credentials = PeerCredentials::new("c1", Some("s3cret"));
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}

//! The server side of the peer protocol: accepts peers' connections on the Raft
//! address and answers their requests, each in its own task so that one slow
//! group never delays another's heartbeats.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::raft::handshake::{self, Hello, PeerCredentials};
use crate::raft::network::{read_handshake, write_frames};
use crate::raft::wire::{self, PeerRequest};
use crate::raft::NodeId;

/// Responses queued for one peer connection before request tasks wait.
const RESPONSE_QUEUE: usize = 1024;
/// A connection that has not proven itself within this long is closed: the
/// handshake is two small messages, and a silent socket must not hold a task.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve_peers(listener: TcpListener, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let credentials = Arc::new(PeerCredentials::new(
        &cluster.config().cluster_id,
        cluster.config().cluster_secret.as_deref(),
    ));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                tracing::debug!(%peer, "peer connected");
                tokio::spawn(serve_connection(
                    socket,
                    Arc::clone(&cluster),
                    Arc::clone(&credentials),
                    shutdown.child_token(),
                ));
            }
            Err(err) => {
                tracing::warn!(error = %err, "accepting a peer failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(
    socket: TcpStream,
    cluster: Arc<Cluster>,
    credentials: Arc<PeerCredentials>,
    closed: CancellationToken,
) {
    let peer = socket.peer_addr().ok();
    let remote = peer.map_or_else(|| "unknown".to_string(), |address| address.to_string());
    let (read_half, write_half) = socket.into_split();
    let mut frames = FramedRead::new(read_half, handshake::frame_codec());
    let mut sink = FramedWrite::new(write_half, wire::frame_codec());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, greet(&mut frames, &mut sink, &credentials)).await {
        Ok(Ok(node)) => tracing::debug!(%remote, node, "peer authenticated"),
        Ok(Err(reason)) => {
            tracing::warn!(%remote, %reason, "refused a peer connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused a peer connection: no handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    }
    // Past the handshake, frames may be as large as the protocol allows.
    frames.decoder_mut().set_max_frame_length(wire::MAX_FRAME_BYTES);
    let (responses, queued) = mpsc::channel(RESPONSE_QUEUE);
    tokio::spawn(write_frames(sink, queued, closed.clone()));
    loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break,
            frame = frames.next() => frame,
        };
        let envelope = match frame.map(|f| f.map(|bytes| wire::decode::<PeerRequest>(&bytes))) {
            Some(Ok(Ok(envelope))) => envelope,
            Some(Ok(Err(err))) => {
                tracing::warn!(?peer, error = %err, "undecodable peer request; closing the connection");
                break;
            }
            Some(Err(err)) => {
                tracing::warn!(?peer, error = %err, "broken peer frame; closing the connection");
                break;
            }
            None => break,
        };
        let cluster = Arc::clone(&cluster);
        let responses = responses.clone();
        tokio::spawn(async move {
            let body = cluster.answer_peer(envelope.body).await;
            match wire::encode(envelope.id, &body) {
                Ok(frame) => {
                    let _ = responses.send(frame).await;
                }
                Err(err) => tracing::error!(error = %err, "cannot encode a peer response"),
            }
        });
    }
    closed.cancel();
}

/// The accepting side of the handshake: challenge, check the answer, welcome.
/// Returns the node id the peer proved.
async fn greet(
    frames: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    sink: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    credentials: &PeerCredentials,
) -> Result<NodeId, String> {
    let challenge = PeerCredentials::challenge();
    let frame = handshake::encode(&challenge).map_err(|err| err.to_string())?;
    sink.send(frame).await.map_err(|err| err.to_string())?;
    let hello: Hello = read_handshake(frames).await?;
    let welcome = credentials.check(&challenge, &hello).map_err(|err| err.to_string())?;
    let frame = handshake::encode(&welcome).map_err(|err| err.to_string())?;
    sink.send(frame).await.map_err(|err| err.to_string())?;
    Ok(hello.node_id)
}

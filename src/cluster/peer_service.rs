//! The server side of the peer protocol: accepts peers' connections on the Raft
//! address and answers their requests, each in its own task so that one slow
//! group never delays another's heartbeats.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::raft::network::write_frames;
use crate::raft::wire::{self, PeerRequest};

/// Responses queued for one peer connection before request tasks wait.
const RESPONSE_QUEUE: usize = 1024;

pub async fn serve_peers(listener: TcpListener, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                tracing::debug!(%peer, "peer connected");
                tokio::spawn(serve_connection(socket, Arc::clone(&cluster), shutdown.child_token()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "accepting a peer failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(socket: TcpStream, cluster: Arc<Cluster>, closed: CancellationToken) {
    let peer = socket.peer_addr().ok();
    let (read_half, write_half) = socket.into_split();
    let (responses, queued) = mpsc::channel(RESPONSE_QUEUE);
    tokio::spawn(write_frames(
        FramedWrite::new(write_half, wire::frame_codec()),
        queued,
        closed.clone(),
    ));
    let mut frames = FramedRead::new(read_half, wire::frame_codec());
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

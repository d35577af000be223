//! The Kafka listener: accepts connections and serves each one with pipelined,
//! in-order responses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::protocol::codec::{decode_request, encode_response, take_frame, DecodeError};
use crate::protocol::{api_versions, handle, Broker};

/// Requests read ahead of their responses on one connection; reading pauses
/// beyond this so one client cannot queue unbounded work.
const MAX_IN_FLIGHT: usize = 64;

type PendingResponse = Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>;

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(broker.cluster.config().max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let broker = Arc::clone(&broker);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    Connection::new(socket, peer, broker).run(shutdown).await;
                });
            }
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    buffer: BytesMut,
    pending: FuturesOrdered<PendingResponse>,
}

/// Why a connection stops reading requests.
enum Closing {
    PeerClosed,
    BrokenInput(String),
}

impl Connection {
    fn new(socket: TcpStream, peer: SocketAddr, broker: Arc<Broker>) -> Self {
        let _ = socket.set_nodelay(true);
        Connection {
            socket,
            peer,
            broker,
            buffer: BytesMut::with_capacity(64 * 1024),
            pending: FuturesOrdered::new(),
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!(peer = %self.peer, "connection opened");
        let closing = tokio::select! {
            _ = shutdown.cancelled() => return,
            closing = self.serve_requests() => closing,
        };
        match closing {
            Ok(Closing::PeerClosed) => tracing::debug!(peer = %self.peer, "connection closed by peer"),
            Ok(Closing::BrokenInput(reason)) => {
                tracing::warn!(peer = %self.peer, %reason, "closing connection after bad input");
                // Earlier requests still get their answers before the close.
                let _ = self.drain().await;
            }
            Err(err) => tracing::debug!(peer = %self.peer, error = %err, "connection failed"),
        }
    }

    async fn serve_requests(&mut self) -> std::io::Result<Closing> {
        loop {
            if let Some(closing) = self.queue_complete_frames() {
                return Ok(closing);
            }
            let can_read = self.pending.len() < MAX_IN_FLIGHT;
            tokio::select! {
                Some(response) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Some(frame) = response {
                        self.socket.write_all(&frame).await?;
                    }
                }
                read = self.socket.read_buf(&mut self.buffer), if can_read => {
                    if read? == 0 {
                        self.drain().await?;
                        return Ok(Closing::PeerClosed);
                    }
                }
            }
        }
    }

    async fn drain(&mut self) -> std::io::Result<()> {
        while let Some(response) = self.pending.next().await {
            if let Some(frame) = response {
                self.socket.write_all(&frame).await?;
            }
        }
        Ok(())
    }

    /// Decodes every complete frame in the buffer and queues its handler.
    fn queue_complete_frames(&mut self) -> Option<Closing> {
        loop {
            let frame = match take_frame(&mut self.buffer, self.broker.cluster.config().socket_request_max_bytes) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(err) => return Some(Closing::BrokenInput(err.to_string())),
            };
            match decode_request(frame) {
                Ok(request) => {
                    let api_key = request.api_key;
                    let version = request.header.request_api_version;
                    let correlation_id = request.header.correlation_id;
                    let span = tracing::debug_span!("request", api = ?api_key, version, correlation_id);
                    let broker = Arc::clone(&self.broker);
                    let peer = self.peer;
                    self.pending.push_back(Box::pin(
                        async move {
                            let body = handle(broker, peer, request).await?;
                            encode(api_key, version, correlation_id, &body)
                        }
                        .instrument(span),
                    ));
                }
                Err(DecodeError::UnsupportedVersion {
                    api_key: ApiKey::ApiVersions,
                    version,
                    correlation_id,
                }) => {
                    tracing::info!(peer = %self.peer, version, "ApiVersions version not supported; answering with v0");
                    let body = ResponseKind::ApiVersions(api_versions::unsupported_version());
                    let frame = encode(ApiKey::ApiVersions, 0, correlation_id, &body);
                    self.pending.push_back(Box::pin(async move { frame }));
                }
                Err(err) => return Some(Closing::BrokenInput(err.to_string())),
            }
        }
    }
}

fn encode(api_key: ApiKey, version: i16, correlation_id: i32, body: &ResponseKind) -> Option<Bytes> {
    match encode_response(api_key, version, correlation_id, body) {
        Ok(frame) => Some(frame),
        Err(err) => {
            tracing::error!(api = ?api_key, version, error = %err, "cannot encode response");
            None
        }
    }
}

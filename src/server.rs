//! The Kafka listener: accepts connections and serves each one with pipelined,
//! in-order responses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::{RequestMeter, METRICS};
use crate::protocol::codec::{decode_request, encode_response, take_frame, DecodeError};
use crate::protocol::error_codes::for_each_error_code;
use crate::protocol::{api_versions, handle, Broker, Reply, SUPPORTED_APIS};

/// Requests read ahead of their responses on one connection; reading pauses
/// beyond this so one client cannot queue unbounded work.
const MAX_IN_FLIGHT: usize = 64;
/// How long a shutdown waits for connections to answer the requests they had
/// read: a produce waits for its commit, a fetch at most its max_wait_ms.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type PendingResponse = Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// What a queued request ends in, in request order.
enum Outcome {
    Frame(Bytes),
    Nothing,
    /// Close the connection (see [`Reply::Close`]): the answers queued before
    /// it are written, the requests after it are dropped, as when Kafka closes.
    Close,
}

/// Accepts connections until `shutdown` is cancelled, then waits (up to
/// [`DRAIN_TIMEOUT`]) until every connection has answered the requests it had
/// read: a request in flight when the node stops is answered, not dropped,
/// so a client does not resend a write that had committed.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: CancellationToken) {
    let connections = broker.cluster.config().max_connections;
    let limit = Arc::new(Semaphore::new(connections));
    let budget = RequestBudget::new(broker.cluster.config().queued_max_request_bytes);
    let meters = Arc::new(RequestMeters::new());
    while let Some((socket, peer, permit)) = next_connection(&listener, &limit, &shutdown, "kafka").await {
        let broker = Arc::clone(&broker);
        let meters = Arc::clone(&meters);
        let budget = budget.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = METRICS.connection_opened();
            Connection::new(socket, peer, broker, meters, budget)
                .run(shutdown)
                .await;
        });
    }
    drop(listener);
    let all_closed = limit.acquire_many(u32::try_from(connections).unwrap_or(u32::MAX));
    if tokio::time::timeout(DRAIN_TIMEOUT, all_closed).await.is_err() {
        tracing::warn!("connections still busy after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// The request bytes every connection together may hold (`queued_max_request_bytes`).
#[derive(Clone)]
struct RequestBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl RequestBudget {
    fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        RequestBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Permits for a frame of `size` bytes: a frame larger than the whole
    /// budget takes all of it (and waits for it), rather than never running.
    fn permits(&self, size: usize) -> u32 {
        size.min(self.total).min(u32::MAX as usize) as u32
    }
}

/// Waits for a free connection slot of `limit`, then for the next connection;
/// `None` once `shutdown` is cancelled. The Kafka and the admin listener share it.
pub async fn next_connection(
    listener: &TcpListener,
    limit: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    name: &str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        permit = Arc::clone(limit).acquire_owned() => permit.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => return Some((socket, peer, permit)),
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The metric handles of every supported API, indexed by api key, resolved
/// once so that a request costs a counter add and a histogram observation.
struct RequestMeters {
    by_key: Vec<Option<RequestMeter>>,
}

impl RequestMeters {
    fn new() -> Self {
        let mut by_key = Vec::new();
        for (api_key, _) in SUPPORTED_APIS {
            let index = *api_key as usize;
            if by_key.len() <= index {
                by_key.resize(index + 1, None);
            }
            by_key[index] = Some(METRICS.request_meter(*api_key));
        }
        RequestMeters { by_key }
    }

    fn record(&self, api_key: ApiKey, started: Instant, response: Option<&ResponseKind>) {
        if let Some(Some(meter)) = self.by_key.get(api_key as usize) {
            let mut codes = Vec::new();
            if let Some(response) = response {
                for_each_error_code(response, |code| codes.push(code));
            }
            meter.record(started.elapsed(), codes);
        }
    }
}

struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    meters: Arc<RequestMeters>,
    buffer: BytesMut,
    pending: FuturesOrdered<PendingResponse>,
    budget: RequestBudget,
    /// The budget held for the frame at the head of `buffer`, taken as soon as
    /// its length is known (before the buffer grows to hold it) and kept until
    /// the request is answered.
    reserved: Option<OwnedSemaphorePermit>,
}

/// What a connection does next once its complete frames are queued.
enum Next {
    Close(Closing),
    /// Read more bytes from the socket.
    Read,
    /// Wait for this many budget permits before reading on.
    Reserve(u32),
}

/// Why a connection stops reading requests.
enum Closing {
    PeerClosed,
    BrokenInput(String),
    /// A handler asked for it ([`Reply::Close`]).
    Requested,
    /// The node is shutting down: every request read was answered.
    ShuttingDown,
}

impl Connection {
    fn new(
        socket: TcpStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        meters: Arc<RequestMeters>,
        budget: RequestBudget,
    ) -> Self {
        let _ = socket.set_nodelay(true);
        Connection {
            socket,
            peer,
            broker,
            meters,
            buffer: BytesMut::with_capacity(64 * 1024),
            pending: FuturesOrdered::new(),
            budget,
            reserved: None,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!(peer = %self.peer, "connection opened");
        match self.serve_requests(&shutdown).await {
            Ok(Closing::PeerClosed) => tracing::debug!(peer = %self.peer, "connection closed by peer"),
            Ok(Closing::BrokenInput(reason)) => {
                tracing::warn!(peer = %self.peer, %reason, "closing connection after bad input");
                // Earlier requests still get their answers before the close.
                let _ = self.drain().await;
            }
            Ok(Closing::Requested) => tracing::debug!(peer = %self.peer, "connection closed as a handler asked"),
            Ok(Closing::ShuttingDown) => tracing::debug!(peer = %self.peer, "connection closed for shutdown"),
            Err(err) => tracing::debug!(peer = %self.peer, error = %err, "connection failed"),
        }
    }

    /// Reads and answers requests until the connection closes; once
    /// `shutdown` fires, stops reading and returns when the requests already
    /// read are answered.
    async fn serve_requests(&mut self, shutdown: &CancellationToken) -> std::io::Result<Closing> {
        loop {
            if shutdown.is_cancelled() {
                self.drain().await?;
                return Ok(Closing::ShuttingDown);
            }
            let next = self.queue_complete_frames();
            let wanted = match next {
                Next::Close(closing) => return Ok(closing),
                Next::Read => None,
                Next::Reserve(permits) => Some(permits),
            };
            let can_read = wanted.is_none() && self.pending.len() < MAX_IN_FLIGHT;
            let budget = Arc::clone(&self.budget.bytes);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => {
                    match outcome {
                        Outcome::Frame(frame) => self.socket.write_all(&frame).await?,
                        Outcome::Nothing => {}
                        Outcome::Close => return Ok(Closing::Requested),
                    }
                }
                reserved = budget.acquire_many_owned(wanted.unwrap_or(0)), if wanted.is_some() => {
                    self.reserved = reserved.ok();
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
        while let Some(outcome) = self.pending.next().await {
            match outcome {
                Outcome::Frame(frame) => self.socket.write_all(&frame).await?,
                Outcome::Nothing => {}
                Outcome::Close => break,
            }
        }
        Ok(())
    }

    /// Decodes every complete frame in the buffer and queues its handler.
    fn queue_complete_frames(&mut self) -> Next {
        loop {
            if self.reserved.is_none() {
                let Some(size) = frame_size(&self.buffer) else {
                    return Next::Read;
                };
                let permits = self.budget.permits(size);
                match Arc::clone(&self.budget.bytes).try_acquire_many_owned(permits) {
                    Ok(reserved) => self.reserved = Some(reserved),
                    Err(_) => return Next::Reserve(permits),
                }
            }
            let frame = match take_frame(&mut self.buffer, self.broker.cluster.config().socket_request_max_bytes) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Next::Read,
                Err(err) => return Next::Close(Closing::BrokenInput(err.to_string())),
            };
            let reserved = self.reserved.take();
            match decode_request(frame) {
                Ok(request) => {
                    let api_key = request.api_key;
                    let version = request.header.request_api_version;
                    let correlation_id = request.header.correlation_id;
                    let span = tracing::debug_span!("request", api = ?api_key, version, correlation_id);
                    let broker = Arc::clone(&self.broker);
                    let meters = Arc::clone(&self.meters);
                    let peer = self.peer;
                    self.pending.push_back(Box::pin(
                        async move {
                            let _reserved = reserved;
                            let started = Instant::now();
                            let reply = handle(broker, peer, request).await;
                            meters.record(api_key, started, reply.response());
                            match reply {
                                Reply::Send(body) => encode(api_key, version, correlation_id, &body),
                                Reply::Silent(_) => Outcome::Nothing,
                                Reply::Close(_) => Outcome::Close,
                            }
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
                Err(err) => return Next::Close(Closing::BrokenInput(err.to_string())),
            }
        }
    }
}

/// The length a frame at the head of `buffer` announces, once its prefix is
/// there; a negative one counts as empty (`take_frame` refuses it).
fn frame_size(buffer: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buffer.get(..4)?.try_into().ok()?;
    Some(usize::try_from(i32::from_be_bytes(prefix)).unwrap_or(0))
}

fn encode(api_key: ApiKey, version: i16, correlation_id: i32, body: &ResponseKind) -> Outcome {
    match encode_response(api_key, version, correlation_id, body) {
        Ok(frame) => Outcome::Frame(frame),
        Err(err) => {
            tracing::error!(api = ?api_key, version, error = %err, "cannot encode response");
            Outcome::Nothing
        }
    }
}

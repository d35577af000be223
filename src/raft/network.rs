//! Raft RPC transport, client side: one multiplexed TCP connection from this
//! node to each peer carries the requests of every group (tagged by group id);
//! responses are matched to requests by id, so a slow snapshot chunk never
//! holds up another group's heartbeat. Requests wait in two lanes: votes and
//! heartbeats (the control lane) are written before any queued entries or
//! snapshot chunks, and a request whose caller gave up is dropped unsent. A
//! broken connection is re-dialled on the next request, with exponential
//! backoff while the peer stays unreachable.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::handshake::{self, Challenge, PeerCredentials, Welcome};
use super::wire::{self, PeerRequest, PeerResponse};
use super::{GroupId, NodeId, TypeConfig};
use crate::metrics::METRICS;

const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A connection with requests outstanding that has received nothing for this
/// long is presumed dead: heartbeats alone answer several times within it.
const SILENT_CONNECTION: Duration = Duration::from_secs(2);
/// Frames queued in each lane to one peer before senders wait.
const OUTGOING_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("connection to peer {0} lost: {1}")]
    Broken(NodeId, String),
    #[error("peer {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    #[error("node {0} is not a member this node knows an address for")]
    UnknownPeer(NodeId),
}

/// Connections from this node to every peer, by the addresses in this node's configuration.
pub struct Peers {
    node_id: NodeId,
    credentials: PeerCredentials,
    addresses: BTreeMap<NodeId, String>,
    links: SyncMutex<HashMap<NodeId, Arc<PeerClient>>>,
}

impl Peers {
    pub fn new(node_id: NodeId, credentials: PeerCredentials, addresses: BTreeMap<NodeId, String>) -> Arc<Self> {
        Arc::new(Peers {
            node_id,
            credentials,
            addresses,
            links: SyncMutex::new(HashMap::new()),
        })
    }

    fn client(&self, peer: NodeId) -> Result<Arc<PeerClient>, CallError> {
        let address = self.addresses.get(&peer).ok_or(CallError::UnknownPeer(peer))?;
        let mut links = self.links.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Arc::clone(links.entry(peer).or_insert_with(|| {
            Arc::new(PeerClient::new(
                self.node_id,
                self.credentials.clone(),
                peer,
                address.clone(),
            ))
        })))
    }

    pub async fn call(
        &self,
        peer: NodeId,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        self.client(peer)?.call(request, timeout).await
    }

    /// Whether the last attempt to connect to `peer` was refused or timed out
    /// (its process is gone, or the network to it is): known within one
    /// heartbeat or announcement of a peer's death, long before an election.
    pub fn unreachable(&self, peer: NodeId) -> bool {
        let links = self.links.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        links
            .get(&peer)
            .is_some_and(|client| client.unreachable.load(Ordering::Relaxed))
    }
}

/// A client for one peer address. Also used by the admin tools, which are not nodes.
pub struct PeerClient {
    /// Who this client says it is in the handshake (the admin tools say 0).
    from: NodeId,
    credentials: PeerCredentials,
    peer: NodeId,
    address: String,
    next_id: AtomicU64,
    link: Mutex<LinkState>,
    /// Mirrors `LinkState::unreachable` for readers that cannot wait on the link's lock.
    unreachable: AtomicBool,
}

#[derive(Default)]
struct LinkState {
    connection: Option<Connection>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The last dial failed: logged once per outage, not once per RPC.
    unreachable: bool,
}

/// The callers waiting for an answer, by request id.
type Pending = Arc<SyncMutex<HashMap<u64, oneshot::Sender<PeerResponse>>>>;

#[derive(Clone)]
struct Connection {
    control: mpsc::Sender<(u64, Bytes)>,
    data: mpsc::Sender<(u64, Bytes)>,
    pending: Pending,
    closed: CancellationToken,
    last_heard: Arc<SyncMutex<Instant>>,
}

impl Connection {
    fn silent_for(&self) -> Duration {
        lock(&self.last_heard).elapsed()
    }
}

impl PeerClient {
    pub fn new(from: NodeId, credentials: PeerCredentials, peer: NodeId, address: String) -> Self {
        PeerClient {
            from,
            credentials,
            peer,
            address,
            next_id: AtomicU64::new(1),
            link: Mutex::new(LinkState::default()),
            unreachable: AtomicBool::new(false),
        }
    }

    pub async fn call(&self, request: &PeerRequest, timeout: Duration) -> Result<PeerResponse, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode(id, request).map_err(|err| CallError::Broken(self.peer, err.to_string()))?;
        let connection = self.connection().await?;
        let (answer, answered) = oneshot::channel();
        lock(&connection.pending).insert(id, answer);
        METRICS.peer_request_sent(request.kind());
        let lane = match request.is_control() {
            true => &connection.control,
            false => &connection.data,
        };
        let exchange = async {
            if lane.send((id, frame)).await.is_err() {
                return Err(CallError::Broken(self.peer, "writer stopped".into()));
            }
            answered
                .await
                .map_err(|_| CallError::Broken(self.peer, "connection closed".into()))
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        lock(&connection.pending).remove(&id);
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // A peer that vanished without closing the socket (power loss, a
                // black-holing network) leaves a connection that never answers
                // again; one that merely answers slowly keeps its connection.
                if connection.silent_for() >= SILENT_CONNECTION {
                    connection.closed.cancel();
                }
                Err(CallError::Timeout(self.peer, timeout))
            }
        }
    }

    /// The live connection, dialling a new one unless the last dial failed too recently.
    async fn connection(&self) -> Result<Connection, CallError> {
        let mut link = self.link.lock().await;
        if let Some(connection) = link.connection.as_ref().filter(|c| !c.closed.is_cancelled()) {
            return Ok(connection.clone());
        }
        link.connection = None;
        if link.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(CallError::Unreachable(
                self.peer,
                "backing off after a failed dial".into(),
            ));
        }
        match self.dial().await {
            Ok(connection) => {
                link.retry_at = None;
                link.backoff = MIN_BACKOFF;
                if std::mem::take(&mut link.unreachable) {
                    tracing::info!(peer = self.peer, address = %self.address, "peer reachable again");
                }
                link.connection = Some(connection.clone());
                self.unreachable.store(false, Ordering::Relaxed);
                Ok(connection)
            }
            Err(reason) => {
                link.backoff = (link.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                link.retry_at = Some(Instant::now() + link.backoff);
                self.unreachable.store(true, Ordering::Relaxed);
                if !std::mem::replace(&mut link.unreachable, true) {
                    tracing::warn!(peer = self.peer, address = %self.address, %reason, "peer unreachable; redialling with backoff");
                }
                Err(CallError::Unreachable(self.peer, format!("{}: {reason}", self.address)))
            }
        }
    }
}

impl PeerClient {
    /// Connects and introduces this node (see `handshake.rs`), each step within
    /// [`DIAL_TIMEOUT`]: a listener that accepts and then says nothing is as
    /// unreachable as one that refuses.
    async fn dial(&self) -> Result<Connection, String> {
        let socket = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&self.address)).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err("dial timed out".into()),
        };
        let _ = socket.set_nodelay(true);
        let (read_half, write_half) = socket.into_split();
        let mut frames = FramedRead::new(read_half, handshake::frame_codec());
        let mut sink = FramedWrite::new(write_half, wire::frame_codec());
        tokio::time::timeout(DIAL_TIMEOUT, self.introduce(&mut frames, &mut sink))
            .await
            .map_err(|_| "no handshake answer".to_string())??;
        // Past the handshake, frames may be as large as the protocol allows.
        frames.decoder_mut().set_max_frame_length(wire::MAX_FRAME_BYTES);
        Ok(start_connection(frames, sink))
    }

    async fn introduce(
        &self,
        frames: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
        sink: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    ) -> Result<(), String> {
        let challenge: Challenge = read_handshake(frames).await?;
        let hello = self
            .credentials
            .hello(self.from, &challenge)
            .map_err(|err| err.to_string())?;
        let frame = handshake::encode(&hello).map_err(|err| err.to_string())?;
        sink.send(frame).await.map_err(|err| err.to_string())?;
        let _: Welcome = read_handshake(frames)
            .await
            .map_err(|reason| format!("handshake refused ({reason}): do the cluster id and secret match?"))?;
        Ok(())
    }
}

/// Reads one handshake message.
pub async fn read_handshake<R, T>(frames: &mut FramedRead<R, LengthDelimitedCodec>) -> Result<T, String>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match frames.next().await {
        Some(Ok(frame)) => handshake::decode(&frame).map_err(|err| format!("undecodable handshake message: {err}")),
        Some(Err(err)) => Err(format!("broken handshake frame: {err}")),
        None => Err("connection closed".into()),
    }
}

fn lock<T>(mutex: &SyncMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_connection(
    frames: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    sink: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
) -> Connection {
    let (control, control_queue) = mpsc::channel(OUTGOING_QUEUE);
    let (data, data_queue) = mpsc::channel(OUTGOING_QUEUE);
    let connection = Connection {
        control,
        data,
        pending: Arc::default(),
        closed: CancellationToken::new(),
        last_heard: Arc::new(SyncMutex::new(Instant::now())),
    };
    let lanes = RequestLanes {
        control: control_queue,
        data: data_queue,
        pending: Arc::clone(&connection.pending),
    };
    tokio::spawn(write_frames(sink, lanes, connection.closed.clone()));
    tokio::spawn(read_responses(frames, connection.clone()));
    connection
}

/// Where a connection's writer takes its frames from.
pub trait FrameQueue: Send {
    /// The next frame to write, waiting for one; `None` once no more can come.
    fn next(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
    /// The next frame already queued, if any.
    fn try_next(&mut self) -> Option<Bytes>;
}

impl FrameQueue for mpsc::Receiver<Bytes> {
    async fn next(&mut self) -> Option<Bytes> {
        self.recv().await
    }

    fn try_next(&mut self) -> Option<Bytes> {
        self.try_recv().ok()
    }
}

/// A connection's two request lanes: control before data, and only requests
/// someone still waits for.
struct RequestLanes {
    control: mpsc::Receiver<(u64, Bytes)>,
    data: mpsc::Receiver<(u64, Bytes)>,
    pending: Pending,
}

impl RequestLanes {
    fn wanted(&self, (id, frame): (u64, Bytes)) -> Option<Bytes> {
        lock(&self.pending).contains_key(&id).then_some(frame)
    }
}

impl FrameQueue for RequestLanes {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let request = tokio::select! {
                biased;
                request = self.control.recv() => request,
                request = self.data.recv() => request,
            }?;
            if let Some(frame) = self.wanted(request) {
                return Some(frame);
            }
        }
    }

    fn try_next(&mut self) -> Option<Bytes> {
        while let Some(request) = self.control.try_recv().ok().or_else(|| self.data.try_recv().ok()) {
            if let Some(frame) = self.wanted(request) {
                return Some(frame);
            }
        }
        None
    }
}

/// Writes queued frames, flushing once per burst rather than once per frame.
pub async fn write_frames<W, Q>(
    mut sink: FramedWrite<W, tokio_util::codec::LengthDelimitedCodec>,
    mut queued: Q,
    closed: CancellationToken,
) where
    W: tokio::io::AsyncWrite + Unpin,
    Q: FrameQueue,
{
    loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break,
            frame = queued.next() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let mut written = sink.feed(frame).await;
        while let (Ok(()), Some(more)) = (&written, queued.try_next()) {
            written = sink.feed(more).await;
        }
        if written.is_err() || SinkExt::<Bytes>::flush(&mut sink).await.is_err() {
            break;
        }
    }
    closed.cancel();
}

async fn read_responses<R>(mut frames: FramedRead<R, tokio_util::codec::LengthDelimitedCodec>, connection: Connection)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let Connection {
        pending,
        closed,
        last_heard,
        ..
    } = connection;
    loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break,
            frame = frames.next() => frame,
        };
        let Some(Ok(frame)) = frame else { break };
        *lock(&last_heard) = Instant::now();
        let Ok(envelope) = wire::decode::<PeerResponse>(&frame) else {
            tracing::warn!("undecodable response from a peer; dropping the connection");
            break;
        };
        if let Some(waiter) = lock(&pending).remove(&envelope.id) {
            let _ = waiter.send(envelope.body);
        }
    }
    closed.cancel();
    // Dropping the waiters tells every caller the connection is gone.
    lock(&pending).clear();
}

/// openraft's network factory for one group: every group shares the node's [`Peers`].
#[derive(Clone)]
pub struct GroupNetwork {
    group: GroupId,
    peers: Arc<Peers>,
}

impl GroupNetwork {
    pub fn new(group: GroupId, peers: Arc<Peers>) -> Self {
        GroupNetwork { group, peers }
    }
}

pub struct PeerLink {
    group: GroupId,
    target: NodeId,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerLink {
        PeerLink {
            group: self.group,
            target,
            peers: Arc::clone(&self.peers),
        }
    }
}

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl PeerLink {
    async fn call<E: std::error::Error>(
        &self,
        request: PeerRequest,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, BasicNode, E>> {
        let ttl = option.hard_ttl();
        match self.peers.call(self.target, &request, ttl).await {
            Ok(PeerResponse::GroupNotHere) => Err(unreachable(format!(
                "group {} is not running on node {}",
                self.group, self.target
            ))),
            Ok(response) => Ok(response),
            Err(CallError::Timeout(..)) => Err(RPCError::Timeout(Timeout {
                action,
                id: 0,
                target: self.target,
                timeout: ttl,
            })),
            Err(err @ CallError::Broken(..)) => Err(RPCError::Network(NetworkError::new(&err))),
            Err(err) => Err(unreachable(err.to_string())),
        }
    }

    // The error type is the one openraft's network trait returns.
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(
        &self,
        answer: Result<T, RaftError<NodeId, E>>,
    ) -> RpcResult<T, RaftError<NodeId, E>> {
        answer.map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

fn unreachable<E: std::error::Error>(reason: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(reason)))
}

fn unexpected<E: std::error::Error>(response: &PeerResponse) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!(
        "unexpected peer response {response:?}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let request = PeerRequest::AppendEntries { group: self.group, rpc };
        match self.call(request, RPCTypes::AppendEntries, &option).await? {
            PeerResponse::AppendEntries(answer) => self.remote(answer),
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let request = PeerRequest::InstallSnapshot { group: self.group, rpc };
        match self.call(request, RPCTypes::InstallSnapshot, &option).await? {
            PeerResponse::InstallSnapshot(answer) => self.remote(answer),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let request = PeerRequest::Vote { group: self.group, rpc };
        match self.call(request, RPCTypes::Vote, &option).await? {
            PeerResponse::Vote(answer) => self.remote(answer),
            other => Err(unexpected(&other)),
        }
    }
}

//! Node-to-node transport: request/response frames over TCP with mutual TLS 1.3.
//! Each frame is a kind byte, a 4-byte big-endian length, then the bytes. The server
//! learns who is calling from the peer's certificate — never from anything the peer
//! says — and the client checks that the server's certificate names the node it meant
//! to reach.
//!
//! Frames are opaque bytes here; the layers above decide what they mean, which kinds
//! exist, how large each kind may be ([`Handler::max_request`]) and who may speak at
//! all ([`Handler::refusal`]).
//!
//! What an attacker with network access, or with one valid certificate, can cost an
//! agent is bounded by [`Limits`]: concurrent TLS handshakes (in total and per source
//! address), a handshake deadline, established connections per peer (the oldest is
//! closed), an idle deadline between requests and a deadline per frame, TCP
//! keepalive, and a budget for the bytes of large frames being read at once.
//!
//! **Architecture Invariant:** knows nothing of Raft, specs or agents.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// Largest frame of any kind, and the largest reply a client reads.
pub const MAX_FRAME: usize = 64 << 20;

/// Frames up to this size are read without taking from [`Limits::large_frame_budget`].
const SMALL_FRAME: usize = 256 << 10;

/// How long a client may take to connect and finish its TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A client drops a pooled connection unused for this long and opens a fresh one,
/// well before the server's idle deadline ends it from the other side.
const CLIENT_IDLE: Duration = Duration::from_secs(30);

type ClientConn = (tokio_rustls::client::TlsStream<TcpStream>, Instant);
/// A peer's name and address.
type PeerKey = (String, SocketAddr);

/// Connections shared by the [`PeerClient`]s made with it (see
/// [`PeerClient::with_pool`]), by peer: a handshake whose caller gave up — Raft drops
/// a vote request at its election timeout, and makes a new client for every
/// election — still completes and lands here, for the next client to that peer.
/// Without that, a handshake slower than the election timeout (a loaded machine) was
/// abandoned in every round, and no node could ever win a vote.
#[derive(Clone, Debug, Default)]
pub struct ConnectionPool(Arc<Mutex<BTreeMap<PeerKey, Vec<ClientConn>>>>);

impl ConnectionPool {
    fn take(&self, key: &PeerKey) -> Option<ClientConn> {
        let mut idle = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = idle.get_mut(key)?;
        conns.retain(|(conn, used)| used.elapsed() <= CLIENT_IDLE && still_open(conn));
        conns.pop()
    }

    fn put(&self, key: PeerKey, conn: ClientConn) {
        let mut idle = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = idle.entry(key).or_default();
        // A few per peer: abandoned handshakes of the last rounds at most.
        if conns.len() < 4 {
            conns.push(conn);
        }
    }

    fn clear(&self, key: &PeerKey) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// How many idle connections the pool holds (all peers).
    #[must_use]
    pub fn idle(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Whether an idle connection can carry a request: nothing to read on it (no request
/// is outstanding), no end of stream. A peer that crashed or restarted has closed it.
fn still_open(conn: &tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.get_ref().0.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The addresses of the cluster's members. Handshakes from them never wait behind
/// strangers' (they have slots of their own); the layer above keeps the set current.
#[derive(Clone, Debug, Default)]
pub struct KnownAddresses(Arc<std::sync::RwLock<std::collections::BTreeSet<IpAddr>>>);

impl KnownAddresses {
    /// Replaces the set.
    pub fn set(&self, addresses: std::collections::BTreeSet<IpAddr>) {
        if let Ok(mut known) = self.0.write() {
            if *known != addresses {
                *known = addresses;
            }
        }
    }

    /// True for a member's address.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.read().is_ok_and(|known| known.contains(&ip))
    }
}

/// What one agent grants its callers. The defaults suit a cluster of up to a few
/// dozen nodes; every node opens well under ten connections to each other.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TLS handshakes in progress at once from addresses that are not members';
    /// more are closed at once.
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from members' addresses, counted apart so
    /// that a flood from elsewhere cannot keep members out.
    pub max_member_handshakes: usize,
    /// TLS handshakes in progress at once from one source address that is not a
    /// member's.
    pub max_handshakes_per_address: usize,
    /// Established connections per peer node; a new one closes that peer's oldest
    /// (a restarted node's half-open connections never lock it out).
    pub max_connections_per_peer: usize,
    /// Time allowed for a TLS handshake (a client gives up after 2 s anyway).
    pub handshake_timeout: Duration,
    /// An established connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Once a frame's header arrived, its bytes must arrive within this.
    pub frame_timeout: Duration,
    /// Bytes of frames larger than 256 KiB being read or handled at once, over all
    /// connections: a frame that does not fit waits for others to finish.
    pub large_frame_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            max_member_handshakes: 64,
            max_handshakes_per_address: 16,
            max_connections_per_peer: 32,
            handshake_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(30),
            large_frame_budget: 160 << 20,
        }
    }
}

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Could not connect or the connection broke.
    #[error("{peer}: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{peer}: timed out after {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The time allowed.
        after: Duration,
    },
    /// A frame larger than allowed.
    #[error("{peer}: frame of {len} bytes exceeds the limit")]
    TooLarge {
        /// The peer.
        peer: String,
        /// The announced length.
        len: usize,
    },
    /// The peer speaks no protocol version this node speaks.
    #[error("{peer} speaks no quorate protocol version in common with this node ({ours}): upgrade nodes one minor version at a time; its own log names its version")]
    Incompatible {
        /// The peer.
        peer: String,
        /// The versions this node speaks.
        ours: String,
    },
    /// Traffic to this peer is cut (sandbox `partition`).
    #[error("{peer}: traffic is blocked (partitioned)")]
    Blocked {
        /// The peer.
        peer: String,
    },
}

fn io_error(peer: &str) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |source| NetError::Io {
        peer: peer.to_string(),
        source,
    }
}

/// Reads `len` bytes into a buffer of exactly that size (large frames are paid for
/// from [`Limits::large_frame_budget`] before this).
async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    len: usize,
    peer: &str,
) -> Result<Vec<u8>, NetError> {
    let mut buf = Vec::with_capacity(len);
    let read = (&mut *s)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(io_error(peer))?;
    if read < len {
        return Err(NetError::Io {
            peer: peer.to_string(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(buf)
}

async fn read_reply<S: AsyncRead + Unpin>(s: &mut S, peer: &str) -> Result<Vec<u8>, NetError> {
    let len = s.read_u32().await.map_err(io_error(peer))? as usize;
    if len > MAX_FRAME {
        return Err(NetError::TooLarge {
            peer: peer.to_string(),
            len,
        });
    }
    read_body(s, len, peer).await
}

fn frame_len(bytes: &[u8], peer: &str) -> Result<u32, NetError> {
    u32::try_from(bytes.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| NetError::TooLarge {
            peer: peer.to_string(),
            len: bytes.len(),
        })
}

async fn write_request<S: AsyncWrite + Unpin>(
    s: &mut S,
    kind: u8,
    bytes: &[u8],
    peer: &str,
) -> Result<(), NetError> {
    let len = frame_len(bytes, peer)?;
    let mut header = [0_u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&len.to_be_bytes());
    s.write_all(&header).await.map_err(io_error(peer))?;
    s.write_all(bytes).await.map_err(io_error(peer))?;
    s.flush().await.map_err(io_error(peer))
}

async fn write_reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    peer: &str,
) -> Result<(), NetError> {
    let len = frame_len(bytes, peer)?;
    s.write_u32(len).await.map_err(io_error(peer))?;
    s.write_all(bytes).await.map_err(io_error(peer))?;
    s.flush().await.map_err(io_error(peer))
}

/// A switch that cuts all peer traffic of this node both ways (the sandbox's
/// `partition` fault): the server drops connections, the client refuses to send.
#[derive(Clone, Debug, Default)]
pub struct Partition(Arc<AtomicBool>);

impl Partition {
    /// True while traffic is cut.
    #[must_use]
    pub fn is_cut(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Cuts or restores traffic.
    pub fn set(&self, cut: bool) {
        self.0.store(cut, Ordering::Relaxed);
    }
}

/// Answers requests from authenticated peers.
pub trait Handler: Send + Sync + 'static {
    /// The largest request of `kind` this handler takes; 0 for a kind it does not know.
    /// A larger frame closes the connection before its bytes are read.
    fn max_request(&self, kind: u8) -> usize;

    /// `None` when `peer` (the node its certificate names) may speak now; otherwise
    /// the reply to send before the connection is closed. Asked before each request's
    /// bytes are read.
    fn refusal(&self, peer: &str) -> Option<Vec<u8>>;

    /// Called once per connection after a successful handshake, with the identity its
    /// certificate carries (e.g. to watch peers' certificate expiry).
    fn connected(&self, _identity: &quorate_pki::PeerIdentity) {}

    /// Handles one request of `kind` from `peer`.
    fn handle(
        &self,
        peer: String,
        kind: u8,
        request: Vec<u8>,
    ) -> impl Future<Output = Vec<u8>> + Send;
}

/// Warns at most once a minute per key, so that a flood cannot flood the log too.
#[derive(Debug, Default)]
struct Quiet(Mutex<BTreeMap<String, Instant>>);

/// Warnings of this process's clients, at most once a minute per key.
static CLIENT_WARNINGS: Quiet = Quiet(Mutex::new(BTreeMap::new()));

impl Quiet {
    fn allow(&self, key: &str) -> bool {
        let Ok(mut last) = self.0.lock() else {
            return true;
        };
        let now = Instant::now();
        if last.len() > 1024 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
        }
        match last.get(key) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}

/// Handshakes in progress per source address; the count drops with the guard.
#[derive(Debug, Default)]
struct PerAddress(Mutex<BTreeMap<IpAddr, usize>>);

struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut table = self.0.lock().ok()?;
        let count = table.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut table) = self.table.0.lock() {
            if let Some(count) = table.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    table.remove(&self.ip);
                }
            }
        }
    }
}

/// One established connection: its id and the switch that closes it.
type OpenConnection = (u64, Arc<tokio::sync::Notify>);

/// Established connections per peer, oldest first; a connection is closed by
/// notifying it.
#[derive(Debug, Default)]
struct PerPeer {
    next: AtomicU64,
    open: Mutex<BTreeMap<String, VecDeque<OpenConnection>>>,
}

struct PeerSlot {
    table: Arc<PerPeer>,
    peer: String,
    id: u64,
    closed: Arc<tokio::sync::Notify>,
}

impl PerPeer {
    /// Registers a connection of `peer`, closing its oldest beyond `max`.
    fn register(self: &Arc<Self>, peer: &str, max: usize) -> PeerSlot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut open) = self.open.lock() {
            let list = open.entry(peer.to_string()).or_default();
            list.push_back((id, closed.clone()));
            while list.len() > max.max(1) {
                if let Some((_, oldest)) = list.pop_front() {
                    oldest.notify_one();
                }
            }
        }
        PeerSlot {
            table: self.clone(),
            peer: peer.to_string(),
            id,
            closed,
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock() {
            if let Some(list) = open.get_mut(&self.peer) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    open.remove(&self.peer);
                }
            }
        }
    }
}

/// What a server shares between its connections.
struct Shared<H> {
    handler: Arc<H>,
    partition: Partition,
    limits: Limits,
    handshakes: Arc<Semaphore>,
    member_handshakes: Arc<Semaphore>,
    known: KnownAddresses,
    per_address: Arc<PerAddress>,
    per_peer: Arc<PerPeer>,
    /// Permits are KiB of large frames in flight.
    large_frames: Arc<Semaphore>,
    quiet: Quiet,
}

fn keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
    let _ = tcp.set_nodelay(true);
}

/// Accepts connections and serves each on its own task, within `limits`. The TLS
/// configuration is read from `tls` for every new connection, so a reloaded
/// certificate takes effect without a restart. The connection tasks belong to this
/// future: dropping or aborting it ends every connection it accepted, as a process
/// exit would.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: quorate_pki::SharedTls,
    handler: Arc<H>,
    partition: Partition,
    limits: Limits,
    known: KnownAddresses,
) {
    let budget_kib = u32::try_from(limits.large_frame_budget >> 10).unwrap_or(u32::MAX);
    let shared = Arc::new(Shared {
        handler,
        partition,
        limits,
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        member_handshakes: Arc::new(Semaphore::new(limits.max_member_handshakes)),
        known,
        per_address: Arc::default(),
        per_peer: Arc::default(),
        large_frames: Arc::new(Semaphore::new(budget_kib as usize)),
        quiet: Quiet::default(),
    });
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // EMFILE and friends: wait, longer each time, instead of spinning.
                if shared.quiet.allow("accept") {
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if shared.partition.is_cut() {
            continue;
        }
        let member = shared.known.contains(addr.ip());
        let (slots, max) = if member {
            (&shared.member_handshakes, limits.max_member_handshakes)
        } else {
            (&shared.handshakes, limits.max_handshakes)
        };
        let Ok(handshake_slot) = slots.clone().try_acquire_owned() else {
            if shared.quiet.allow("handshakes") {
                tracing::warn!(%addr, "refused a connection: {max} TLS handshakes already in progress");
            }
            continue;
        };
        // The per-address cap keeps one stranger from taking every stranger slot. A
        // member's address has its own pool instead: a node whose link flaps leaves
        // handshakes hanging until their deadline and must still get through.
        let slot = if member {
            None
        } else {
            let Some(slot) = shared
                .per_address
                .take(addr.ip(), limits.max_handshakes_per_address)
            else {
                if shared.quiet.allow(&addr.ip().to_string()) {
                    tracing::warn!(%addr, "refused a connection: {} TLS handshakes from this address already in progress", limits.max_handshakes_per_address);
                }
                continue;
            };
            Some(slot)
        };
        let config = tls.get().server;
        let shared = shared.clone();
        connections.spawn(async move {
            keepalive(&tcp);
            let accepted = tokio::time::timeout(
                shared.limits.handshake_timeout,
                handshake(tcp, config, addr, &shared.quiet),
            )
            .await;
            drop((handshake_slot, slot));
            let (stream, announced) = match accepted {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(_) => {
                    if shared.quiet.allow(&format!("tls {}", addr.ip())) {
                        tracing::warn!(%addr, "refused peer connection: TLS handshake timed out");
                    }
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(quorate_pki::peer_identity)
                .map(|identity| quorate_pki::PeerIdentity {
                    protocol: announced,
                    ..identity
                });
            let Some(identity) = identity else {
                tracing::warn!(%addr, "refused peer connection: certificate names no node");
                return;
            };
            shared.handler.connected(&identity);
            let slot = shared
                .per_peer
                .register(&identity.node, shared.limits.max_connections_per_peer);
            serve_connection(stream, &identity, &shared, &slot).await;
        });
    }
}

/// The server side of a TLS handshake; also returns the highest protocol version the
/// client announced. A client with no version in common gets rustls's
/// `no_application_protocol` alert, and both ends say why in their logs.
async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
    quiet: &Quiet,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    quorate_pki::ProtocolVersion,
)> {
    use quorate_pki::ProtocolVersion;
    let refused = |why: String| {
        if quiet.allow(&format!("tls {}", addr.ip())) {
            tracing::warn!(%addr, "refused peer connection: {why}");
        }
    };
    let start =
        match tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await
        {
            Ok(start) => start,
            Err(e) => {
                refused(format!("TLS handshake failed: {e}"));
                return None;
            }
        };
    let offered: Vec<ProtocolVersion> = start
        .client_hello()
        .alpn()
        .map(|ids| ids.filter_map(ProtocolVersion::from_alpn).collect())
        .unwrap_or_default();
    let announced = offered
        .iter()
        .max()
        .copied()
        .unwrap_or(ProtocolVersion::UNANNOUNCED);
    let ours = ProtocolVersion::spoken().accepted();
    let common = offered.is_empty() || offered.iter().any(|v| ours.contains(v));
    match start.into_stream(config).await {
        Ok(stream) => Some((stream, announced)),
        Err(_) if !common => {
            refused(format!(
                "it speaks quorate protocol {} and this node {}: no version in common. Upgrade nodes one minor version at a time (a node talks to the minor version before its own)",
                offered.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
                ours.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
            ));
            None
        }
        Err(e) => {
            refused(format!("TLS handshake failed: {e}"));
            None
        }
    }
}

async fn serve_connection<S, H>(
    mut stream: S,
    identity: &quorate_pki::PeerIdentity,
    shared: &Shared<H>,
    slot: &PeerSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let peer = identity.node.as_str();
    let limits = shared.limits;
    loop {
        let mut header = [0_u8; 5];
        let waited = tokio::select! {
            () = slot.closed.notified() => return,
            read = tokio::time::timeout(limits.idle_timeout, stream.read_exact(&mut header)) => read,
        };
        if !matches!(waited, Ok(Ok(_))) || shared.partition.is_cut() {
            return;
        }
        // Certificates are checked at the handshake; one that expires while its
        // connection lasts ends the connection at the next request.
        if identity.expired() {
            if shared.quiet.allow(&format!("expired {peer}")) {
                tracing::warn!(
                    peer,
                    "closed a peer connection: its certificate has expired"
                );
            }
            return;
        }
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if let Some(refusal) = shared.handler.refusal(peer) {
            if shared.quiet.allow(&format!("refused {peer}")) {
                tracing::warn!(
                    peer,
                    "refused a peer: {}",
                    String::from_utf8_lossy(&refusal)
                );
            }
            // A small request is read first, so that closing does not reset the
            // connection before the refusal arrives.
            if len <= SMALL_FRAME {
                let _ =
                    tokio::time::timeout(limits.frame_timeout, read_body(&mut stream, len, peer))
                        .await;
                let _ = write_reply(&mut stream, &refusal, peer).await;
                let _ = stream.shutdown().await;
            }
            return;
        }
        let max = shared.handler.max_request(kind).min(MAX_FRAME);
        if len > max {
            if shared.quiet.allow(&format!("size {peer}")) {
                tracing::warn!(
                    peer,
                    kind,
                    len,
                    max,
                    "closed a peer connection: frame too large for its kind"
                );
            }
            return;
        }
        let _permit: Option<OwnedSemaphorePermit> = if len > SMALL_FRAME {
            let kib = u32::try_from(len.div_ceil(1024))
                .unwrap_or(u32::MAX)
                .min(u32::try_from(limits.large_frame_budget >> 10).unwrap_or(u32::MAX));
            match shared.large_frames.clone().acquire_many_owned(kib).await {
                Ok(p) => Some(p),
                Err(_) => return,
            }
        } else {
            None
        };
        let body =
            tokio::time::timeout(limits.frame_timeout, read_body(&mut stream, len, peer)).await;
        let Ok(Ok(request)) = body else {
            return;
        };
        if shared.partition.is_cut() {
            return;
        }
        let reply = shared.handler.handle(peer.to_string(), kind, request).await;
        if shared.partition.is_cut() || write_reply(&mut stream, &reply, peer).await.is_err() {
            return;
        }
    }
}

/// A connection to one peer, opened on first use and reopened after any error or a
/// long idle time. Calls are sequential: one request, then its reply.
pub struct PeerClient {
    node: String,
    addr: SocketAddr,
    source: Option<IpAddr>,
    tls: quorate_pki::SharedTls,
    partition: Partition,
    conn: Option<ClientConn>,
    pool: Option<ConnectionPool>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl PeerClient {
    /// A client for `node` at `addr`; the server must present a certificate naming `node`.
    #[must_use]
    pub fn new(
        node: &str,
        addr: SocketAddr,
        tls: &quorate_pki::SharedTls,
        partition: Partition,
    ) -> Self {
        Self {
            node: node.to_string(),
            addr,
            source: None,
            tls: tls.clone(),
            partition,
            conn: None,
            pool: None,
        }
    }

    /// Takes idle connections from `pool`, and lets a handshake finish into it when
    /// the call that started it is dropped first. (A client's own connection closes
    /// with it, as without a pool.)
    #[must_use]
    pub fn with_pool(mut self, pool: ConnectionPool) -> Self {
        self.pool = Some(pool);
        self
    }

    fn key(&self) -> PeerKey {
        (self.node.clone(), self.addr)
    }

    /// Connects within `budget`. With a pool, the handshake runs in a task of its own
    /// that puts the connection into the pool if this call is gone when it is done.
    async fn connect_within(&self, budget: Duration) -> Result<ClientConn, NetError> {
        let timed_out = move |peer: String| NetError::Timeout {
            peer,
            after: budget,
        };
        let Some(pool) = self.pool.clone() else {
            return match tokio::time::timeout(budget, self.connect()).await {
                Ok(connected) => connected.map(|c| (c, Instant::now())),
                Err(_) => Err(timed_out(self.node.clone())),
            };
        };
        let dialer = Self {
            node: self.node.clone(),
            addr: self.addr,
            source: self.source,
            tls: self.tls.clone(),
            partition: self.partition.clone(),
            conn: None,
            pool: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let connected = match tokio::time::timeout(budget, dialer.connect()).await {
                Ok(connected) => connected.map(|c| (c, Instant::now())),
                Err(_) => Err(timed_out(dialer.node.clone())),
            };
            if let Err(Ok(conn)) = tx.send(connected) {
                pool.put(dialer.key(), conn);
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(timed_out(self.node.clone())))
    }

    /// Connects from `source` (this node's own address in the spec), so that peers
    /// see the address they know it by; without it, from whatever the routing picks.
    #[must_use]
    pub fn from_address(mut self, source: Option<IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// The peer's node name.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn tcp_connect(&self) -> std::io::Result<TcpStream> {
        let Some(source) = self.source.filter(|s| s.is_ipv4() == self.addr.is_ipv4()) else {
            return TcpStream::connect(self.addr).await;
        };
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // SO_REUSEADDR: the ephemeral port this takes on the node's address must not keep
        // a listener from binding that address and port later (found in the loopback
        // tests, where clusters share 127.0.0.x: an agent could not listen on a port
        // another cluster's connection had been given).
        let _ = socket.set_reuseaddr(true);
        // An address this host does not have (yet) is no reason not to connect.
        if socket.bind(SocketAddr::new(source, 0)).is_err() {
            return TcpStream::connect(self.addr).await;
        }
        socket.connect(self.addr).await
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, NetError> {
        let tcp = self.tcp_connect().await.map_err(io_error(&self.node))?;
        keepalive(&tcp);
        let name = ServerName::try_from(self.node.clone()).map_err(|e| NetError::Io {
            peer: self.node.clone(),
            source: std::io::Error::other(e),
        })?;
        TlsConnector::from(self.tls.get().client)
            .connect(name, tcp)
            .await
            .map_err(|source| {
                let incompatible = source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| {
                        *e == rustls::Error::AlertReceived(
                            rustls::AlertDescription::NoApplicationProtocol,
                        )
                    });
                if incompatible {
                    let e = NetError::Incompatible {
                        peer: self.node.clone(),
                        ours: quorate_pki::ProtocolVersion::spoken()
                            .accepted()
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" and "),
                    };
                    if CLIENT_WARNINGS.allow(&format!("incompatible {}", self.node)) {
                        tracing::warn!("{e}");
                    }
                    return e;
                }
                NetError::Io {
                    peer: self.node.clone(),
                    source,
                }
            })
    }

    /// Sends `request` as a frame of `kind` and waits up to `timeout` for the reply
    /// (connecting included).
    ///
    /// # Errors
    /// Connection, TLS, timeout or partition errors; the connection is dropped and the
    /// next call reconnects.
    pub async fn call(
        &mut self,
        kind: u8,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        if self.partition.is_cut() {
            self.conn = None;
            if let Some(pool) = &self.pool {
                pool.clear(&self.key());
            }
            return Err(NetError::Blocked {
                peer: self.node.clone(),
            });
        }
        let peer = self.node.clone();
        if self
            .conn
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() > CLIENT_IDLE)
        {
            self.conn = None;
        }
        // Connecting (TCP + TLS handshake) gets its own, longer budget: bounding it by a
        // short RPC timeout (a 100 ms heartbeat) would abandon every handshake that
        // takes longer on a loaded machine, and never reconnect.
        let pooled = self
            .conn
            .take()
            .or_else(|| self.pool.as_ref().and_then(|p| p.take(&self.key())));
        let budget = timeout.max(CONNECT_TIMEOUT);
        let (mut conn, reused) = match pooled {
            Some((conn, _)) => (conn, true),
            None => (self.connect_within(budget).await?.0, false),
        };
        let result = tokio::time::timeout(timeout, async {
            // A pooled connection the server has closed (idle, or after a refusal)
            // fails on write, before any of the request was taken: send it on a fresh
            // connection instead.
            if let Err(e) = write_request(&mut conn, kind, request, &peer).await {
                if !reused {
                    return Err(e);
                }
                conn = self.connect_within(budget).await?.0;
                write_request(&mut conn, kind, request, &peer).await?;
            }
            read_reply(&mut conn, &peer).await
        })
        .await;
        match result {
            Ok(Ok(reply)) => {
                self.conn = Some((conn, Instant::now()));
                Ok(reply)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetError::Timeout {
                peer,
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes `peer:kind:request`; refuses `n9`; takes kind 1 up to 1 KiB, kind 2 up
    /// to 32 MiB.
    struct Echo;

    impl Handler for Echo {
        fn max_request(&self, kind: u8) -> usize {
            match kind {
                1 => 1 << 10,
                2 => 32 << 20,
                _ => 0,
            }
        }

        fn refusal(&self, peer: &str) -> Option<Vec<u8>> {
            (peer == "n9").then(|| b"not a member".to_vec())
        }

        async fn handle(&self, peer: String, kind: u8, request: Vec<u8>) -> Vec<u8> {
            let mut out = format!("{peer}:{kind}:").into_bytes();
            out.extend(request.iter().take(16));
            out
        }
    }

    fn node_tls(ca: &std::path::Path, dir: &std::path::Path, node: &str) -> quorate_pki::SharedTls {
        quorate_pki::issue(ca, node, dir, quorate_pki::NODE_VALIDITY).unwrap();
        quorate_pki::SharedTls::new(
            quorate_pki::load(&quorate_pki::TlsFiles::in_dir(dir), node).unwrap(),
        )
    }

    fn ca(dir: &std::path::Path) -> std::path::PathBuf {
        let ca = dir.join("ca");
        quorate_pki::init_ca(&ca, "lab", quorate_pki::CA_VALIDITY).unwrap();
        ca
    }

    async fn start_with(tls: quorate_pki::SharedTls, limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            tls,
            Arc::new(Echo),
            Partition::default(),
            limits,
            KnownAddresses::default(),
        ));
        addr
    }

    async fn start(tls: quorate_pki::SharedTls) -> SocketAddr {
        start_with(tls, Limits::default()).await
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_server_knows_the_caller_from_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert_eq!(client.call(1, b"hi", T).await.unwrap(), b"n2:1:hi");
        assert_eq!(client.call(2, b"again", T).await.unwrap(), b"n2:2:again");
    }

    #[tokio::test]
    async fn a_handshake_its_caller_gave_up_on_lands_in_the_pool() {
        // The server answers only after the first caller has given up, as Raft drops
        // a vote request at its election timeout and asks with a new client next
        // round: the handshake finishes anyway, and the next client uses it.
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let n1 = node_tls(&ca, &dir.path().join("n1"), "n1");
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = ConnectionPool::default();
        let mut first =
            PeerClient::new("n1", addr, &n2, Partition::default()).with_pool(pool.clone());
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), first.call(1, b"vote", T)).await;
        assert!(gave_up.is_err(), "the server was not serving yet");
        drop(first);
        assert_eq!(pool.idle(), 0);
        tokio::spawn(serve(
            listener,
            n1,
            Arc::new(Echo),
            Partition::default(),
            Limits::default(),
            KnownAddresses::default(),
        ));
        let started = Instant::now();
        while pool.idle() == 0 {
            assert!(
                started.elapsed() < T,
                "the abandoned handshake never finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut second =
            PeerClient::new("n1", addr, &n2, Partition::default()).with_pool(pool.clone());
        assert_eq!(second.call(1, b"vote", T).await.unwrap(), b"n2:1:vote");
        assert_eq!(
            pool.idle(),
            0,
            "the second client took the pooled connection"
        );
    }

    #[tokio::test]
    async fn a_refused_peer_gets_the_refusal_and_nothing_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n9 = node_tls(&ca, &dir.path().join("n9"), "n9");
        let mut client = PeerClient::new("n1", addr, &n9, Partition::default());
        assert_eq!(client.call(1, b"hi", T).await.unwrap(), b"not a member");
        // The connection was closed after the refusal; the next call reconnects and is
        // refused again.
        assert_eq!(client.call(1, b"hi", T).await.unwrap(), b"not a member");
    }

    #[tokio::test]
    async fn each_kind_is_held_to_its_own_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        // 2 KiB is too much for kind 1, fine for kind 2; kind 7 is unknown.
        let big = vec![b'x'; 2 << 10];
        assert!(client.call(1, &big, T).await.is_err());
        assert!(client.call(2, &big, T).await.is_ok());
        assert!(client.call(7, b"hi", T).await.is_err());
        assert!(client.call(1, b"hi", T).await.is_ok());
    }

    /// Opens a raw TCP connection from `source` that never speaks.
    async fn idle_from(source: IpAddr, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        socket.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn idle_sockets_from_one_address_do_not_lock_out_others() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let limits = Limits {
            max_handshakes_per_address: 4,
            handshake_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let addr = start_with(node_tls(&ca, &dir.path().join("n1"), "n1"), limits).await;
        let attacker: IpAddr = [127, 0, 0, 77].into();
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(idle_from(attacker, addr).await);
        }
        // Beyond the cap, the attacker's sockets are closed at once: reading gives EOF.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut closed = 0;
        for s in &mut idle {
            let mut b = [0_u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 46, "all but the allowed 4 are closed");
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert_eq!(client.call(1, b"hi", T).await.unwrap(), b"n2:1:hi");
    }

    #[tokio::test]
    async fn strangers_filling_every_handshake_slot_do_not_keep_members_out() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let limits = Limits {
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let known = KnownAddresses::default();
        known.set([IpAddr::from([127, 0, 0, 5])].into());
        tokio::spawn(serve(
            listener,
            node_tls(&ca, &dir.path().join("n1"), "n1"),
            Arc::new(Echo),
            Partition::default(),
            limits,
            known,
        ));
        // Stalled handshakes from many addresses, a few from each: all stranger slots.
        let mut stalled = Vec::new();
        for i in 0..40_u8 {
            stalled.push(idle_from([127, 0, 1, 10 + i / 2].into(), addr).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        // A stranger's real handshake finds no slot ...
        let mut stranger = PeerClient::new("n1", addr, &n2, Partition::default())
            .from_address(Some([127, 0, 0, 6].into()));
        assert!(stranger.call(1, b"hi", T).await.is_err());
        // ... a member's address has slots of its own.
        let mut member = PeerClient::new("n1", addr, &n2, Partition::default())
            .from_address(Some([127, 0, 0, 5].into()));
        assert_eq!(member.call(1, b"hi", T).await.unwrap(), b"n2:1:hi");
    }

    #[tokio::test]
    async fn a_peer_over_its_connection_cap_loses_its_oldest_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let limits = Limits {
            max_connections_per_peer: 3,
            ..Limits::default()
        };
        let addr = start_with(node_tls(&ca, &dir.path().join("n1"), "n1"), limits).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut clients: Vec<PeerClient> = (0..5)
            .map(|_| PeerClient::new("n1", addr, &n2, Partition::default()))
            .collect();
        for c in &mut clients {
            c.call(1, b"hi", T).await.unwrap();
        }
        // The first two were closed by the server; the last three still work on the
        // connection they have.
        for c in &mut clients[..2] {
            let (conn, _) = c.conn.as_mut().unwrap();
            let answered = match write_request(conn, 1, b"hi", "n1").await {
                Ok(()) => read_reply(conn, "n1").await.is_ok(),
                Err(_) => false,
            };
            assert!(!answered, "an evicted connection answers nothing");
        }
        for c in &mut clients[2..] {
            let (conn, _) = c.conn.as_mut().unwrap();
            write_request(conn, 1, b"hi", "n1").await.unwrap();
            assert_eq!(read_reply(conn, "n1").await.unwrap(), b"n2:1:hi");
        }
    }

    #[tokio::test]
    async fn a_stalled_large_frame_does_not_block_other_callers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut conn = TlsConnector::from(n2.get().client)
            .connect(ServerName::try_from("n1").unwrap(), tcp)
            .await
            .unwrap();
        // A header announcing 30 MiB of kind 2 and 5 bytes only: the server waits for
        // the rest (its frame deadline ends it), holding 5 bytes, not 30 MiB.
        let mut header = vec![2_u8];
        header.extend((30_u32 << 20).to_be_bytes());
        header.extend(b"hello");
        conn.write_all(&header).await.unwrap();
        conn.flush().await.unwrap();
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert_eq!(client.call(1, b"hi", T).await.unwrap(), b"n2:1:hi");
    }

    #[tokio::test]
    async fn a_foreign_ca_is_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let other = dir.path().join("other");
        quorate_pki::init_ca(&other, "evil", quorate_pki::CA_VALIDITY).unwrap();
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let intruder = node_tls(&other, &dir.path().join("x"), "n2");
        let mut client = PeerClient::new("n1", addr, &intruder, Partition::default());
        assert!(client.call(1, b"hi", T).await.is_err());
    }

    #[tokio::test]
    async fn tls_1_2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = dir.path().join("n2");
        quorate_pki::issue(&ca, "n2", &n2, quorate_pki::NODE_VALIDITY).unwrap();
        let old = quorate_pki::client_config_with_versions(
            &quorate_pki::TlsFiles::in_dir(&n2),
            &[&rustls::version::TLS12],
        )
        .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connected = TlsConnector::from(old)
            .connect(ServerName::try_from("n1").unwrap(), tcp)
            .await;
        assert!(connected.is_err(), "a TLS 1.2 handshake must fail");
    }

    #[tokio::test]
    async fn a_server_must_be_the_node_we_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        // n3 listens where the client expects n1.
        let addr = start(node_tls(&ca, &dir.path().join("n3"), "n3")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        let err = client.call(1, b"hi", T).await.unwrap_err();
        assert!(err.to_string().contains("n1"), "{err}");
    }

    #[tokio::test]
    async fn stopping_the_server_closes_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            node_tls(&ca, &dir.path().join("n1"), "n1"),
            Arc::new(Echo),
            Partition::default(),
            Limits::default(),
            KnownAddresses::default(),
        ));
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert!(client.call(1, b"hi", T).await.is_ok());
        server.abort();
        let _ = server.await;
        // The open connection is gone with the server, not answered by a leftover task.
        assert!(client.call(1, b"hi", Duration::from_secs(2)).await.is_err());
    }

    #[tokio::test]
    async fn a_cut_partition_blocks_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let cut = Partition::default();
        let mut client = PeerClient::new("n1", addr, &n2, cut.clone());
        cut.set(true);
        assert!(matches!(
            client.call(1, b"hi", Duration::from_secs(1)).await,
            Err(NetError::Blocked { .. })
        ));
        cut.set(false);
        assert!(client.call(1, b"hi", T).await.is_ok());
    }

    /// Issue 14, item 7: random frames from a member over a real TLS connection —
    /// any kind, any announced length, any bytes, short or long — get a reply or a
    /// closed connection, and the server keeps serving.
    #[test]
    fn fuzzed_frames_never_stop_the_server() {
        use proptest::prelude::*;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let limits = Limits {
            frame_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let addr = rt.block_on(start_with(
            node_tls(&ca, &dir.path().join("n1"), "n1"),
            limits,
        ));
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let cases = std::env::var("QUORATE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (
            any::<u8>(),
            prop_oneof![0_u32..4096, any::<u32>()],
            prop::collection::vec(any::<u8>(), 0..4096),
        );
        runner
            .run(&strategy, |(kind, announced, body)| {
                rt.block_on(async {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    let mut conn = TlsConnector::from(n2.get().client)
                        .connect(ServerName::try_from("n1").unwrap(), tcp)
                        .await
                        .unwrap();
                    let mut frame = vec![kind];
                    frame.extend(announced.to_be_bytes());
                    frame.extend(&body);
                    let _ = conn.write_all(&frame).await;
                    let _ = conn.flush().await;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), read_reply(&mut conn, "n1"))
                            .await;
                });
                Ok(())
            })
            .unwrap();
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert_eq!(rt.block_on(client.call(1, b"hi", T)).unwrap(), b"n2:1:hi");
    }

    /// A client's ephemeral port on a node address never keeps a listener off it.
    #[tokio::test]
    async fn an_outgoing_connection_does_not_keep_a_listener_off_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let source: IpAddr = [127, 0, 0, 42].into();
        let mut client =
            PeerClient::new("n1", addr, &n2, Partition::default()).from_address(Some(source));
        client.call(1, b"hi", T).await.unwrap();
        let (conn, _) = client.conn.as_ref().unwrap();
        let taken = conn.get_ref().0.local_addr().unwrap();
        assert_eq!(taken.ip(), source);
        // A node whose address and port that is can still listen there.
        let listener = TcpListener::bind(taken).await;
        assert!(listener.is_ok(), "{listener:?}");
    }
}

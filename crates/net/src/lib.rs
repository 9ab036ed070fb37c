//! Node-to-node transport: request/response frames (4-byte big-endian length, then
//! the bytes) over TCP with mutual TLS. The server learns who is calling from the
//! peer's certificate — never from anything the peer says — and the client checks that
//! the server's certificate names the node it meant to reach.
//!
//! Frames are opaque bytes here; the layers above decide what they mean.
//!
//! **Architecture Invariant:** knows nothing of Raft, specs or agents.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_pki::NodeTls;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Largest frame accepted (a spec with 10,000 services is about 2 MB of JSON).
pub const MAX_FRAME: usize = 64 << 20;

/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to connect and finish its TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// A frame larger than [`MAX_FRAME`].
    #[error("{peer}: frame of {len} bytes exceeds the limit")]
    TooLarge {
        /// The peer.
        peer: String,
        /// The announced length.
        len: usize,
    },
    /// Traffic to this peer is cut (sandbox `partition`).
    #[error("{peer}: traffic is blocked (partitioned)")]
    Blocked {
        /// The peer.
        peer: String,
    },
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, peer: &str) -> Result<Vec<u8>, NetError> {
    let io = |source| NetError::Io {
        peer: peer.to_string(),
        source,
    };
    let len = s.read_u32().await.map_err(io)? as usize;
    if len > MAX_FRAME {
        return Err(NetError::TooLarge {
            peer: peer.to_string(),
            len,
        });
    }
    let mut buf = vec![0; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}

async fn write_frame<S: AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    peer: &str,
) -> Result<(), NetError> {
    let io = |source| NetError::Io {
        peer: peer.to_string(),
        source,
    };
    let len = u32::try_from(bytes.len()).map_err(|_| NetError::TooLarge {
        peer: peer.to_string(),
        len: bytes.len(),
    })?;
    s.write_u32(len).await.map_err(io)?;
    s.write_all(bytes).await.map_err(io)?;
    s.flush().await.map_err(io)
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
    /// Handles one request from `peer` (the node its certificate names).
    fn handle(&self, peer: String, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;
}

/// Accepts connections and serves each on its own task. The connection tasks belong
/// to this future: dropping or aborting it ends every connection it accepted, as a
/// process exit would.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: NodeTls,
    handler: Arc<H>,
    partition: Partition,
) {
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if partition.is_cut() {
            drop(tcp);
            continue;
        }
        let (acceptor, handler, partition) = (acceptor.clone(), handler.clone(), partition.clone());
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%addr, "refused peer connection: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%addr, "refused peer connection: TLS handshake timed out");
                    return;
                }
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(quorate_pki::peer_node_name);
            let Some(peer) = peer else {
                tracing::warn!(%addr, "refused peer connection: certificate names no node");
                return;
            };
            serve_connection(stream, peer, handler, partition).await;
        });
    }
}

async fn serve_connection<S, H>(mut stream: S, peer: String, handler: Arc<H>, partition: Partition)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    loop {
        let Ok(request) = read_frame(&mut stream, &peer).await else {
            return;
        };
        if partition.is_cut() {
            return;
        }
        let reply = handler.handle(peer.clone(), request).await;
        if partition.is_cut() || write_frame(&mut stream, &reply, &peer).await.is_err() {
            return;
        }
    }
}

/// A connection to one peer, opened on first use and reopened after any error.
/// Calls are sequential: one request, then its reply.
pub struct PeerClient {
    node: String,
    addr: SocketAddr,
    connector: TlsConnector,
    partition: Partition,
    conn: Option<tokio_rustls::client::TlsStream<TcpStream>>,
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
    pub fn new(node: &str, addr: SocketAddr, tls: &NodeTls, partition: Partition) -> Self {
        Self {
            node: node.to_string(),
            addr,
            connector: TlsConnector::from(tls.client.clone()),
            partition,
            conn: None,
        }
    }

    /// The peer's node name.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn connect(
        &mut self,
    ) -> Result<&mut tokio_rustls::client::TlsStream<TcpStream>, NetError> {
        if self.conn.is_none() {
            let io = |source| NetError::Io {
                peer: self.node.clone(),
                source,
            };
            let tcp = TcpStream::connect(self.addr).await.map_err(io)?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(self.node.clone()).map_err(|e| NetError::Io {
                peer: self.node.clone(),
                source: std::io::Error::other(e),
            })?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|source| NetError::Io {
                    peer: self.node.clone(),
                    source,
                })?;
            self.conn = Some(tls);
        }
        self.conn.as_mut().ok_or_else(|| NetError::Io {
            peer: self.node.clone(),
            source: std::io::Error::other("not connected"),
        })
    }

    /// Sends `request` and waits up to `timeout` for the reply (connecting included).
    ///
    /// # Errors
    /// Connection, TLS, timeout or partition errors; the connection is dropped and the
    /// next call reconnects.
    pub async fn call(&mut self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, NetError> {
        if self.partition.is_cut() {
            self.conn = None;
            return Err(NetError::Blocked {
                peer: self.node.clone(),
            });
        }
        let peer = self.node.clone();
        // Connecting (TCP + TLS handshake) gets its own, longer budget: bounding it by a
        // short RPC timeout (a 100 ms heartbeat) would abandon every handshake that
        // takes longer on a loaded machine, and never reconnect.
        if self.conn.is_none() {
            match tokio::time::timeout(timeout.max(CONNECT_TIMEOUT), self.connect()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(NetError::Timeout {
                        peer,
                        after: timeout.max(CONNECT_TIMEOUT),
                    })
                }
            }
        }
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connect().await?;
            write_frame(conn, request, &peer).await?;
            read_frame(conn, &peer).await
        })
        .await;
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(NetError::Timeout {
                    peer,
                    after: timeout,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, peer: String, request: Vec<u8>) -> Vec<u8> {
            let mut out = format!("{peer}:").into_bytes();
            out.extend(request);
            out
        }
    }

    fn node_tls(ca: &std::path::Path, dir: &std::path::Path, node: &str) -> NodeTls {
        quorate_pki::issue(ca, node, dir).unwrap();
        quorate_pki::load(&quorate_pki::TlsFiles::in_dir(dir), node).unwrap()
    }

    async fn start(tls: NodeTls) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, tls, Arc::new(Echo), Partition::default()));
        addr
    }

    #[tokio::test]
    async fn the_server_knows_the_caller_from_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        quorate_pki::init_ca(&ca, "lab").unwrap();
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert_eq!(
            client.call(b"hi", Duration::from_secs(5)).await.unwrap(),
            b"n2:hi"
        );
        assert_eq!(
            client.call(b"again", Duration::from_secs(5)).await.unwrap(),
            b"n2:again"
        );
    }

    #[tokio::test]
    async fn a_foreign_ca_is_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (dir.path().join("ca"), dir.path().join("other"));
        quorate_pki::init_ca(&ca, "lab").unwrap();
        quorate_pki::init_ca(&other, "evil").unwrap();
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let intruder = node_tls(&other, &dir.path().join("x"), "n2");
        let mut client = PeerClient::new("n1", addr, &intruder, Partition::default());
        assert!(client.call(b"hi", Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test]
    async fn a_server_must_be_the_node_we_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        quorate_pki::init_ca(&ca, "lab").unwrap();
        // n3 listens where the client expects n1.
        let addr = start(node_tls(&ca, &dir.path().join("n3"), "n3")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        let err = client
            .call(b"hi", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("n1"), "{err}");
    }

    #[tokio::test]
    async fn stopping_the_server_closes_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        quorate_pki::init_ca(&ca, "lab").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            node_tls(&ca, &dir.path().join("n1"), "n1"),
            Arc::new(Echo),
            Partition::default(),
        ));
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let mut client = PeerClient::new("n1", addr, &n2, Partition::default());
        assert!(client.call(b"hi", Duration::from_secs(5)).await.is_ok());
        server.abort();
        let _ = server.await;
        // The open connection is gone with the server, not answered by a leftover task.
        assert!(client.call(b"hi", Duration::from_secs(2)).await.is_err());
    }

    #[tokio::test]
    async fn a_cut_partition_blocks_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        quorate_pki::init_ca(&ca, "lab").unwrap();
        let addr = start(node_tls(&ca, &dir.path().join("n1"), "n1")).await;
        let n2 = node_tls(&ca, &dir.path().join("n2"), "n2");
        let cut = Partition::default();
        let mut client = PeerClient::new("n1", addr, &n2, cut.clone());
        cut.set(true);
        assert!(matches!(
            client.call(b"hi", Duration::from_secs(1)).await,
            Err(NetError::Blocked { .. })
        ));
        cut.set(false);
        assert!(client.call(b"hi", Duration::from_secs(5)).await.is_ok());
    }
}

//! quinn endpoints tuned for bulk transfer on fast links.
//!
//! quinn's defaults are sized for the internet: small flow-control windows and kernel socket
//! buffers drop packets on loopback and LANs at full speed. Windows here allow several 4 MiB
//! shard transfers in flight per connection; the socket buffers are raised as far as the kernel
//! allows (`net.core.rmem_max` caps them), and loss detection tolerates the scheduling delays
//! of a busy host.

use super::tls::Identity;
use crate::error::FsError;
use quinn::congestion::CubicConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Connecting, EndpointConfig, ServerConfig, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// A connection with no packets for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Keep-alive pings keep idle connections open and detect dead peers.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Largest UDP payload dfs sends on a network path. quinn hands the kernel up to 10 datagrams
/// per GSO send, and one send must stay under the kernel's 65,507-byte UDP limit: a larger
/// batch fails with EMSGSIZE, which quinn counts as sent, so it reads as a loss and MTU
/// discovery falls back to 1,200 bytes. 10 × 6,000 stays under it. Paths are probed up to this
/// size (jumbo-frame networks reach it; a 1,500-byte Ethernet stays at 1,452). Loopback paths
/// go further: [`LOOPBACK_DATAGRAM`].
pub const MAX_DATAGRAM: u16 = 6000;

/// First datagram size on loopback paths. The handshake's long-header packets carry a
/// length field of at most 16,383 bytes, so a connection cannot start larger.
pub const LOOPBACK_FIRST_DATAGRAM: u16 = 16_000;

/// Largest UDP payload dfs sends on loopback (found by probing from
/// [`LOOPBACK_FIRST_DATAGRAM`]) and accepts from any peer. Loopback datagrams go one per
/// send, without GSO (no batch could stay under the UDP limit): a tenth of the packets of
/// [`MAX_DATAGRAM`] batches, and QUIC's cost is per packet (built, sealed, opened, acknowledged),
/// about a fifth of the CPU of a sequential write here.
pub const LOOPBACK_DATAGRAM: u16 = 60_000;

fn endpoint_config(reset_key: Option<[u8; 32]>, max_datagram: u16) -> EndpointConfig {
    let mut config = match reset_key {
        Some(key) => EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &key,
        ))),
        None => EndpointConfig::default(),
    };
    // Out-of-range sizes are clamped to QUIC's bounds rather than refused.
    let _ = config.max_udp_payload_size(max_datagram.clamp(1200, LOOPBACK_DATAGRAM));
    config
}
/// Requests in flight per connection; further streams wait for a slot (back-pressure).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 512;

/// Which paths a connection may take: any network (datagram size found by probing), or only
/// this host's loopback interface (64 KiB MTU, nothing to probe).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Any,
    Loopback,
}

impl Path {
    fn of(addr: SocketAddr) -> Path {
        if addr.ip().is_loopback() && loopback_takes(loopback_mtu()) {
            Path::Loopback
        } else {
            Path::Any
        }
    }
}

/// The loopback interface's MTU, where the host tells it (Linux); read once.
fn loopback_mtu() -> Option<u32> {
    static MTU: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *MTU.get_or_init(|| {
        std::fs::read_to_string("/sys/class/net/lo/mtu")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// Whether a loopback interface of this MTU carries [`LOOPBACK_FIRST_DATAGRAM`]s (an IPv6
/// and a UDP header besides). Loopback's MTU is 64 KiB unless someone lowered it; then its
/// paths are treated as any network's, probed up from 1,200 bytes. Unknown counts as the
/// default.
fn loopback_takes(mtu: Option<u32>) -> bool {
    mtu.is_none_or(|mtu| mtu >= u32::from(LOOPBACK_FIRST_DATAGRAM) + 48)
}

fn transport_config(path: Path) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(CONNECTION_WINDOW as u64);
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().expect("idle timeout fits a VarInt"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // On a busy host, scheduling delays dwarf loopback and LAN round trips; with the default
    // 9/8 RTT loss threshold they read as losses, and each spurious loss costs a retransmission,
    // a congestion-window cut and can even reset the MTU. Tolerate more delay and reordering.
    t.time_threshold(4.0);
    t.packet_threshold(16);
    match path {
        Path::Any => {
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(MAX_DATAGRAM);
            t.mtu_discovery_config(Some(mtu));
        }
        Path::Loopback => {
            // Large datagrams from the first packet, probed up to nearly 64 KiB (loopback's
            // MTU), and no black-hole fallback below the first size on a loss. One datagram
            // per send. A wider first window, since its round trip is tens of microseconds.
            t.initial_mtu(LOOPBACK_FIRST_DATAGRAM);
            t.min_mtu(LOOPBACK_FIRST_DATAGRAM);
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(LOOPBACK_DATAGRAM);
            t.mtu_discovery_config(Some(mtu));
            t.enable_segmentation_offload(false);
            let mut cubic = CubicConfig::default();
            cubic.initial_window(64 * MAX_DATAGRAM as u64);
            t.congestion_controller_factory(Arc::new(cubic));
        }
    }
    Arc::new(t)
}

fn client_config(identity: &Identity, path: Path) -> Result<ClientConfig, FsError> {
    let crypto = QuicClientConfig::try_from(identity.rustls_client_config()?)
        .map_err(|e| FsError::invalid(format!("TLS client config: {e}")))?;
    let mut cfg = ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config(path));
    Ok(cfg)
}

fn server_config(identity: &Identity, path: Path) -> Result<ServerConfig, FsError> {
    let crypto = QuicServerConfig::try_from(identity.rustls_server_config()?)
        .map_err(|e| FsError::invalid(format!("TLS server config: {e}")))?;
    let mut cfg = ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config(path));
    Ok(cfg)
}

/// A quinn endpoint that connects to loopback peers with loopback settings (see
/// [`LOOPBACK_DATAGRAM`]) and to every other peer with settings that suit any network.
#[derive(Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    loopback: ClientConfig,
}

impl Endpoint {
    fn new(mut inner: quinn::Endpoint, identity: &Identity) -> Result<Endpoint, FsError> {
        inner.set_default_client_config(client_config(identity, Path::Any)?);
        Ok(Endpoint {
            inner,
            loopback: client_config(identity, Path::Loopback)?,
        })
    }

    /// Starts a connection to the dfs server at `addr`.
    pub fn connect_to(&self, addr: SocketAddr, server_name: &str) -> Result<Connecting, FsError> {
        let connecting = match Path::of(addr) {
            Path::Loopback => self
                .inner
                .connect_with(self.loopback.clone(), addr, server_name),
            Path::Any => self.inner.connect(addr, server_name),
        };
        connecting.map_err(|e| FsError::unavailable(format!("connect to {addr}: {e}")))
    }
}

impl Deref for Endpoint {
    type Target = quinn::Endpoint;

    fn deref(&self) -> &quinn::Endpoint {
        &self.inner
    }
}

fn bind_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, FsError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| FsError::io(format!("UDP socket: {e}")))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Dual-stack: IPv4 peers too, as IPv4-mapped addresses.
        socket
            .set_only_v6(false)
            .map_err(|e| FsError::io(format!("UDP socket: {e}")))?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket
        .bind(&addr.into())
        .map_err(|e| FsError::io(format!("bind {addr}: {e}")))?;
    Ok(socket.into())
}

/// An endpoint that accepts connections on `addr` and can also connect out (servers talk to
/// each other with the same identity).
///
/// `reset_key` should be a secret kept across restarts: with it, a restarted server answers
/// packets of its old connections with a valid stateless reset, so peers notice the restart at
/// once instead of after the idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &Identity,
    reset_key: Option<[u8; 32]>,
) -> Result<Endpoint, FsError> {
    let endpoint_config = endpoint_config(reset_key, LOOPBACK_DATAGRAM);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| FsError::io("no async runtime for the QUIC endpoint"))?;
    // A server listening on loopback only ever has loopback peers.
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server_config(identity, Path::of(addr))?),
        bind_socket(addr)?,
        runtime,
    )
    .map_err(|e| FsError::io(format!("QUIC endpoint on {addr}: {e}")))?;
    Endpoint::new(endpoint, identity)
}

/// An endpoint that only connects out (clients, the CLI).
pub fn client_endpoint(identity: &Identity) -> Result<Endpoint, FsError> {
    client_endpoint_accepting(identity, LOOPBACK_DATAGRAM)
}

/// A client endpoint that tells its peers it accepts UDP payloads of at most `max_datagram`
/// bytes (at least 1,200): a peer on a path of small MTU, or a small receive buffer.
pub fn client_endpoint_accepting(
    identity: &Identity,
    max_datagram: u16,
) -> Result<Endpoint, FsError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| FsError::io("no async runtime for the QUIC endpoint"))?;
    // One socket for IPv4 and IPv6 peers; IPv4 alone where the host has no IPv6.
    let socket = bind_socket("[::]:0".parse().expect("valid address"))
        .or_else(|_| bind_socket("0.0.0.0:0".parse().expect("valid address")))?;
    let endpoint = quinn::Endpoint::new(endpoint_config(None, max_datagram), None, socket, runtime)
        .map_err(|e| FsError::io(format!("QUIC endpoint: {e}")))?;
    Endpoint::new(endpoint, identity)
}

/// Loads the 32-byte secret kept at `path` (a stateless-reset key, the capability key),
/// creating it on first use: readable by its owner only, and durable (file and directory
/// synced) before it is used.
pub fn load_or_create_secret(path: &std::path::Path) -> Result<[u8; 32], FsError> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| FsError::Corrupt(format!("{}: expected 32 bytes", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            crate::durable::write_file(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_settings_need_a_loopback_that_carries_their_datagrams() {
        assert!(loopback_takes(Some(65536)));
        assert!(loopback_takes(None));
        assert!(loopback_takes(Some(16_048)));
        assert!(!loopback_takes(Some(16_047)));
        assert!(!loopback_takes(Some(1500)));
    }
}

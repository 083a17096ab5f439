//! The QUIC transport between real processes' endpoints: datagrams of tens of KiB on loopback, and
//! a peer that accepts only small datagrams still gets every reply (no jumbo assumption).

use dfs_common::codec::{encode_frame, read_frame};
use dfs_common::net::endpoint::{
    client_endpoint, client_endpoint_accepting, Endpoint, LOOPBACK_FIRST_DATAGRAM, MAX_DATAGRAM,
};
use dfs_common::net::tls::SERVER_NAME;
use dfs_common::proto::meta::{req, Attr, DirPage, MetaCall};
use dfs_common::{FsError, InodeId};
use dfs_tests::TestCluster;
use std::net::SocketAddr;
use std::time::Duration;

async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> quinn::Connection {
    let connecting = endpoint.connect_to(addr, SERVER_NAME).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .expect("connects in time")
        .expect("connects")
}

/// Lists `dir` over `conn` in one request and returns the page.
async fn list(conn: &quinn::Connection, dir: InodeId) -> DirPage {
    let request = MetaCall::untracked(
        req::ReadDir {
            dir,
            after: None,
            limit: 1000,
            with_attrs: true,
        }
        .into(),
    );
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&request).unwrap())
        .await
        .unwrap();
    let _ = send.finish();
    tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<Result<DirPage, FsError>>(&mut recv, 16 << 20),
    )
    .await
    .expect("a reply in time")
    .expect("a whole reply frame")
    .expect("the listing succeeds")
}

/// A volume whose root holds 300 directories of long names: a listing reply of tens of KiB,
/// many datagrams whatever their size. Gives the volume and the names.
async fn directory_of_300(
    cluster: &TestCluster,
) -> (dfs_common::proto::meta::VolumeInfo, Vec<String>) {
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "1+0", 1 << 20).await;
    let names: Vec<String> = (0..300)
        .map(|i| format!("{i:04}-{}", "n".repeat(60)))
        .collect();
    for name in &names {
        client.mkdir(volume.root, name, 0o755, 0, 0).await.unwrap();
    }
    (volume, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_datagram_peers_get_whole_replies_and_loopback_peers_get_large_datagrams() {
    let cluster = TestCluster::start(1).await;
    let (volume, names) = directory_of_300(&cluster).await;
    let identity = cluster.certs.client_identity();

    // A peer that accepts datagrams of at most 1,200 bytes (a path of small MTU).
    let small = client_endpoint_accepting(&identity, 1200).unwrap();
    let conn = connect(&small, cluster.meta_addr).await;
    let page = list(&conn, volume.root).await;
    assert_eq!(page.entries.len(), names.len(), "the whole listing arrives");
    let rx = conn.stats().udp_rx;
    assert!(rx.datagrams > 10, "{rx:?}");
    assert!(
        rx.bytes <= rx.datagrams * 1200,
        "the server sent datagrams larger than the peer accepts: {rx:?}"
    );

    // A loopback peer of the default endpoint gets the same reply in datagrams larger than any
    // a network path uses (one per send, no GSO batch).
    let large = client_endpoint(&identity).unwrap();
    let conn = connect(&large, cluster.meta_addr).await;
    let page = list(&conn, volume.root).await;
    assert_eq!(page.entries.len(), names.len());
    let before = conn.stats().udp_rx;
    let page = list(&conn, volume.root).await;
    assert_eq!(page.entries.len(), names.len());
    let after = conn.stats().udp_rx;
    let (bytes, datagrams) = (
        after.bytes - before.bytes,
        after.datagrams - before.datagrams,
    );
    assert!(bytes > 20_000, "a listing of tens of KiB: {bytes} bytes");
    assert!(
        bytes > datagrams * u64::from(MAX_DATAGRAM),
        "loopback replies come in datagrams larger than {MAX_DATAGRAM} bytes: \
         {bytes} bytes in {datagrams} datagrams"
    );
    let path = conn.stats().path;
    assert_eq!(path.black_holes_detected, 0);
    assert!(path.current_mtu >= LOOPBACK_FIRST_DATAGRAM, "{path:?}");
}

/// A small request and its reply cost one datagram each way: the frame, body and end of a
/// message leave together, and neither side's reading leaves a stream half-read (which quinn
/// answers with one more packet, STOP_SENDING). On a busy host every packet is a wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_call_costs_one_datagram_each_way() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "1+0", 1 << 20).await;
    let identity = cluster.certs.client_identity();
    let peer = dfs_common::net::Peer::new(client_endpoint(&identity).unwrap(), cluster.meta_addr);
    let call = || async {
        peer.call::<_, Attr>(
            &MetaCall::untracked(req::GetAttr { ino: volume.root }.into()),
            None,
            1 << 20,
        )
        .await
        .map(|(reply, _)| reply)
        .unwrap()
    };
    call().await;
    let before = peer.connection_stats().await.unwrap();
    let calls = 200u64;
    for _ in 0..calls {
        assert_eq!(call().await.ino, volume.root);
    }
    let after = peer.connection_stats().await.unwrap();
    // Neither side leaves a stream half-read: no STOP_SENDING, the packet it used to cost.
    assert_eq!(after.frame_tx.stop_sending, before.frame_tx.stop_sending);
    assert_eq!(after.frame_rx.stop_sending, before.frame_rx.stop_sending);
    // About one datagram each way per call. Acknowledgements the other side sends on its own
    // timer add some on a loaded host (up to 1.3 per call was seen under the full suite); two
    // or more per call is what the half-read streams used to cost.
    let sent = after.udp_tx.datagrams - before.udp_tx.datagrams;
    let received = after.udp_rx.datagrams - before.udp_rx.datagrams;
    assert!(
        sent < 2 * calls && received < 2 * calls,
        "{calls} calls took {sent} datagrams out and {received} in"
    );
}

/// A metadata server listening on IPv6 loopback serves the client library and raw calls: the
/// client endpoint is dual-stack, and the loopback settings (large datagrams) apply over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_server_on_ipv6_loopback_serves_clients() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let cluster = TestCluster::start_with(0, |config| {
        config.listen = "[::1]:0".parse().unwrap();
    })
    .await;
    assert!(cluster.meta_addr.is_ipv6(), "{}", cluster.meta_addr);
    let (volume, names) = directory_of_300(&cluster).await;

    let endpoint = client_endpoint(&cluster.certs.client_identity()).unwrap();
    let conn = connect(&endpoint, cluster.meta_addr).await;
    let page = list(&conn, volume.root).await;
    assert_eq!(page.entries.len(), names.len());
    let rx = conn.stats().udp_rx;
    assert!(
        rx.bytes > rx.datagrams * u64::from(MAX_DATAGRAM),
        "IPv6 loopback replies come in large datagrams too: {rx:?}"
    );
}

/// A host whose loopback interface carries only 1,500-byte packets still serves clients on
/// 127.0.0.1: the large loopback datagrams are used only where loopback carries them. Runs the
/// real metadata server and CLI in a network namespace of the test's own, whose `lo` MTU is
/// lowered.
#[test]
fn a_loopback_of_small_mtu_still_carries_connections() {
    use dfs_common::net::tls::write_pair;
    use dfs_tests::process::binary;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let net = dfs_tests::netns::NetNs::create((((std::process::id() + 60) % 250) + 1) as u8);
    let inside = |program: &std::path::Path| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.name]).arg(program);
        cmd
    };
    let status = inside(std::path::Path::new("ip"))
        .args(["link", "set", "lo", "mtu", "1500"])
        .status()
        .unwrap();
    assert!(status.success(), "lowering lo's MTU in the namespace");

    let dir = tempfile::tempdir().unwrap();
    let certs = dfs_tests::Certs::generate();
    let certs_dir = dir.path().join("certs");
    write_pair(&certs_dir, "ca", &certs.ca).unwrap();
    write_pair(&certs_dir, "meta", &certs.meta).unwrap();
    write_pair(&certs_dir, "admin", &certs.client).unwrap();
    // The namespace has its own ports: nothing else listens there.
    let log = std::fs::File::create(dir.path().join("meta.log")).unwrap();
    let mut meta = inside(&binary("dfs-meta"))
        .args(["--listen", "127.0.0.1:7000", "--data"])
        .arg(dir.path().join("meta"))
        .arg("--certs")
        .arg(&certs_dir)
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _meta = Kill(&mut meta);

    // The CLI in the namespace reaches it over loopback; until the server is up, each try
    // fails quickly (connection refused) or times out.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = inside(&binary("dfs"))
            .args(["--meta", "127.0.0.1:7000", "--certs"])
            .arg(&certs_dir)
            .args(["volume", "list"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("NAME"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CLI never reached the metadata server over a 1,500-byte loopback: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("meta.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

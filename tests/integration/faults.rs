//! Hostile and broken peers: malformed, truncated and oversized messages get an error or a
//! closed stream, the servers keep serving everyone else, and a party without a certificate
//! from the cluster CA is refused.

use dfs_common::capability::ShardCapability;
use dfs_common::codec::{encode_frame, read_frame};
use dfs_common::net::endpoint::client_endpoint;
use dfs_common::net::tls::{generate_ca, issue, Identity, Role, SERVER_NAME};
use dfs_common::proto::chunk::{ChunkReply, ChunkRequest, ShardKey, ShardOwner};
use dfs_common::proto::meta::{req, MetaCall, VolumeInfo};
use dfs_common::{BlockId, EcPolicy, FsError, VolumeId};
use dfs_tests::TestCluster;
use std::net::SocketAddr;
use std::time::Duration;

async fn connect(identity: &Identity, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let endpoint = client_endpoint(identity).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())
}

/// Sends raw bytes on a new stream and returns the server's decoded answer, or `None` if the
/// server closed or reset the stream instead.
async fn send_raw<R: serde::de::DeserializeOwned>(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Option<Result<R, FsError>> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    send.write_all(bytes).await.ok()?;
    let _ = send.finish();
    tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<Result<R, FsError>>(&mut recv, 1 << 20),
    )
    .await
    .expect("server answers or closes within the timeout")
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_servers_keep_serving() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let identity = cluster.certs.client_identity();
    let meta = connect(&identity, cluster.meta_addr).await.unwrap();

    // Oversized: a 1 GiB length prefix is refused before anything is allocated.
    let reply = send_raw::<Vec<VolumeInfo>>(&meta, &(1u32 << 30).to_le_bytes()).await;
    assert!(
        matches!(reply, Some(Err(FsError::TooBig(_))) | None),
        "{reply:?}"
    );
    // Malformed: a valid length with garbage inside.
    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 8]);
    let reply = send_raw::<Vec<VolumeInfo>>(&meta, &garbage).await;
    assert!(
        matches!(reply, Some(Err(FsError::Protocol(_))) | None),
        "{reply:?}"
    );
    // Truncated: the frame promises more than it carries.
    let frame = encode_frame(&MetaCall::untracked(req::ListVolumes.into())).unwrap();
    let mut short = (frame.len() as u32 + 10).to_le_bytes().to_vec();
    short.extend_from_slice(&frame[4..]);
    let reply = send_raw::<Vec<VolumeInfo>>(&meta, &short).await;
    assert!(matches!(reply, Some(Err(_)) | None), "{reply:?}");
    // A well-formed request on the same connection still works, and so does another client.
    let ok = send_raw::<Vec<VolumeInfo>>(&meta, &frame).await;
    assert!(matches!(ok, Some(Ok(_))), "{ok:?}");
    client.list_volumes().await.unwrap();

    // The same against a chunk server.
    let chunk = connect(&identity, cluster.chunks[0].addr).await.unwrap();
    let key = ShardKey {
        block: BlockId(77),
        index: 0,
    };
    let owner = ShardOwner {
        volume: VolumeId(1),
        policy: EcPolicy::new(2, 1).unwrap(),
        block_len: 2000,
    };
    // A body shorter than announced.
    let cap = ShardCapability {
        volume: owner.volume,
        expires: dfs_common::Timestamp::now(),
        mac: [0; 32],
    };
    let mut put = encode_frame(&ChunkRequest::Put {
        key,
        owner,
        len: 1000,
        cap,
    })
    .unwrap();
    put.extend_from_slice(&[1; 10]);
    let reply = send_raw::<ChunkReply>(&chunk, &put).await;
    assert!(matches!(reply, Some(Err(_)) | None), "{reply:?}");
    // A length inconsistent with the policy, and an absurd one, refused before reading.
    for len in [999, u64::MAX] {
        let put = encode_frame(&ChunkRequest::Put {
            key,
            owner,
            len,
            cap,
        })
        .unwrap();
        let reply = send_raw::<ChunkReply>(&chunk, &put).await;
        assert!(matches!(reply, Some(Err(FsError::Invalid(_)))), "{reply:?}");
    }
    // A huge read and garbage.
    let get = encode_frame(&ChunkRequest::Get {
        key,
        offset: 0,
        len: u64::MAX,
    })
    .unwrap();
    let reply = send_raw::<ChunkReply>(&chunk, &get).await;
    assert!(matches!(reply, Some(Err(FsError::TooBig(_)))), "{reply:?}");
    let reply = send_raw::<ChunkReply>(&chunk, &garbage).await;
    assert!(
        matches!(reply, Some(Err(FsError::Protocol(_))) | None),
        "{reply:?}"
    );
    // Nothing was stored, and the server still answers.
    let get = encode_frame(&ChunkRequest::Get {
        key,
        offset: 0,
        len: 10,
    })
    .unwrap();
    let reply = send_raw::<ChunkReply>(&chunk, &get).await;
    assert!(matches!(reply, Some(Err(FsError::NotFound))), "{reply:?}");
    let info = send_raw::<ChunkReply>(&chunk, &encode_frame(&ChunkRequest::Info).unwrap()).await;
    assert!(matches!(info, Some(Ok(ChunkReply::Info(_)))), "{info:?}");
    // A stream that sends nothing at all does not block others.
    let (_idle_send, _idle_recv) = chunk.open_bi().await.unwrap();
    let info = send_raw::<ChunkReply>(&chunk, &encode_frame(&ChunkRequest::Info).unwrap()).await;
    assert!(matches!(info, Some(Ok(ChunkReply::Info(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parties_without_a_cluster_certificate_are_refused() {
    let cluster = TestCluster::start(1).await;
    // A certificate from some other CA.
    let other_ca = generate_ca().unwrap();
    let stranger = issue(&other_ca, "stranger", Role::Client, &[]).unwrap();
    // It trusts our CA (so it could verify the server), but its own certificate is foreign.
    let identity = Identity::from_pem(
        &cluster.certs.ca.cert_pem,
        &stranger.cert_pem,
        &stranger.key_pem,
    )
    .unwrap();
    for addr in [cluster.meta_addr, cluster.chunks[0].addr] {
        let refused = match connect(&identity, addr).await {
            Err(_) => true,
            // TLS 1.3 may complete the client side before the server rejects the certificate:
            // then the first request fails.
            Ok(conn) => send_raw::<Vec<VolumeInfo>>(
                &conn,
                &encode_frame(&MetaCall::untracked(req::ListVolumes.into())).unwrap(),
            )
            .await
            .is_none(),
        };
        assert!(refused, "a foreign certificate was accepted by {addr}");
    }
    // A client that trusts another CA refuses our servers.
    let wrong_trust =
        Identity::from_pem(&other_ca.cert_pem, &stranger.cert_pem, &stranger.key_pem).unwrap();
    assert!(connect(&wrong_trust, cluster.meta_addr).await.is_err());
    // A client certificate cannot act as a server name holder: the cluster client still works.
    let good = dfs_client::Client::connect(
        cluster.meta_addr,
        &cluster.certs.client_identity(),
        Default::default(),
    )
    .await;
    assert!(good.is_ok());
}

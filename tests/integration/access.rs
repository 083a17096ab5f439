//! Access control against real processes: client certificates limited to some volumes, read
//! only or read-write, refused by the metadata server and by the chunk servers alike, and
//! revocation.

use crate::cli::{fails_with, ok, run as dfs};
use crate::mount::cluster_with_volume;
use dfs_client::client::ClientOptions;
use dfs_client::Client;
use dfs_common::net::chunks::ChunkPool;
use dfs_common::net::endpoint::client_endpoint;
use dfs_common::net::tls::{Identity, TlsPaths};
use dfs_common::proto::chunk::{ShardKey, ShardOwner};
use dfs_common::FsError;
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs;
use std::path::Path;
use std::time::Duration;

const EACCES: i32 = 13;
const EROFS: i32 = 30;

fn fails(cluster: &ProcessCluster, args: &[&str], message: &str) {
    fails_with(cluster, args, 1, message);
}

async fn connect_as(cluster: &ProcessCluster, dir: &Path, name: &str) -> Client {
    let identity = Identity::load(&TlsPaths::in_dir(dir, name)).unwrap();
    Client::connect(cluster.meta_addr, &identity, ClientOptions::default())
        .await
        .unwrap()
}

fn mount_as(cluster: &ProcessCluster, volume: &str, name: &str, options: &str) -> Mount {
    Mount::new(cluster, volume, name, options)
        .unwrap_or_else(|e| panic!("mount {volume} as {name}: {e}\n{}", cluster.logs()))
}

#[test]
fn client_certificates_reach_only_their_volumes() {
    let cluster = cluster_with_volume();
    ok(&cluster, &["volume", "create", "secret", "--ec", "4+2"]);
    let admin_mount = mount_as(&cluster, "secret", "admin-secret", "");
    let hidden = random_bytes(300_000, 9);
    fs::write(admin_mount.path("hidden"), &hidden).unwrap();

    let out = ok(
        &cluster,
        &["client", "add", "alice", "--volume", "default", "--rw"],
    );
    assert!(
        out.contains("client alice may read and write default"),
        "{out}"
    );
    let bob_dir = cluster.dir.path().join("bob-certs");
    let bob_dir_arg = bob_dir.to_str().unwrap();
    ok(
        &cluster,
        &[
            "client",
            "add",
            "bob",
            "--volume",
            "default",
            "--ro",
            "--out",
            bob_dir_arg,
        ],
    );
    fails(
        &cluster,
        &["client", "add", "alice", "--volume", "default", "--rw"],
        "already exists",
    );
    fails(
        &cluster,
        &["client", "add", "carol", "--volume", "nosuch", "--ro"],
        "no volume named \"nosuch\"",
    );
    let usage = dfs(&cluster, &["client", "add", "dave", "--volume", "default"]);
    assert_eq!(usage.status.code(), Some(2), "--rw or --ro is required");

    // Alice reads and writes her volume through the kernel, and cannot mount the other.
    let alice = mount_as(&cluster, "default", "alice", "identity=alice");
    let data = random_bytes(2 << 20, 1);
    fs::write(alice.path("from-alice"), &data).unwrap();
    assert!(fs::read(alice.path("from-alice")).unwrap() == data);
    let err = Mount::new(&cluster, "secret", "alice-secret", "identity=alice")
        .err()
        .expect("alice must not mount volume secret");
    assert!(
        err.contains("no access to volume \"secret\"") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Bob's directory is ready to use as it is: reads work, changes are EROFS.
    let bob = mount_as(&cluster, "default", "bob", &format!("certs={bob_dir_arg}"));
    assert!(fs::read(bob.path("from-alice")).unwrap() == data);
    let err = fs::write(bob.path("from-bob"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    let err = fs::remove_file(bob.path("from-alice")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");

    // Through the library: the metadata server refuses the other volume, its inodes and
    // admin requests; listing shows only what alice may use.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = cluster_admin(&cluster).await;
        let secret = admin.volume("secret").await.unwrap();
        let hidden_attr = admin.lookup(secret.root, "hidden").await.unwrap();
        let layout = admin
            .layout(hidden_attr.ino, 0, hidden.len() as u64)
            .await
            .unwrap();

        let certs = &cluster.certs_dir;
        let client = connect_as(&cluster, certs, "alice").await;
        assert!(matches!(
            client.volume("secret").await,
            Err(FsError::Denied(_))
        ));
        // A name that does not exist is refused the same way: nothing leaks.
        assert!(matches!(
            client.volume("nosuch").await,
            Err(FsError::Denied(_))
        ));
        let names: Vec<String> = client
            .list_volumes()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, vec!["default".to_string()]);
        assert!(matches!(
            client.getattr(secret.root).await,
            Err(FsError::Denied(_))
        ));
        assert!(matches!(
            client.layout(hidden_attr.ino, 0, 4096).await,
            Err(FsError::Denied(_))
        ));
        assert!(matches!(
            client.cluster_status().await,
            Err(FsError::Denied(_))
        ));

        // The chunk servers refuse alice's reads and writes of the other volume's shards,
        // and serve her own.
        let identity = Identity::load(&TlsPaths::in_dir(certs, "alice")).unwrap();
        let pool = ChunkPool::new(client_endpoint(&identity).unwrap(), Duration::from_secs(10));
        let block = &layout.blocks[0];
        let shard = &block.shards[0];
        let key = ShardKey {
            block: block.block,
            index: 0,
        };
        let got = pool.get_shard(&shard.addr, key, 0, 16).await;
        assert!(matches!(got, Err(FsError::Denied(_))), "{got:?}");
        let owner = ShardOwner {
            volume: secret.id,
            policy: block.policy,
            block_len: 16,
        };
        let forged = ShardKey {
            block: block.block,
            index: 0,
        };
        let put = pool
            .put_shard(
                &shard.addr,
                forged,
                owner,
                no_capability(secret.id),
                vec![0u8; 4].into(),
            )
            .await;
        assert!(matches!(put, Err(FsError::Denied(_))), "{put:?}");
        let mine = client
            .lookup(client.volume("default").await.unwrap().root, "from-alice")
            .await
            .unwrap();
        let mine = client.layout(mine.ino, 0, 4096).await.unwrap();
        let b = &mine.blocks[0];
        let key = ShardKey {
            block: b.block,
            index: 0,
        };
        assert_eq!(
            pool.get_shard(&b.shards[0].addr, key, 0, 16).await.unwrap(),
            data[..16]
        );
    });

    // Admin commands need an administrator certificate; a server's is not one either.
    fails(
        &cluster,
        &["--identity", "alice", "volume", "create", "mine"],
        "administrator certificate",
    );
    fails(
        &cluster,
        &["--identity", "server", "volume", "list"],
        "server certificate may only make chunk-server calls",
    );

    // Revocation: alice's live mount is refused at its next request, and so is a new one.
    ok(&cluster, &["client", "revoke", "alice"]);
    let err = fs::read_dir(alice.path("")).and_then(|d| {
        d.count();
        fs::metadata(alice.path("new-name-never-cached"))
    });
    assert_eq!(
        err.unwrap_err().raw_os_error(),
        Some(EACCES),
        "revoked client still served"
    );
    let err = Mount::new(&cluster, "default", "alice2", "identity=alice")
        .err()
        .expect("a revoked client must not mount");
    assert!(err.contains("revoked"), "{err}");
    let list = ok(&cluster, &["client", "list"]);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("alice").contains("revoked"), "{list}");
    assert!(
        line("bob").contains("active") && line("bob").contains("default:ro"),
        "{list}"
    );
    fails(&cluster, &["client", "revoke", "nosuch"], "no client named");
    // Bob is unaffected.
    assert!(fs::read(bob.path("from-alice")).unwrap() == data);
}

async fn cluster_admin(cluster: &ProcessCluster) -> Client {
    Client::connect(
        cluster.meta_addr,
        &cluster.certs.client_identity(),
        ClientOptions::default(),
    )
    .await
    .unwrap()
}

/// A capability no metadata server issued.
fn no_capability(volume: dfs_common::VolumeId) -> dfs_common::capability::ShardCapability {
    dfs_common::capability::ShardCapability {
        volume,
        expires: dfs_common::Timestamp::now(),
        mac: [0; 32],
    }
}

//! Test harnesses for dfs.
//!
//! - [`TestCluster`]: metadata server and chunk servers as tasks in the test's runtime, on
//!   127.0.0.1 ports chosen at run time.
//! - [`process::ProcessCluster`]: the real binaries as child processes, for crash tests.
//!
//! Both clean up after themselves when dropped, also when a test fails.

pub mod netns;
pub mod process;

use dfs_client::client::ClientOptions;
use dfs_client::Client;
use dfs_common::fault::Faults;
use dfs_common::net::tls::{generate_ca, issue, Identity, PemPair, Role};
use dfs_common::proto::meta::VolumeInfo;
use dfs_common::{EcPolicy, ServerId};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long chunk servers may stay silent before the metadata server calls them down in tests.
pub const TEST_SERVER_TIMEOUT: Duration = Duration::from_secs(2);
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(200);
/// Repair scans in tests run this often.
pub const TEST_REPAIR_INTERVAL: Duration = Duration::from_millis(500);
/// Garbage is collected this long after it lost its last reference, in tests.
pub const TEST_GC_GRACE: Duration = Duration::from_secs(2);
/// Chunk servers reconcile this often in tests, deleting orphans older than the grace.
pub const TEST_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
pub const TEST_ORPHAN_GRACE: Duration = Duration::from_secs(3);

/// A CA with a metadata-server, a (chunk) server and an administrator certificate.
#[derive(Clone)]
pub struct Certs {
    pub ca: PemPair,
    pub meta: PemPair,
    pub server: PemPair,
    pub client: PemPair,
}

impl Certs {
    pub fn generate() -> Certs {
        let ca = generate_ca().expect("CA");
        let meta = issue(&ca, "test-meta", Role::Meta, &["127.0.0.1".into()]).expect("meta cert");
        let server =
            issue(&ca, "test-server", Role::Server, &["127.0.0.1".into()]).expect("server cert");
        // The harness's clients, CLI and mounts act as administrators.
        let client = issue(&ca, "test-admin", Role::Admin, &[]).expect("admin cert");
        Certs {
            ca,
            meta,
            server,
            client,
        }
    }

    pub fn meta_identity(&self) -> Identity {
        Identity::from_pairs(&self.ca, &self.meta).expect("meta identity")
    }

    pub fn server_identity(&self) -> Identity {
        Identity::from_pairs(&self.ca, &self.server).expect("server identity")
    }

    pub fn client_identity(&self) -> Identity {
        Identity::from_pairs(&self.ca, &self.client).expect("client identity")
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until exactly `n` chunk servers are up.
pub async fn wait_for_live_servers(client: &Client, n: usize) {
    wait_for(
        &format!("{n} live chunk servers"),
        Duration::from_secs(30),
        || async {
            let status = client.cluster_status().await.ok()?;
            (status.servers.iter().filter(|s| s.up).count() == n).then_some(())
        },
    )
    .await
}

struct Task {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Task {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

pub struct ChunkNode {
    pub id: ServerId,
    pub addr: SocketAddr,
    /// Where its metrics are served.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    task: Option<Task>,
}

/// A whole cluster inside the test's runtime.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub certs: Certs,
    pub meta_addr: SocketAddr,
    /// Where the metadata server's status page and metrics are served.
    pub meta_http: SocketAddr,
    meta: Option<Task>,
    pub chunks: Vec<ChunkNode>,
    /// Fault points of every server of this cluster and of the clients it makes.
    pub faults: Faults,
}

impl TestCluster {
    pub async fn start(chunk_servers: usize) -> TestCluster {
        Self::start_with(chunk_servers, |_| {}).await
    }

    /// Starts a cluster whose metadata server's configuration `tune` adjusts first.
    pub async fn start_with(
        chunk_servers: usize,
        tune: impl FnOnce(&mut dfs_meta::MetaConfig),
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = Certs::generate();
        let faults = Faults::enabled();
        let shutdown = CancellationToken::new();
        let mut config = dfs_meta::MetaConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            join: false,
            snapshot_every: dfs_meta::raft::state::SNAPSHOT_EVERY,
            snapshot_bytes: dfs_meta::raft::state::SNAPSHOT_EVERY_BYTES,
            log_memory: dfs_meta::raft::log::MEMORY_BUDGET,
            store_cache: dfs_meta::store::CACHE,
            data_dir: dir.path().join("meta"),
            identity: certs.meta_identity(),
            server_timeout: TEST_SERVER_TIMEOUT,
            lock_lease: dfs_meta::locks::DEFAULT_LEASE,
            orphan_hold: dfs_meta::orphans::DEFAULT_HOLD,
            min_free_space: dfs_meta::space::DEFAULT_RESERVE,
            repair: dfs_meta::repair::RepairConfig {
                interval: TEST_REPAIR_INTERVAL,
                gc_grace: TEST_GC_GRACE,
                ..Default::default()
            },
            http: Some("127.0.0.1:0".parse().unwrap()),
            faults: faults.clone(),
        };
        tune(&mut config);
        let meta = dfs_meta::start(config, shutdown.clone())
            .await
            .expect("metadata server starts");
        let mut cluster = TestCluster {
            meta_addr: meta.addr,
            meta_http: meta.http_addr.expect("HTTP configured"),
            meta: Some(Task {
                shutdown,
                task: meta.task,
            }),
            dir,
            certs,
            faults,
            chunks: Vec::new(),
        };
        for i in 0..chunk_servers {
            let data_dir = cluster.dir.path().join(format!("chunk{i}"));
            cluster.chunks.push(cluster.start_chunk(data_dir).await);
        }
        let client = cluster.client().await;
        wait_for_live_servers(&client, chunk_servers).await;
        cluster
    }

    async fn start_chunk(&self, data_dir: PathBuf) -> ChunkNode {
        let shutdown = CancellationToken::new();
        let running = dfs_chunk::start(
            dfs_chunk::ChunkConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                data_dir: data_dir.clone(),
                meta: vec![self.meta_addr],
                identity: self.certs.server_identity(),
                capacity: None,
                small_shard_slots: true,
                heartbeat_interval: TEST_HEARTBEAT,
                maintenance: dfs_chunk::MaintenanceConfig {
                    reconcile_interval: TEST_RECONCILE_INTERVAL,
                    orphan_grace: TEST_ORPHAN_GRACE,
                    ..Default::default()
                },
                http: Some("127.0.0.1:0".parse().unwrap()),
                faults: self.faults.clone(),
            },
            shutdown.clone(),
        )
        .await
        .expect("chunk server starts");
        ChunkNode {
            id: running.id,
            addr: running.addr,
            http: running.http_addr.expect("HTTP configured"),
            data_dir,
            task: Some(Task {
                shutdown,
                task: running.task,
            }),
        }
    }

    pub async fn client(&self) -> Client {
        self.client_with(ClientOptions {
            faults: self.faults.clone(),
            ..ClientOptions::default()
        })
        .await
    }

    pub async fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect(self.meta_addr, &self.certs.client_identity(), options)
            .await
            .expect("client connects")
    }

    pub async fn volume(
        &self,
        client: &Client,
        name: &str,
        policy: &str,
        block_size: u64,
    ) -> VolumeInfo {
        let policy: EcPolicy = policy.parse().unwrap();
        client
            .create_volume(name, policy, block_size)
            .await
            .expect("volume created")
    }

    /// Stops chunk server `i` (its data stays on disk).
    pub async fn stop_chunk(&mut self, i: usize) {
        if let Some(task) = self.chunks[i].task.take() {
            task.stop().await;
        }
    }

    /// Starts chunk server `i` again on its old data (on a new port).
    pub async fn restart_chunk(&mut self, i: usize) {
        self.stop_chunk(i).await;
        let node = self.start_chunk(self.chunks[i].data_dir.clone()).await;
        self.chunks[i] = node;
    }

    pub async fn stop_meta(&mut self) {
        if let Some(task) = self.meta.take() {
            task.stop().await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(t) = &self.meta {
            t.shutdown.cancel();
        }
        for c in &self.chunks {
            if let Some(t) = &c.task {
                t.shutdown.cancel();
            }
        }
    }
}

/// Deterministic pseudo-random bytes for test files.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; len];
    rng.fill_bytes(&mut buf);
    buf
}

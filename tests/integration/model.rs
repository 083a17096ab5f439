//! An fsx-style model test: a seeded random sequence of file operations on a live mount —
//! writes, reads, truncates, fallocate, mmap reads and writes, fsync, close and reopen — with
//! every byte read checked against an in-memory model, including reads through a second mount
//! (close-to-open) and through `dfs get`. One file grows to 64 MiB, another to 20,000 extents,
//! and one stays around the 64 KiB a file keeps in the metadata store.
//! The same model then runs on while a chunk server is killed and its shards are repaired.
//!
//! The seed is printed, and `DFS_MODEL_SEED` replays one; a mismatch panics with the seed and
//! the operations that led to it.

use crate::heal::{status, wait_fully_healthy, wait_until};
use crate::mount::{cluster_with_volume_on, fadvise};
use dfs_tests::process::{Mount, ProcessCluster};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The big file is written up to this size.
const BIG: u64 = 64 * MIB;
/// Operations of the first phase, and of the phase with a chunk server killed.
const OPS: usize = 20_000;
const OPS_DEGRADED: usize = 3_000;
/// The log file gets this many separate extents.
const LOG_EXTENTS: u64 = 20_000;

/// One file under test: its model, and the descriptor open on the first mount.
struct Subject {
    name: &'static str,
    model: Vec<u8>,
    file: Option<File>,
    /// Operations since the last fsync or close: another client may not see them yet.
    unsynced: bool,
    /// The random phase keeps the file within this size.
    limit: u64,
}

impl Subject {
    fn new(name: &'static str, limit: u64) -> Subject {
        Subject {
            name,
            model: Vec::new(),
            file: None,
            unsynced: false,
            limit,
        }
    }
}

struct Run {
    rng: SmallRng,
    seed: u64,
    a: Mount,
    b: Mount,
    files: Vec<Subject>,
    history: VecDeque<String>,
    ops: usize,
}

impl Run {
    fn note(&mut self, what: String) {
        if self.history.len() == 40 {
            self.history.pop_front();
        }
        self.history.push_back(what);
        self.ops += 1;
    }

    fn fail(&self, what: &str) -> ! {
        let history: Vec<&String> = self.history.iter().collect();
        panic!(
            "model mismatch after {} operations (DFS_MODEL_SEED={}): {what}\nlast operations:\n{:#?}",
            self.ops, self.seed, history
        );
    }

    fn check(&self, what: &str, got: &[u8], want: &[u8]) {
        if got != want {
            let first = got
                .iter()
                .zip(want)
                .position(|(g, w)| g != w)
                .unwrap_or(got.len().min(want.len()));
            self.fail(&format!(
                "{what}: {} bytes read, {} expected, first difference at +{first}",
                got.len(),
                want.len()
            ));
        }
    }

    fn open(&mut self, i: usize) -> &File {
        let path = self.a.path(self.files[i].name);
        let subject = &mut self.files[i];
        if subject.file.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            subject.file = Some(file);
        }
        subject.file.as_ref().expect("opened above")
    }

    fn write(&mut self, i: usize, at: u64, data: &[u8]) {
        self.note(format!("write {} {at}+{}", self.files[i].name, data.len()));
        if let Err(e) = self.open(i).write_all_at(data, at) {
            self.fail(&format!("write: {e}"));
        }
        let model = &mut self.files[i].model;
        let end = (at as usize) + data.len();
        if model.len() < end {
            model.resize(end, 0);
        }
        model[at as usize..end].copy_from_slice(data);
        self.files[i].unsynced = true;
    }

    fn read(&mut self, i: usize, at: u64, len: u64) {
        // The kernel keeps the pages this mount wrote: half the reads drop them first, so
        // that they reach the mount.
        let dropped = self.rng.random_bool(0.5);
        self.note(format!(
            "read {} {at}+{len}{}",
            self.files[i].name,
            if dropped { " (pages dropped)" } else { "" }
        ));
        if dropped {
            if let Err(e) = fadvise(self.open(i), libc::POSIX_FADV_DONTNEED) {
                self.fail(&format!("fadvise: {e}"));
            }
        }
        let size = self.files[i].model.len() as u64;
        let want_len = len.min(size.saturating_sub(at)) as usize;
        let mut got = vec![0u8; len as usize];
        let mut filled = 0;
        while filled < got.len() {
            match self.open(i).read_at(&mut got[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => self.fail(&format!("read: {e}")),
            }
        }
        got.truncate(filled);
        let want = &self.files[i].model[(at as usize).min(size as usize)..][..want_len];
        self.check("read", &got, want);
    }

    fn truncate(&mut self, i: usize, size: u64) {
        self.note(format!("truncate {} {size}", self.files[i].name));
        if let Err(e) = self.open(i).set_len(size) {
            self.fail(&format!("truncate: {e}"));
        }
        self.files[i].model.resize(size as usize, 0);
        self.files[i].unsynced = true;
    }

    fn fallocate(&mut self, i: usize, at: u64, len: u64) {
        self.note(format!("fallocate {} {at}+{len}", self.files[i].name));
        let fd = self.open(i).as_raw_fd();
        // SAFETY: fallocate on a descriptor this run owns.
        if unsafe { libc::fallocate(fd, 0, at as i64, len as i64) } != 0 {
            self.fail(&format!("fallocate: {}", std::io::Error::last_os_error()));
        }
        let model = &mut self.files[i].model;
        if (model.len() as u64) < at + len {
            model.resize((at + len) as usize, 0);
        }
        self.files[i].unsynced = true;
    }

    /// Maps up to 1 MiB of the file at a page boundary; reads it back, or writes into it.
    fn mmap(&mut self, i: usize, write: bool) {
        let size = self.files[i].model.len() as u64;
        if size == 0 {
            return;
        }
        let page = 4096;
        let at = self.rng.random_range(0..size) / page * page;
        let len = (size - at).min(MIB);
        self.note(format!(
            "mmap-{} {} {at}+{len}",
            if write { "write" } else { "read" },
            self.files[i].name
        ));
        let fd = self.open(i).as_raw_fd();
        // SAFETY: a fresh shared mapping of `len` bytes of a file this run owns, inside its
        // size; unmapped before the function returns.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                at as i64,
            )
        };
        if map == libc::MAP_FAILED {
            self.fail(&format!("mmap: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the mapping is `len` bytes long and live until munmap below.
        let bytes = unsafe { std::slice::from_raw_parts_mut(map as *mut u8, len as usize) };
        if write {
            let off = self.rng.random_range(0..len) as usize;
            let n = self.rng.random_range(1..=(len as usize - off).min(8192));
            self.rng.fill_bytes(&mut bytes[off..off + n]);
            let model = &mut self.files[i].model;
            model[at as usize + off..at as usize + off + n].copy_from_slice(&bytes[off..off + n]);
            // SAFETY: syncs the live mapping.
            if unsafe { libc::msync(map, len as usize, libc::MS_SYNC) } != 0 {
                self.fail(&format!("msync: {}", std::io::Error::last_os_error()));
            }
            self.files[i].unsynced = true;
        } else {
            let want = self.files[i].model[at as usize..(at + len) as usize].to_vec();
            let got = bytes.to_vec();
            // SAFETY: unmaps the mapping made above; `bytes` is not used after.
            unsafe { libc::munmap(map, len as usize) };
            self.check("mmap read", &got, &want);
            return;
        }
        // SAFETY: unmaps the mapping made above; `bytes` is not used after.
        unsafe { libc::munmap(map, len as usize) };
    }

    fn fsync(&mut self, i: usize) {
        self.note(format!("fsync {}", self.files[i].name));
        if let Err(e) = self.open(i).sync_all() {
            self.fail(&format!("fsync: {e}"));
        }
        self.files[i].unsynced = false;
    }

    fn close(&mut self, i: usize) {
        self.note(format!("close {}", self.files[i].name));
        if let Some(file) = self.files[i].file.take() {
            // Errors of earlier writes surface at close (as on NFS): fsync first to see them.
            if let Err(e) = file.sync_all() {
                self.fail(&format!("close: {e}"));
            }
        }
        self.files[i].unsynced = false;
    }

    /// Reads a range through the second mount, after making it visible (close-to-open).
    fn read_elsewhere(&mut self, i: usize) {
        if self.files[i].unsynced {
            self.fsync(i);
        }
        let size = self.files[i].model.len() as u64;
        let at = self.rng.random_range(0..=size);
        let len = self.rng.random_range(1..=256 * KIB);
        self.note(format!("read-b {} {at}+{len}", self.files[i].name));
        let file = File::open(self.b.path(self.files[i].name))
            .unwrap_or_else(|e| self.fail(&format!("open on mount b: {e}")));
        let meta = file.metadata().unwrap();
        if meta.len() != size {
            self.fail(&format!("mount b sees size {}, model {size}", meta.len()));
        }
        let want_len = len.min(size - at) as usize;
        let mut got = vec![0u8; want_len];
        if let Err(e) = file.read_exact_at(&mut got, at) {
            self.fail(&format!("read on mount b: {e}"));
        }
        let want = self.files[i].model[at as usize..][..want_len].to_vec();
        self.check("read through mount b", &got, &want);
    }

    /// Reads the whole file with `dfs get` (the client library, no mount).
    fn get(&mut self, cluster: &ProcessCluster, i: usize) {
        if self.files[i].unsynced {
            self.fsync(i);
        }
        self.note(format!("dfs-get {}", self.files[i].name));
        let out = cluster.dir.path().join("got");
        let status = cluster
            .cli()
            .args(["get", &format!("default:/{}", self.files[i].name)])
            .arg(&out)
            .output()
            .unwrap();
        if !status.status.success() {
            self.fail(&format!(
                "dfs get: {}",
                String::from_utf8_lossy(&status.stderr)
            ));
        }
        let got = fs::read(&out).unwrap();
        let want = self.files[i].model.clone();
        self.check("dfs get", &got, &want);
        fs::remove_file(&out).unwrap();
    }

    /// One random operation on a random file.
    fn step(&mut self, cluster: &ProcessCluster) {
        let i = self.rng.random_range(0..self.files.len());
        let size = self.files[i].model.len() as u64;
        let limit = self.files[i].limit;
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..=399 => {
                // Mostly small writes, near or past the end now and then.
                let len = if self.rng.random_bool(0.9) {
                    self.rng.random_range(1..=8 * KIB)
                } else {
                    self.rng.random_range(1..=512 * KIB)
                };
                let at = self.rng.random_range(0..=(size + 64 * KIB).min(limit));
                let len = len.min(limit.saturating_sub(at)).max(1);
                let mut data = vec![0u8; len as usize];
                self.rng.fill_bytes(&mut data);
                self.write(i, at, &data);
            }
            400..=699 => {
                let at = self.rng.random_range(0..=size);
                let len = self.rng.random_range(1..=256 * KIB);
                self.read(i, at, len);
            }
            700..=729 => {
                let to = self.rng.random_range(0..=(size + MIB).min(limit));
                self.truncate(i, to);
            }
            730..=749 => {
                let at = self.rng.random_range(0..=size);
                let len = self.rng.random_range(1..=256 * KIB);
                let len = len.min(limit.saturating_sub(at)).max(1);
                self.fallocate(i, at, len);
            }
            750..=789 => self.mmap(i, false),
            790..=819 => self.mmap(i, true),
            820..=899 => self.fsync(i),
            900..=959 => self.close(i),
            960..=997 => self.read_elsewhere(i),
            _ => self.get(cluster, i),
        }
    }
}

fn seed() -> u64 {
    std::env::var("DFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25_481_510_389)
}

/// A file of `LOG_EXTENTS` separate 97-byte records (3-byte holes between them), written
/// through the mount and synced every 500 records, then read back three ways.
fn fragmented_log(run: &mut Run, cluster: &ProcessCluster) {
    let i = run.files.len();
    run.files.push(Subject::new("log", u64::MAX));
    for n in 0..LOG_EXTENTS {
        let mut record = [0u8; 97];
        run.rng.fill_bytes(&mut record);
        run.write(i, n * 100, &record);
        if n % 500 == 499 {
            run.fsync(i);
        }
    }
    run.close(i);
    run.read(i, 0, LOG_EXTENTS * 100);
    run.read_elsewhere(i);
    run.get(cluster, i);
}

/// A log of 1,500 small records, each written at the file's end and synced: past the 128 KiB
/// a file may keep in the metadata store, its inline tail moves into a block, and the records
/// go on inline after it. Read back three ways.
fn synced_log(run: &mut Run, cluster: &ProcessCluster) {
    let i = run.files.len();
    run.files.push(Subject::new("synced", u64::MAX));
    let mut end = 0;
    for _ in 0..1500 {
        let mut record = vec![0u8; run.rng.random_range(60..=140)];
        run.rng.fill_bytes(&mut record);
        run.write(i, end, &record);
        run.fsync(i);
        end += record.len() as u64;
    }
    run.close(i);
    run.read(i, 0, end);
    run.read_elsewhere(i);
    run.get(cluster, i);
}

/// A file written to 64 MiB in 1 MiB pieces, read back whole through both paths.
fn big_file(run: &mut Run, cluster: &ProcessCluster) {
    let i = run.files.len();
    run.files.push(Subject::new("big", u64::MAX));
    let mut piece = vec![0u8; MIB as usize];
    for n in 0..BIG / MIB {
        run.rng.fill_bytes(&mut piece);
        run.write(i, n * MIB, &piece.clone());
    }
    run.close(i);
    for n in 0..BIG / (8 * MIB) {
        run.read(i, n * 8 * MIB, 8 * MIB);
    }
    run.get(cluster, i);
}

#[test]
fn random_operations_match_a_model_also_while_a_server_is_repaired() {
    // Seven servers for 4+2: with one dead, repair still has six to restore every block on.
    let mut cluster = cluster_with_volume_on(7);
    let seed = seed();
    println!("model test seed: DFS_MODEL_SEED={seed}");
    let mut run = Run {
        rng: SmallRng::seed_from_u64(seed),
        seed,
        a: Mount::new(&cluster, "default", "a", "").unwrap(),
        b: Mount::new(&cluster, "default", "b", "").unwrap(),
        // "s" stays around the 64 KiB a file keeps in the metadata store, crossing it both ways.
        files: vec![
            Subject::new("f0", 8 * MIB),
            Subject::new("f1", 8 * MIB),
            Subject::new("f2", 8 * MIB),
            Subject::new("s", 96 * KIB),
        ],
        history: VecDeque::new(),
        ops: 0,
    };
    for i in 0..run.files.len() {
        run.open(i);
        run.close(i);
    }
    big_file(&mut run, &cluster);
    fragmented_log(&mut run, &cluster);
    synced_log(&mut run, &cluster);
    // The random phase works on the first four files.
    run.files.truncate(4);
    let started = std::time::Instant::now();
    for _ in 0..OPS {
        run.step(&cluster);
    }
    println!(
        "model test: {OPS} random operations in {:?}",
        started.elapsed()
    );
    // A chunk server dies mid-sequence; reads rebuild around it, repair restores redundancy,
    // and the model keeps matching all along.
    for n in 0..OPS_DEGRADED {
        if n == OPS_DEGRADED / 4 {
            cluster.kill_chunk(0);
        }
        run.step(&cluster);
    }
    for i in 0..run.files.len() {
        run.close(i);
    }
    wait_until(
        &cluster,
        Duration::from_secs(120),
        "the dead server was never declared down",
        || status(&cluster).servers.iter().filter(|s| s.up).count() == 6,
    );
    wait_fully_healthy(&cluster, Duration::from_secs(180));
    for i in 0..run.files.len() {
        run.get(&cluster, i);
    }
    println!("model test: {} operations matched", run.ops);
}

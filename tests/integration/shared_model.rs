//! A model test of one directory tree shared by two mounts, as an NFS share is: a seeded random
//! sequence of namespace and small-file operations (create, write, append, truncate, rename, link,
//! unlink, symlink, mkdir, rmdir, chmod, times, extended attributes, reads and writes through files
//! held open), each made on one mount or the other and checked against an in-memory model. An
//! operation's outcome must be the model's (success, or the error a local file system gives). The
//! paths it touched, their parents and every name of the files it changed must then show as the
//! model says: at once on the mount that made the change, and on the other within [`LIMIT`]. The
//! mounts run with the default options: while they follow the change feed they keep names and
//! attributes for a 30 s lease, so only the feed (or, after a failover, its word that changes were
//! missed) can bring a change there in time. Every [`FULL_CHECK_EVERY`] operations, and at the end,
//! both mounts' whole trees are compared with the model, hard links by inode number too.
//!
//! The seed is printed, and `DFS_SHARED_MODEL_SEED` replays one; a mismatch panics with the
//! seed and the operations that led to it. `DFS_SHARED_MODEL_OPTIONS` gives the first test's
//! mounts other options (`writeback=0.1,attr_timeout=5`, say) to explore with.

use crate::mount::cluster_with_volume;
use dfs_tests::process::{Mount, ProcessCluster};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const OPS: usize = 1500;
const FULL_CHECK_EVERY: usize = 100;
/// Far below the mounts' 30 s leases, far above a change's trip on a busy host.
const LIMIT: Duration = Duration::from_secs(10);
/// Files held open at most.
const HELD: usize = 4;
/// The tree under test, in the volume's root.
const ROOT: &str = "shared";
/// Every directory the sequence may make: "" (the root), three below it, two below each.
const DIRS: [&str; 10] = [
    "", "d0", "d1", "d2", "d0/e0", "d0/e1", "d1/e0", "d1/e1", "d2/e0", "d2/e1",
];
const FILE_NAMES: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];
const LINK_NAMES: [&str; 2] = ["s0", "s1"];
const XATTRS: [&str; 2] = ["user.a", "user.b"];
const MODES: [u32; 5] = [0o600, 0o640, 0o644, 0o700, 0o755];
/// Where every symlink points: a directory that does not exist, so that an operation through
/// a symlink fails with ENOENT and never reaches outside the tree.
const DANGLING: &str = "/nonexistent-dfs-shared-model";

/// What a path names in the model.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// A regular file, by its index in [`Model::files`]; hard links share one.
    File(usize),
    Dir,
    Symlink(String),
}

#[derive(Debug)]
struct FileData {
    data: Vec<u8>,
    mode: u32,
    /// Extended attributes in the `user.` namespace.
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The modification time last set (seconds), while no write came after it.
    mtime: Option<i64>,
}

struct Model {
    /// Every path under the tree's root, "" being the root itself.
    paths: BTreeMap<String, Node>,
    files: Vec<FileData>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` is `dir` or lies below it.
fn within(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Model {
    fn is_dir(&self, path: &str) -> bool {
        self.paths.get(path) == Some(&Node::Dir)
    }

    fn children(&self, dir: &str) -> BTreeSet<String> {
        self.paths
            .keys()
            .filter(|p| !p.is_empty() && parent(p) == dir)
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect()
    }

    /// What making a new name at `path` gives: ENOENT without its directory, EEXIST if taken.
    fn may_add(&self, path: &str) -> Outcome {
        if !self.is_dir(parent(path)) {
            Err(libc::ENOENT)
        } else if self.paths.contains_key(path) {
            Err(libc::EEXIST)
        } else {
            Ok(())
        }
    }

    fn names_of(&self, id: usize) -> Vec<String> {
        self.paths
            .iter()
            .filter(|(_, n)| **n == Node::File(id))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// An operation's outcome: success, or an errno.
type Outcome = Result<(), i32>;

fn outcome(r: std::io::Result<()>) -> Outcome {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

struct Run {
    rng: SmallRng,
    seed: u64,
    mounts: [Mount; 2],
    model: Model,
    /// Mode bits a create leaves out.
    umask: u32,
    /// Files held open, at most [`HELD`].
    held: Vec<Held>,
    history: VecDeque<String>,
    ops: usize,
}

/// A file held open: on which mount, which model file (it lives on, with its data, after its
/// last name is gone), and whether it was opened to append.
struct Held {
    mount: usize,
    file: File,
    id: usize,
    append: bool,
}

impl Run {
    fn fail(&self, what: &str) -> ! {
        let history: Vec<&String> = self.history.iter().collect();
        // The model's tree beside what each mount shows of it: kinds, inodes and sizes.
        let shown = |m: usize, path: &str| match fs::symlink_metadata(self.path(m, path)) {
            Ok(meta) => format!("ino {} size {}", meta.ino(), meta.len()),
            Err(e) => e.to_string(),
        };
        let tree: Vec<String> = self
            .model
            .paths
            .iter()
            .map(|(p, n)| format!("{p:12} {n:?}: [{}] [{}]", shown(0, p), shown(1, p)))
            .collect();
        panic!(
            "shared model mismatch after {} operations (DFS_SHARED_MODEL_SEED={}): {what}\n\
             last operations:\n{history:#?}\nthe model (and each mount):\n{tree:#?}",
            self.ops, self.seed
        );
    }

    fn path(&self, m: usize, rel: &str) -> std::path::PathBuf {
        self.mounts[m].path(&join(ROOT, rel))
    }

    /// A directory path: mostly one that exists, now and then any (for ENOENT).
    fn some_dir(&mut self) -> String {
        let existing: Vec<&str> = DIRS
            .iter()
            .copied()
            .filter(|d| self.model.is_dir(d))
            .collect();
        if self.rng.random_bool(0.9) {
            existing[self.rng.random_range(0..existing.len())].to_string()
        } else {
            DIRS[self.rng.random_range(0..DIRS.len())].to_string()
        }
    }

    fn some_name(&mut self, names: &[&str]) -> String {
        let dir = self.some_dir();
        join(&dir, names[self.rng.random_range(0..names.len())])
    }

    /// An existing path other than the root that `pick` accepts, or else a file name that may
    /// not exist.
    fn some_existing(&mut self, pick: impl Fn(&Node) -> bool) -> String {
        let found: Vec<String> = self
            .model
            .paths
            .iter()
            .filter(|(p, n)| !p.is_empty() && pick(n))
            .map(|(p, _)| p.clone())
            .collect();
        if found.is_empty() || self.rng.random_bool(0.05) {
            self.some_name(&FILE_NAMES)
        } else {
            found[self.rng.random_range(0..found.len())].clone()
        }
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        // Mostly small files kept in the metadata store; now and then one past its 64 KiB.
        let len = if self.rng.random_bool(0.05) {
            self.rng.random_range(64 << 10..=200 << 10)
        } else {
            self.rng.random_range(0..=3000)
        };
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        data
    }

    /// Makes one random operation on a random mount and checks it.
    fn step(&mut self) {
        let m = self.rng.random_range(0..2);
        let roll = self.rng.random_range(0..120);
        // Paths whose view the operation may change, besides the names of `files`.
        let mut touched: Vec<String> = Vec::new();
        // Files whose data, attributes or links the operation may change.
        let mut files: Vec<usize> = Vec::new();
        let (what, want, got) = match roll {
            0..=19 => {
                let path = self.some_name(&FILE_NAMES);
                let data = self.random_bytes();
                // A symlink's target never exists (see [`DANGLING`]), and its directory neither.
                let want = match self.model.paths.get(&path) {
                    _ if !self.model.is_dir(parent(&path)) => Err(libc::ENOENT),
                    Some(Node::Symlink(_)) => Err(libc::ENOENT),
                    _ => Ok(()),
                };
                // Now and then as `tar x` does: the times set before the close, while the
                // written bytes may still wait in the mount.
                let mtime = self
                    .rng
                    .random_bool(0.3)
                    .then(|| self.rng.random_range(1_000_000_000..1_500_000_000));
                let p = self.path(m, &path);
                let got = outcome(
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o644)
                        .open(&p)
                        .and_then(|mut f| {
                            f.write_all(&data)?;
                            if let Some(t) = mtime {
                                f.set_times(times(t))?;
                            }
                            close(f)
                        }),
                );
                if want.is_ok() {
                    let id = match self.model.paths.get(&path) {
                        Some(Node::File(id)) => *id,
                        _ => {
                            self.model.files.push(FileData {
                                data: Vec::new(),
                                mode: 0o644 & !self.umask,
                                xattrs: BTreeMap::new(),
                                mtime: None,
                            });
                            let id = self.model.files.len() - 1;
                            self.model.paths.insert(path.clone(), Node::File(id));
                            id
                        }
                    };
                    self.model.files[id].data = data.clone();
                    self.model.files[id].mtime = mtime;
                    files.push(id);
                }
                touched.push(path.clone());
                let what = format!("write {path} ({} bytes, mtime {mtime:?})", data.len());
                (what, want, got)
            }
            20..=29 => {
                let path = self.some_existing(|n| matches!(n, Node::File(_)));
                let mut data = self.random_bytes();
                data.truncate(self.rng.random_range(1..=4000));
                let p = self.path(m, &path);
                let got = outcome(OpenOptions::new().append(true).open(&p).and_then(|mut f| {
                    f.write_all(&data)?;
                    close(f)
                }));
                let want = match self.model.paths.get(&path) {
                    Some(Node::File(id)) => {
                        let id = *id;
                        self.model.files[id].data.extend_from_slice(&data);
                        self.model.files[id].mtime = None;
                        files.push(id);
                        Ok(())
                    }
                    _ => Err(libc::ENOENT),
                };
                (format!("append {path} ({} bytes)", data.len()), want, got)
            }
            30..=35 => {
                let path = self.some_existing(|n| matches!(n, Node::File(_)));
                let to = self.rng.random_range(0..=100_000usize);
                let p = self.path(m, &path);
                let got = outcome(OpenOptions::new().write(true).open(&p).and_then(|f| {
                    f.set_len(to as u64)?;
                    close(f)
                }));
                let want = match self.model.paths.get(&path) {
                    Some(Node::File(id)) => {
                        let id = *id;
                        self.model.files[id].data.resize(to, 0);
                        self.model.files[id].mtime = None;
                        files.push(id);
                        Ok(())
                    }
                    _ => Err(libc::ENOENT),
                };
                (format!("truncate {path} to {to}"), want, got)
            }
            36..=51 => return self.rename(m),
            52..=59 => {
                let src = self.some_existing(|n| matches!(n, Node::File(_)));
                if matches!(self.model.paths.get(&src), Some(Node::Symlink(_))) {
                    // A hard link to a symlink would share its inode, which the model does
                    // not follow for symlinks (a rename between the two would do nothing).
                    return;
                }
                let dst = self.some_name(&FILE_NAMES);
                let got = outcome(fs::hard_link(self.path(m, &src), self.path(m, &dst)));
                let want = match (
                    self.model.paths.get(&src).cloned(),
                    self.model.may_add(&dst),
                ) {
                    (None, _) => Err(libc::ENOENT),
                    (Some(_), Err(e)) => Err(e),
                    (Some(node), Ok(())) => {
                        if let Node::File(id) = node {
                            files.push(id);
                        }
                        self.model.paths.insert(dst.clone(), node);
                        Ok(())
                    }
                };
                touched.extend([src.clone(), dst.clone()]);
                (format!("link {src} {dst}"), want, got)
            }
            60..=71 => {
                let path = self.some_existing(|n| !matches!(n, Node::Dir));
                let got = outcome(fs::remove_file(self.path(m, &path)));
                let want = match self.model.paths.get(&path).cloned() {
                    None => Err(libc::ENOENT),
                    Some(Node::Dir) => Err(libc::EISDIR),
                    Some(node) => {
                        if let Node::File(id) = node {
                            files.push(id);
                        }
                        self.model.paths.remove(&path);
                        Ok(())
                    }
                };
                touched.push(path.clone());
                (format!("unlink {path}"), want, got)
            }
            72..=75 => {
                let path = self.some_name(&LINK_NAMES);
                let target = format!("{DANGLING}/{}", self.some_name(&FILE_NAMES));
                let got = outcome(std::os::unix::fs::symlink(&target, self.path(m, &path)));
                let want = self.model.may_add(&path);
                if want.is_ok() {
                    self.model
                        .paths
                        .insert(path.clone(), Node::Symlink(target.clone()));
                }
                touched.push(path.clone());
                (format!("symlink {path} -> {target}"), want, got)
            }
            76..=83 => {
                let path = DIRS[self.rng.random_range(1..DIRS.len())].to_string();
                let got = outcome(fs::create_dir(self.path(m, &path)));
                let want = self.model.may_add(&path);
                if want.is_ok() {
                    self.model.paths.insert(path.clone(), Node::Dir);
                }
                touched.push(path.clone());
                (format!("mkdir {path}"), want, got)
            }
            84..=89 => {
                let path = DIRS[self.rng.random_range(1..DIRS.len())].to_string();
                let got = outcome(fs::remove_dir(self.path(m, &path)));
                let want = match self.model.paths.get(&path) {
                    None => Err(libc::ENOENT),
                    Some(Node::Dir) if !self.model.children(&path).is_empty() => {
                        Err(libc::ENOTEMPTY)
                    }
                    Some(Node::Dir) => {
                        self.model.paths.remove(&path);
                        Ok(())
                    }
                    Some(_) => Err(libc::ENOTDIR),
                };
                touched.push(path.clone());
                (format!("rmdir {path}"), want, got)
            }
            90..=94 => {
                let path = self.some_existing(|n| matches!(n, Node::File(_)));
                let mode = MODES[self.rng.random_range(0..MODES.len())];
                let got = outcome(fs::set_permissions(
                    self.path(m, &path),
                    fs::Permissions::from_mode(mode),
                ));
                let want = match self.model.paths.get(&path) {
                    Some(Node::File(id)) => {
                        let id = *id;
                        self.model.files[id].mode = mode;
                        files.push(id);
                        Ok(())
                    }
                    _ => Err(libc::ENOENT),
                };
                touched.push(path.clone());
                (format!("chmod {path} {mode:o}"), want, got)
            }
            95..=96 => return self.hold(m),
            97 => return self.read_held(),
            110..=114 if !self.held.is_empty() => {
                // A write through a file held open, synced: it may have no name left.
                let i = self.rng.random_range(0..self.held.len());
                let (hm, id, append) = (self.held[i].mount, self.held[i].id, self.held[i].append);
                let size = self.model.files[id].data.len();
                // An O_APPEND descriptor writes at the end as the cluster has it, whatever
                // the offset (and whichever mount made the file longer).
                let at = match append {
                    true => size,
                    false => self.rng.random_range(0..=size),
                };
                let mut data = vec![0u8; self.rng.random_range(1..=3000)];
                self.rng.fill_bytes(&mut data);
                let file = &self.held[i].file;
                let got = outcome(
                    file.write_all_at(&data, at as u64)
                        .and_then(|()| file.sync_data()),
                );
                let model = &mut self.model.files[id].data;
                if model.len() < at + data.len() {
                    model.resize(at + data.len(), 0);
                }
                model[at..at + data.len()].copy_from_slice(&data);
                self.model.files[id].mtime = None;
                files.push(id);
                self.finish(
                    hm,
                    format!(
                        "write held file {id}{} at {at} ({} bytes), fsync",
                        if append { " (O_APPEND)" } else { "" },
                        data.len()
                    ),
                    Ok(()),
                    got,
                    touched,
                    files,
                );
                return;
            }
            115..=119 => {
                let path = self.some_existing(|n| matches!(n, Node::File(_)));
                let t = self.rng.random_range(1_000_000_000..1_500_000_000);
                let got =
                    outcome(File::open(self.path(m, &path)).and_then(|f| f.set_times(times(t))));
                let want = match self.model.paths.get(&path) {
                    Some(Node::File(id)) => {
                        let id = *id;
                        self.model.files[id].mtime = Some(t);
                        files.push(id);
                        Ok(())
                    }
                    _ => Err(libc::ENOENT),
                };
                touched.push(path.clone());
                (format!("set times of {path} to {t}"), want, got)
            }
            98..=105 => {
                let path = self.some_existing(|n| matches!(n, Node::File(_)));
                let name = XATTRS[self.rng.random_range(0..XATTRS.len())];
                let p = self.path(m, &path);
                let set = self.rng.random_bool(0.7);
                let mut value = vec![0u8; self.rng.random_range(0..=40)];
                self.rng.fill_bytes(&mut value);
                let got = if set {
                    outcome(crate::sharing::set_xattr(&p, name, &value))
                } else {
                    outcome(removexattr(&p, name))
                };
                let want = match self.model.paths.get(&path) {
                    Some(Node::File(id)) => {
                        let id = *id;
                        files.push(id);
                        let xattrs = &mut self.model.files[id].xattrs;
                        if set {
                            xattrs.insert(name.to_string(), value.clone());
                            Ok(())
                        } else if xattrs.remove(name).is_some() {
                            Ok(())
                        } else {
                            Err(libc::ENODATA)
                        }
                    }
                    _ => Err(libc::ENOENT),
                };
                touched.push(path.clone());
                let what = match set {
                    true => format!("setxattr {path} {name} ({} bytes)", value.len()),
                    false => format!("removexattr {path} {name}"),
                };
                (what, want, got)
            }
            _ => {
                // No change: a read through either mount must find what the model holds.
                let path = self.some_existing(|n| matches!(n, Node::File(_)));
                self.note(format!("read {path} on mount {m}"));
                if let Err(e) = self.check_path(m, &path) {
                    self.fail(&e);
                }
                return;
            }
        };
        self.finish(m, what, want, got, touched, files);
    }

    /// Renames a file, a symlink or a directory, over whatever the model says the result is.
    fn rename(&mut self, m: usize) {
        let src = self.some_existing(|_| true);
        let dst = match self.model.paths.get(&src) {
            // A directory moves within its own depth, so no move can put it inside itself.
            Some(Node::Dir) if !src.contains('/') => DIRS[self.rng.random_range(1..4)].to_string(),
            Some(Node::Dir) => DIRS[self.rng.random_range(4..DIRS.len())].to_string(),
            _ if self.rng.random_bool(0.8) => self.some_name(&FILE_NAMES),
            _ => self.some_name(&LINK_NAMES),
        };
        let got = outcome(fs::rename(self.path(m, &src), self.path(m, &dst)));
        let mut files = Vec::new();
        for p in [&src, &dst] {
            if let Some(Node::File(id)) = self.model.paths.get(p) {
                files.push(*id);
            }
        }
        let src_node = self.model.paths.get(&src).cloned();
        let dst_node = self.model.paths.get(&dst).cloned();
        let want = match (&src_node, &dst_node) {
            (None, _) => Err(libc::ENOENT),
            _ if !self.model.is_dir(parent(&dst)) => Err(libc::ENOENT),
            _ if src == dst => Ok(()),
            // Two names of one file: rename does nothing and succeeds.
            (Some(Node::File(a)), Some(Node::File(b))) if a == b => Ok(()),
            (Some(Node::Dir), Some(Node::Dir)) if !self.model.children(&dst).is_empty() => {
                Err(libc::ENOTEMPTY)
            }
            (Some(Node::Dir), Some(n)) if *n != Node::Dir => Err(libc::ENOTDIR),
            (Some(n), Some(Node::Dir)) if *n != Node::Dir => Err(libc::EISDIR),
            _ => {
                self.model.paths.remove(&dst);
                let moved: Vec<(String, Node)> = self
                    .model
                    .paths
                    .iter()
                    .filter(|(p, _)| within(p, &src))
                    .map(|(p, n)| (p.clone(), n.clone()))
                    .collect();
                for (p, n) in moved {
                    self.model.paths.remove(&p);
                    self.model
                        .paths
                        .insert(format!("{dst}{}", &p[src.len()..]), n);
                }
                Ok(())
            }
        };
        // A rejected rename over a non-empty directory may say EEXIST too (POSIX).
        let got = match (got, want) {
            (Err(libc::EEXIST), Err(libc::ENOTEMPTY)) => Err(libc::ENOTEMPTY),
            (got, _) => got,
        };
        let mut touched = vec![src.clone(), dst.clone()];
        if src_node == Some(Node::Dir) && want.is_ok() {
            // Everything below a moved directory has a new path.
            touched.extend(self.model.paths.keys().filter(|p| within(p, &dst)).cloned());
        }
        self.finish(m, format!("rename {src} {dst}"), want, got, touched, files);
    }

    /// Opens a file on mount `m` and keeps it open (at most [`HELD`] at once), for reading
    /// and writing, one in three to append (as a log shared by several hosts is).
    fn hold(&mut self, m: usize) {
        let path = self.some_existing(|n| matches!(n, Node::File(_)));
        let append = self.rng.random_ratio(1, 3);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .append(append)
            .open(self.path(m, &path));
        self.note(format!(
            "hold {path} open on mount {m}{}: {:?}",
            if append { " to append" } else { "" },
            opened.as_ref().err()
        ));
        match (opened, self.model.paths.get(&path)) {
            (Ok(file), Some(Node::File(id))) => {
                if self.held.len() == HELD {
                    self.held.remove(0);
                }
                self.held.push(Held {
                    mount: m,
                    file,
                    id: *id,
                    append,
                });
            }
            (Err(e), None | Some(Node::Symlink(_))) if e.raw_os_error() == Some(libc::ENOENT) => {}
            (got, want) => self.fail(&format!(
                "open {path}: got {:?}, the model has {want:?}",
                got.map(|_| ())
            )),
        }
    }

    /// Reads a held file whole through its descriptor: what the model holds, its names and
    /// data as changed since on either mount (within [`LIMIT`]), even with no name left.
    fn read_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.held.len());
        let (m, id) = (self.held[i].mount, self.held[i].id);
        self.note(format!("read held file {id} on mount {m}"));
        let deadline = Instant::now() + LIMIT;
        loop {
            let file = &self.held[i].file;
            let want = &self.model.files[id];
            let links = self.model.names_of(id).len() as u64;
            let mut got = vec![0u8; want.data.len() + 1];
            let seen = file.metadata().map(|meta| (meta.len(), meta.nlink()));
            let read = file.read_at(&mut got, 0).map(|n| got.truncate(n));
            let differs = match (seen, read) {
                (Ok((len, nlink)), Ok(())) if len == want.data.len() as u64 && nlink == links => {
                    (got != want.data).then(|| differences(&got, &want.data))
                }
                (Ok((len, nlink)), Ok(())) => Some(format!(
                    "size {len} and {nlink} links, the model {} and {links}",
                    want.data.len()
                )),
                (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            };
            match differs {
                None => return,
                Some(e) if Instant::now() >= deadline => self.fail(&format!(
                    "held file {id} on mount {m}, {LIMIT:?} after the last change: {e}"
                )),
                Some(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Closes every held file, checking what each close says.
    fn let_go_of_held(&mut self) {
        for Held {
            mount: m, file, id, ..
        } in std::mem::take(&mut self.held)
        {
            self.note(format!("close held file {id} on mount {m}"));
            if let Err(e) = close(file) {
                self.fail(&format!("close of held file {id} on mount {m}: {e}"));
            }
        }
    }

    fn note(&mut self, what: String) {
        if self.history.len() == 40 {
            self.history.pop_front();
        }
        self.history.push_back(what);
        self.ops += 1;
    }

    /// Checks an operation's outcome, then what it changed as both mounts see it.
    fn finish(
        &mut self,
        m: usize,
        what: String,
        want: Outcome,
        got: Outcome,
        touched: Vec<String>,
        files: Vec<usize>,
    ) {
        self.note(format!("{what} on mount {m}: {got:?}"));
        if got != want {
            self.fail(&format!("{what}: got {got:?}, the model says {want:?}"));
        }
        let mut paths: BTreeSet<String> = BTreeSet::new();
        for p in touched {
            paths.insert(parent(&p).to_string());
            paths.insert(p);
        }
        for id in files {
            paths.extend(self.model.names_of(id));
        }
        // The mount that made the change shows it at once; the other within the limit.
        for p in &paths {
            if let Err(e) = self.check_path(m, p) {
                self.fail(&format!("after {what}, on the mount that made it: {e}"));
            }
        }
        let other = 1 - m;
        for p in &paths {
            self.settle(other, p, &what);
        }
    }

    /// Waits until mount `m` shows `path` as the model says, for at most [`LIMIT`].
    fn settle(&self, m: usize, path: &str, what: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            match self.check_path(m, path) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => self.fail(&format!(
                    "after {what}, mount {m} still shows, {LIMIT:?} later: {e}"
                )),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Whether mount `m` shows `path` as the model says; what differs if not.
    fn check_path(&self, m: usize, path: &str) -> Result<(), String> {
        let p = self.path(m, path);
        let meta = fs::symlink_metadata(&p);
        let node = self.model.paths.get(path);
        let meta = match (node, meta) {
            (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            (None, Ok(meta)) => {
                return Err(format!(
                    "{path}: a {:?} that should not exist",
                    meta.file_type()
                ))
            }
            (_, Err(e)) => return Err(format!("{path}: {e}")),
            (Some(_), Ok(meta)) => meta,
        };
        match node.expect("matched above") {
            Node::Dir => {
                if !meta.is_dir() {
                    return Err(format!("{path}: not a directory"));
                }
                let got: BTreeSet<String> = fs::read_dir(&p)
                    .and_then(|d| {
                        d.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                            .collect()
                    })
                    .map_err(|e| format!("{path}: listing: {e}"))?;
                let want = self.model.children(path);
                if got != want {
                    return Err(format!("{path}/ lists {got:?}, the model {want:?}"));
                }
            }
            Node::Symlink(target) => {
                if !meta.file_type().is_symlink() {
                    return Err(format!("{path}: not a symlink"));
                }
                let got = fs::read_link(&p).map_err(|e| format!("{path}: readlink: {e}"))?;
                if got.to_str() != Some(target.as_str()) {
                    return Err(format!("{path}: points to {got:?}, the model to {target}"));
                }
            }
            Node::File(id) => {
                let want = &self.model.files[*id];
                let links = self.model.names_of(*id).len() as u64;
                if !meta.is_file() {
                    return Err(format!("{path}: not a file"));
                }
                if meta.len() != want.data.len() as u64 {
                    return Err(format!(
                        "{path}: size {}, the model {}",
                        meta.len(),
                        want.data.len()
                    ));
                }
                if meta.mode() & 0o7777 != want.mode {
                    return Err(format!(
                        "{path}: mode {:o}, the model {:o}",
                        meta.mode() & 0o7777,
                        want.mode
                    ));
                }
                if let Some(t) = want.mtime {
                    if (meta.mtime(), meta.mtime_nsec()) != (t, 0) {
                        return Err(format!(
                            "{path}: mtime {}.{:09}, the model {t}",
                            meta.mtime(),
                            meta.mtime_nsec()
                        ));
                    }
                }
                if meta.nlink() != links {
                    return Err(format!("{path}: {} links, the model {links}", meta.nlink()));
                }
                let xattrs = xattrs(&p).map_err(|e| format!("{path}: xattrs: {e}"))?;
                if xattrs != want.xattrs {
                    return Err(format!(
                        "{path}: extended attributes {xattrs:?}, the model {:?}",
                        want.xattrs
                    ));
                }
                let got = fs::read(&p).map_err(|e| format!("{path}: read: {e}"))?;
                if got != want.data {
                    let first = got
                        .iter()
                        .zip(&want.data)
                        .position(|(g, w)| g != w)
                        .unwrap_or(got.len().min(want.data.len()));
                    return Err(format!(
                        "{path}: {} bytes read, the model {}, first difference at +{first}",
                        got.len(),
                        want.data.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Compares both mounts' whole trees with the model, at once (the second within [`LIMIT`]
    /// if `settle`), and the names of each file by inode number.
    fn check_all(&self, settle: bool) {
        for m in 0..2 {
            for path in self.model.paths.keys() {
                if settle && m == 1 {
                    self.settle(m, path, "the whole tree");
                } else if let Err(e) = self.check_path(m, path) {
                    self.fail(&format!("whole tree on mount {m}: {e}"));
                }
            }
            let mut inodes: BTreeMap<usize, u64> = BTreeMap::new();
            for (path, node) in &self.model.paths {
                let Node::File(id) = node else { continue };
                let ino = fs::symlink_metadata(self.path(m, path))
                    .unwrap_or_else(|e| self.fail(&format!("{path}: {e}")))
                    .ino();
                if *inodes.entry(*id).or_insert(ino) != ino {
                    self.fail(&format!(
                        "mount {m}: {path} is inode {ino}, another name of its file {}",
                        inodes[id]
                    ));
                }
            }
        }
    }
}

/// Where `got` differs from the model's `want` (of the same length): which bytes, and the
/// first few of each.
fn differences(got: &[u8], want: &[u8]) -> String {
    let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    let first = differ.first().copied().unwrap_or(0);
    let end = (first + 16).min(got.len());
    format!(
        "{} bytes read, {} differ from the model's (at {first}..={}); from {first}: {:?}, the model {:?}",
        got.len(),
        differ.len(),
        differ.last().copied().unwrap_or(0),
        &got[first..end],
        &want[first..end]
    )
}

/// Closes `file`, with what `close(2)` says: a mount reports a failed flush there (dropping
/// a `File` ignores it).
fn close(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken from the file, which will not close it again.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Access and modification times both `secs` after the epoch.
fn times(secs: i64) -> fs::FileTimes {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs as u64);
    fs::FileTimes::new().set_accessed(t).set_modified(t)
}

fn removexattr(path: &Path, name: &str) -> std::io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a test path");
    let name = CString::new(name).expect("no NUL in a name");
    // SAFETY: both strings are NUL-terminated.
    match unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A file's `user.` extended attributes and their values.
fn xattrs(path: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a test path");
    let mut names = vec![0u8; 4096];
    // SAFETY: the path is NUL-terminated and the buffer valid for its length.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut found = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let name = String::from_utf8_lossy(name).into_owned();
        let value = crate::sharing::get_xattr(path, &name)?;
        found.insert(name, value);
    }
    Ok(found)
}

impl Drop for Run {
    fn drop(&mut self) {
        // Closed before the mounts go, also when a check failed.
        self.held.clear();
    }
}

fn seed() -> u64 {
    std::env::var("DFS_SHARED_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(77_310_442_561)
}

/// The process's umask, from `/proc/self/status` (setting it to read it would race with
/// other tests' creates).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// Runs `ops` random operations on two mounts of `volume` made with `options`, calling
/// `between` with the cluster, the run and the count of operations made after each one.
fn run(
    cluster: &mut ProcessCluster,
    volume: &str,
    options: &str,
    ops: usize,
    mut between: impl FnMut(&mut ProcessCluster, &mut Run, usize),
) {
    let seed = seed();
    println!("shared model test seed: DFS_SHARED_MODEL_SEED={seed}");
    let a = Mount::new(cluster, volume, "a", options).unwrap();
    let b = Mount::new(cluster, volume, "b", options).unwrap();
    fs::create_dir(a.path(ROOT)).unwrap();
    let mut run = Run {
        rng: SmallRng::seed_from_u64(seed),
        seed,
        mounts: [a, b],
        model: Model {
            paths: BTreeMap::from([(String::new(), Node::Dir)]),
            files: Vec::new(),
        },
        umask: umask(),
        held: Vec::new(),
        history: VecDeque::new(),
        ops: 0,
    };
    let started = Instant::now();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run.check_all(true);
        for n in 1..=ops {
            run.step();
            if n % FULL_CHECK_EVERY == 0 {
                run.check_all(false);
            }
            between(cluster, &mut run, n);
        }
        run.check_all(false);
    }));
    if let Err(failure) = checked {
        // The servers' and mounts' logs say what happened meanwhile.
        println!("{}", cluster.logs());
        std::panic::resume_unwind(failure);
    }
    println!(
        "shared model test: {} operations matched in {:?}; {} paths at the end",
        run.ops,
        started.elapsed(),
        run.model.paths.len()
    );
}

#[test]
fn random_operations_on_two_mounts_of_one_tree_match_a_model() {
    let options = std::env::var("DFS_SHARED_MODEL_OPTIONS").unwrap_or_default();
    run(
        &mut cluster_with_volume(),
        "default",
        &options,
        OPS,
        |_, _, _| {},
    );
}

/// The same with the one metadata server SIGKILLed and started again a third of the way
/// through: every operation acknowledged before survives (the log on disk), the mounts carry
/// on once it is back, and its new change feed tells them they missed changes. The files
/// held open are closed first: the new server is a child of this process, which inherits
/// them and closes them at its `exec`, after this process has carried on (a `vfork` parent
/// resumes before the child's descriptors close). Such a close flushes what this process
/// wrote since, which needs the metadata server that the `exec` is starting: both would
/// wait until the mount gives up on the server (60 s), and the failed flush would be
/// reported at this process's next fsync.
#[test]
fn random_operations_on_two_mounts_match_a_model_across_a_metadata_server_restart() {
    let ops = OPS / 2;
    let mut cluster = cluster_with_volume();
    run(&mut cluster, "default", "", ops, |cluster, run, n| {
        if n == ops / 3 {
            run.let_go_of_held();
            cluster.restart_member(0);
        }
    });
}

/// The same in a group of three metadata servers, where mounts get no open delegations and a
/// file unlinked while open lives on only through the mounts' reports. A third of the way
/// through, the leader is killed (the mounts carry on with a new one, which has a change feed
/// of its own); two thirds through, it comes back as a follower. The mounts keep names and
/// attributes for 60 s (`attr_timeout`, longer than the lease): what the kernel holds of
/// changes made while the feed moved to the new leader goes only when that feed tells the
/// mounts they missed changes.
#[test]
fn random_operations_on_two_mounts_match_a_model_in_a_group_of_three_through_a_failover() {
    let ops = OPS / 2;
    let mut cluster = crate::group::group_of_three(|_| {});
    run(
        &mut cluster,
        "v",
        "attr_timeout=60",
        ops,
        |cluster, _, n| {
            if n == ops / 3 {
                cluster.kill_member(0);
            } else if n == 2 * ops / 3 {
                cluster.restart_member(0);
            }
        },
    );
}

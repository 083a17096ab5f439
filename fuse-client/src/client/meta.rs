//! Typed wrappers for the metadata calls, and path resolution for tools that work with paths.

use super::Client;
use dfs_common::proto::meta::*;
use dfs_common::{EcPolicy, FsError, FsResult, InodeId, ServerId};

impl Client {
    pub async fn create_volume(
        &self,
        name: &str,
        policy: EcPolicy,
        block_size: u64,
    ) -> FsResult<VolumeInfo> {
        self.create_volume_with(name, policy, block_size, VolumeLimits::default())
            .await
    }

    pub async fn create_volume_with(
        &self,
        name: &str,
        policy: EcPolicy,
        block_size: u64,
        limits: VolumeLimits,
    ) -> FsResult<VolumeInfo> {
        self.call(req::CreateVolume {
            name: name.into(),
            policy,
            block_size,
            limits,
        })
        .await
    }

    /// Changes a volume's quotas or read-only flag.
    pub async fn set_volume(&self, name: &str, change: VolumeChange) -> FsResult<VolumeInfo> {
        self.call(req::SetVolume {
            name: name.into(),
            change,
        })
        .await
    }

    /// Registers a client certificate by fingerprint with rights to volumes (name, read-write).
    pub async fn add_client(
        &self,
        name: &str,
        fingerprint: [u8; 32],
        volumes: Vec<(String, bool)>,
    ) -> FsResult<()> {
        self.call(req::AddClient {
            name: name.into(),
            fingerprint,
            volumes,
        })
        .await
    }

    pub async fn revoke_client(&self, name: &str) -> FsResult<()> {
        self.call(req::RevokeClient { name: name.into() }).await
    }

    pub async fn list_clients(&self) -> FsResult<Vec<ClientInfo>> {
        self.call(req::ListClients).await
    }

    /// One page of a volume check (`dfs fsck`).
    pub async fn fsck_page(&self, volume: &str, from: Option<FsckCursor>) -> FsResult<FsckPage> {
        self.call(req::Fsck {
            volume: volume.into(),
            from,
        })
        .await
    }

    /// Has the chunk server at `addr` re-read shard `key` and check all its checksums.
    pub async fn verify_shard(
        &self,
        addr: &str,
        key: dfs_common::proto::chunk::ShardKey,
    ) -> FsResult<()> {
        match self
            .inner
            .chunks
            .request(
                addr,
                &dfs_common::proto::chunk::ChunkRequest::Verify { key },
            )
            .await?
        {
            dfs_common::proto::chunk::ChunkReply::Verified => Ok(()),
            other => Err(FsError::protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Deletes a volume; with `force`, everything in it too.
    pub async fn delete_volume(&self, name: &str, force: bool) -> FsResult<()> {
        self.call(req::DeleteVolume {
            name: name.into(),
            force,
        })
        .await
    }

    pub async fn list_volumes(&self) -> FsResult<Vec<VolumeInfo>> {
        let volumes = self.call(req::ListVolumes).await?;
        self.remember_volumes(&volumes);
        Ok(volumes)
    }

    pub async fn volume(&self, name: &str) -> FsResult<VolumeInfo> {
        let v = self.call(req::GetVolume { name: name.into() }).await?;
        self.remember_volumes(std::slice::from_ref(&v));
        Ok(v)
    }

    /// Starts or cancels draining a chunk server.
    pub async fn drain_server(&self, server: ServerId, drain: bool) -> FsResult<()> {
        self.call(req::DrainServer { server, drain }).await
    }

    /// Forgets a chunk server that is down and holds no placed shard.
    pub async fn remove_server(&self, server: ServerId) -> FsResult<()> {
        self.call(req::RemoveServer { server }).await
    }

    /// Starts moving shards toward even counts per server.
    pub async fn rebalance(&self) -> FsResult<()> {
        self.call(req::Rebalance).await
    }

    /// What a volume holds.
    pub async fn volume_usage(&self, name: &str) -> FsResult<VolumeUsage> {
        self.call(req::VolumeUsage { name: name.into() }).await
    }

    pub async fn repair_status(&self) -> FsResult<RepairProgress> {
        self.call(req::RepairStatus).await
    }

    pub async fn cluster_status(&self) -> FsResult<ClusterStatus> {
        self.call(req::ClusterStatus).await
    }

    /// The members of the metadata group (`dfs meta status`).
    pub async fn meta_status(&self) -> FsResult<Vec<MetaMember>> {
        self.call(req::MetaStatus).await
    }

    /// Adds the metadata server at `addr` to the group (`dfs meta add`); returns the members
    /// after the change.
    pub async fn meta_add(&self, addr: &str) -> FsResult<Vec<MetaMember>> {
        self.call(req::MetaAdd { addr: addr.into() }).await
    }

    /// The digest of the replicated state of the member answering (`dfs meta digest`):
    /// (member id, applied entry, digest).
    pub async fn meta_digest(&self) -> FsResult<(u64, u64, [u8; 32])> {
        let d = self.call(req::MetaDigest).await?;
        Ok((d.member, d.applied, d.digest))
    }

    /// Removes member `id` from the metadata group (`dfs meta remove`).
    pub async fn meta_remove(&self, id: u64) -> FsResult<Vec<MetaMember>> {
        self.call(req::MetaRemove { id }).await
    }

    pub async fn lookup(&self, parent: InodeId, name: &str) -> FsResult<Attr> {
        self.call(req::Lookup {
            parent,
            name: name.into(),
        })
        .await
    }

    pub async fn getattr(&self, ino: InodeId) -> FsResult<Attr> {
        let asked = self.asked();
        let attr = self.call(req::GetAttr { ino }).await?;
        self.note_answered(&attr, asked);
        Ok(attr)
    }

    /// The epochs of the kept files' and directories' attributes, for answers to a question
    /// sent now (see [`Client::note_answered`]).
    fn asked(&self) -> (u64, u64) {
        (self.inner.file_attrs.epoch(), self.inner.dir_attrs.epoch())
    }

    /// Keeps `attr` from the answer to a question sent at `asked` (see [`Client::asked`]):
    /// a directory's apart from files', as their changes differ.
    fn note_answered(&self, attr: &Attr, (files, dirs): (u64, u64)) {
        if attr.kind == FileKind::Dir {
            self.inner.dir_attrs.note_answer(attr, dirs);
        } else {
            self.inner.file_attrs.note(attr, files);
        }
    }

    /// The attributes kept with an open delegation of the file, if this client holds one and
    /// `delegations_hold` (the change feed answers).
    pub fn delegated_attr(&self, ino: InodeId, delegations_hold: bool) -> Option<Attr> {
        delegations_hold
            .then(|| self.inner.file_attrs.delegated(ino))
            .flatten()
    }

    /// A file's attributes for an open (close-to-open): those kept with an open delegation
    /// while `delegations_hold` (the change feed answers), else asked of the metadata server,
    /// which may grant one.
    pub async fn open_attr(&self, ino: InodeId, delegations_hold: bool) -> FsResult<Attr> {
        if let Some(attr) = self.delegated_attr(ino, delegations_hold) {
            return Ok(attr);
        }
        let asked = self.inner.file_attrs.epoch();
        let origin = self.call_origin();
        match self.call(req::OpenAttr { ino, origin }).await {
            Ok(opened) => {
                self.inner.opened_at.note(ino, opened.feed_at);
                let attr = opened.attr;
                self.inner
                    .file_attrs
                    .note_opened(&attr, asked, opened.delegated);
                Ok(attr)
            }
            // A metadata server without delegations.
            Err(FsError::Protocol(_)) => self.getattr(ino).await,
            Err(e) => Err(e),
        }
    }

    /// Changes attributes; a file's new ones are kept for the kernel's next `getattr`.
    pub async fn setattr(&self, ino: InodeId, set: SetAttr) -> FsResult<Attr> {
        let asked = self.inner.file_attrs.epoch();
        let changed = self.call(req::SetAttr { ino, set }).await;
        self.inner.dir_attrs.forget(ino);
        if let Ok(attr) = &changed {
            self.inner.file_attrs.note(attr, asked);
        }
        changed
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn make_node(
        &self,
        parent: InodeId,
        name: &str,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        let request = req::MakeNode {
            parent,
            name: name.into(),
            kind,
            mode,
            uid,
            gid,
            rdev,
        };
        let asked = self.inner.file_attrs.epoch();
        let attr = self.made(self.call(request).await?);
        // A new file: the kernel asks for its attributes after its first write.
        self.inner.file_attrs.note(&attr, asked);
        Ok(attr)
    }

    /// Keeps the directory's new attributes that came with a new name, and a new directory's
    /// own; the node's attributes.
    fn made(&self, made: Made) -> Attr {
        self.inner.dir_attrs.note(made.dir);
        if made.attr.kind == FileKind::Dir {
            self.inner.dir_attrs.note(made.attr.clone());
        }
        made.attr
    }

    /// Whether this client's last open of `ino` through a call showed every change of feed
    /// `feed` before position `next` (see [`OpenedAt`](super::opened_at::OpenedAt)).
    pub fn opened_after(&self, ino: InodeId, feed: u64, next: u64) -> bool {
        self.inner.opened_at.shows_changes_before(ino, feed, next)
    }

    /// Regular files' attributes as the metadata server last gave them (see
    /// [`FileAttrs`](super::file_attrs::FileAttrs)).
    pub fn file_attrs(&self) -> &super::file_attrs::FileAttrs {
        &self.inner.file_attrs
    }

    /// Directories' attributes as this client's last changes to them left them (see
    /// [`DirAttrs`](super::dir_attrs::DirAttrs)).
    pub fn dir_attrs(&self) -> &super::dir_attrs::DirAttrs {
        &self.inner.dir_attrs
    }

    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.make_node(parent, name, FileKind::Dir, mode, uid, gid, 0)
            .await
    }

    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let request = req::Symlink {
            parent,
            name: name.into(),
            target: target.into(),
            uid,
            gid,
        };
        let asked = self.inner.file_attrs.epoch();
        let attr = self.made(self.call(request).await?);
        self.inner.file_attrs.note(&attr, asked);
        Ok(attr)
    }

    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &str) -> FsResult<Attr> {
        let request = req::Link {
            ino,
            new_parent,
            new_name: new_name.into(),
        };
        let asked = self.inner.file_attrs.epoch();
        let attr = self.made(self.call(request).await?);
        // The file's new link count and ctime came with the answer.
        self.inner.file_attrs.note(&attr, asked);
        Ok(attr)
    }

    pub async fn unlink(&self, parent: InodeId, name: &str) -> FsResult<()> {
        let request = req::Unlink {
            parent,
            name: name.into(),
        };
        self.inner.dir_attrs.note(self.call(request).await?);
        Ok(())
    }

    /// Removes a name, or renames it to a hidden one when it is the last link of a file in
    /// `open` (see [`req::UnlinkOrHide`]). Only the attributes kept of the named inode are
    /// dropped, not every file's: the answer names it.
    pub async fn unlink_or_hide(
        &self,
        parent: InodeId,
        name: &str,
        open: Vec<InodeId>,
    ) -> FsResult<Removed> {
        let request = req::UnlinkOrHide {
            parent,
            name: name.into(),
            open,
        };
        let removed = self.call(request).await?;
        self.inner.file_attrs.forget(removed.victim);
        self.inner.dir_attrs.note(removed.dir.clone());
        Ok(removed)
    }

    pub async fn rmdir(&self, parent: InodeId, name: &str) -> FsResult<()> {
        let request = req::Rmdir {
            parent,
            name: name.into(),
        };
        self.inner.dir_attrs.note(self.call(request).await?);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        flags: u32,
    ) -> FsResult<()> {
        let rename = req::Rename {
            parent,
            name: name.into(),
            new_parent,
            new_name: new_name.into(),
            flags,
        };
        let asked = self.inner.file_attrs.epoch();
        match self.call(req::Move { rename }).await {
            // The answer names every inode the rename changed, with the attributes of those
            // that are left: nothing else kept is dropped.
            Ok(moved) => {
                for ino in moved.touched {
                    self.inner.dir_attrs.forget(ino);
                    // (A directory's attributes are not kept with files': ignored there.)
                    match moved.attrs.iter().find(|a| a.ino == ino) {
                        Some(attr) => self.inner.file_attrs.note(attr, asked),
                        None => self.inner.file_attrs.forget(ino),
                    }
                }
                for dir in moved.dirs {
                    self.inner.dir_attrs.note(dir);
                }
                Ok(())
            }
            // Unanswered, it may have moved any directory: nothing kept of one is sure (the
            // files' are dropped where the call ends).
            Err(e) => {
                self.inner.dir_attrs.clear();
                Err(e)
            }
        }
    }

    pub async fn readlink(&self, ino: InodeId) -> FsResult<String> {
        self.call(req::ReadLink { ino }).await
    }

    /// One page of a directory listing, starting after the name `after`.
    pub async fn readdir_page(
        &self,
        dir: InodeId,
        after: Option<String>,
        limit: u32,
        with_attrs: bool,
    ) -> FsResult<DirPage> {
        let asked = self.asked();
        let page = self
            .call(req::ReadDir {
                dir,
                after,
                limit,
                with_attrs,
            })
            .await?;
        for attr in page.entries.iter().filter_map(|e| e.attr.as_ref()) {
            self.note_answered(attr, asked);
        }
        Ok(page)
    }

    /// A whole directory listing, fetched page by page.
    pub async fn readdir_all(&self, dir: InodeId, with_attrs: bool) -> FsResult<Vec<DirEntry>> {
        let mut entries: Vec<DirEntry> = Vec::new();
        loop {
            let after = entries.last().map(|e| e.name.clone());
            let page = self.readdir_page(dir, after, 1024, with_attrs).await?;
            entries.extend(page.entries);
            if !page.more {
                return Ok(entries);
            }
        }
    }

    pub async fn statfs(&self, ino: InodeId) -> FsResult<StatFs> {
        self.call(req::StatFs { ino }).await
    }

    pub async fn getxattr(&self, ino: InodeId, name: &str) -> FsResult<Vec<u8>> {
        self.call(req::GetXattr {
            ino,
            name: name.into(),
        })
        .await
    }

    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &str,
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let request = req::SetXattr {
            ino,
            name: name.into(),
            value: value.to_vec(),
            flags,
        };
        let changed = self.call(request).await;
        self.inner.dir_attrs.forget(ino);
        changed
    }

    pub async fn listxattr(&self, ino: InodeId) -> FsResult<Vec<String>> {
        self.call(req::ListXattr { ino }).await
    }

    pub async fn removexattr(&self, ino: InodeId, name: &str) -> FsResult<()> {
        let request = req::RemoveXattr {
            ino,
            name: name.into(),
        };
        let changed = self.call(request).await;
        self.inner.dir_attrs.forget(ino);
        changed
    }

    /// Waits up to `wait` for changes to the volume of `root` after position `after` of
    /// feed `feed` (0 to start), and returns those there are.
    pub async fn watch_changes(
        &self,
        root: InodeId,
        feed: u64,
        after: u64,
        wait: std::time::Duration,
    ) -> FsResult<ChangePage> {
        self.call(self.watch_request(root, feed, after, wait)).await
    }

    fn watch_request(
        &self,
        root: InodeId,
        feed: u64,
        after: u64,
        wait: std::time::Duration,
    ) -> req::WatchChanges {
        req::WatchChanges {
            root,
            origin: self.call_origin(),
            feed,
            after,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// [`Self::watch_changes`], reporting this mount's open files (see [`req::WatchOpen`]).
    pub async fn watch_open(
        &self,
        root: InodeId,
        feed: u64,
        after: u64,
        wait: std::time::Duration,
        report: req::OpenReport,
    ) -> FsResult<ChangePage> {
        let watch = self.watch_request(root, feed, after, wait);
        self.call(req::WatchOpen { watch, report }).await
    }

    /// Tells the metadata server this mount stops following the change feed (it ends), so
    /// changes by others no longer wait for it and its open delegations end now.
    pub async fn stop_watching(&self) -> FsResult<()> {
        self.call(req::StopWatching {
            origin: self.call_origin(),
        })
        .await
    }

    pub async fn layout(&self, ino: InodeId, offset: u64, len: u64) -> FsResult<Layout> {
        self.call(req::GetLayout { ino, offset, len }).await
    }

    /// Resolves `path` (absolute within `volume`, `/` separated) to its attributes, without
    /// following a symlink in the last component.
    pub async fn resolve(&self, volume: &VolumeInfo, path: &str) -> FsResult<Attr> {
        let mut attr = self.getattr(volume.root).await?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if attr.kind != FileKind::Dir {
                return Err(FsError::NotDir);
            }
            attr = self
                .lookup(attr.ino, &dfs_common::name::encode(part.as_bytes()))
                .await?;
        }
        Ok(attr)
    }

    /// Resolves the parent directory of `path` and returns it with the last name.
    pub async fn resolve_parent<'p>(
        &self,
        volume: &VolumeInfo,
        path: &'p str,
    ) -> FsResult<(Attr, std::borrow::Cow<'p, str>)> {
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = match trimmed.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", trimmed),
        };
        if name.is_empty() {
            return Err(FsError::invalid(format!("{path:?} names no file")));
        }
        let parent = self.resolve(volume, dir).await?;
        if parent.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok((parent, dfs_common::name::encode(name.as_bytes())))
    }
}

impl Client {
    /// Reads committed bytes of a file without opening it (no buffered writes to see).
    pub async fn read_range(&self, ino: InodeId, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        super::reader::read(self, ino, offset, len, super::reader::CacheUse::Fill).await
    }
}

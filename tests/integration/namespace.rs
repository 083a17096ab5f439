//! Namespace operations through the metadata RPC, with their POSIX error codes.

use dfs_common::proto::meta::*;
use dfs_common::{FsError, InodeId, Timestamp};
use dfs_tests::TestCluster;
use std::collections::BTreeSet;
use std::time::Duration;

/// Waits until regular file `ino`, which lost its last name, is freed: it is kept (with no
/// links) until no mount can have it open, which for a cluster without mounts is at once.
async fn freed(client: &dfs_client::Client, ino: InodeId) {
    dfs_tests::wait_for("the file freed", Duration::from_secs(30), || async {
        (client.getattr(ino).await == Err(FsError::NotFound)).then_some(())
    })
    .await;
}

async fn setup() -> (TestCluster, dfs_client::Client, InodeId) {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "ns", "2+1", 1 << 20).await;
    (cluster, client, volume.root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_lookup_getattr_setattr() {
    let (_c, client, root) = setup().await;
    let f = client
        .make_node(root, "file", FileKind::File, 0o640, 1000, 100, 0)
        .await
        .unwrap();
    assert_eq!(
        (f.kind, f.mode, f.uid, f.gid, f.nlink, f.size),
        (FileKind::File, 0o640, 1000, 100, 1, 0)
    );
    assert_eq!(client.lookup(root, "file").await.unwrap(), f);
    assert_eq!(client.getattr(f.ino).await.unwrap(), f);
    assert_eq!(
        client
            .make_node(root, "file", FileKind::File, 0o600, 0, 0, 0)
            .await,
        Err(FsError::Exists)
    );
    assert_eq!(client.lookup(root, "nope").await, Err(FsError::NotFound));
    assert_eq!(
        client.lookup(root, &"n".repeat(256)).await,
        Err(FsError::NameTooLong)
    );
    assert_eq!(client.lookup(f.ino, "x").await, Err(FsError::NotDir));
    assert_eq!(
        client
            .make_node(root, &"n".repeat(256), FileKind::File, 0o600, 0, 0, 0)
            .await,
        Err(FsError::NameTooLong)
    );
    for bad in ["", ".", "..", "a/b"] {
        assert!(matches!(
            client
                .make_node(root, bad, FileKind::File, 0o600, 0, 0, 0)
                .await,
            Err(FsError::Invalid(_))
        ));
    }
    let set = SetAttr {
        mode: Some(0o4755),
        uid: Some(7),
        gid: Some(8),
        atime: Some(TimeSet::At(dfs_common::Timestamp {
            secs: 100,
            nanos: 5,
        })),
        mtime: Some(TimeSet::At(dfs_common::Timestamp {
            secs: 200,
            nanos: 6,
        })),
        size: None,
    };
    let a = client.setattr(f.ino, set).await.unwrap();
    assert_eq!(
        (
            a.mode,
            a.uid,
            a.gid,
            a.atime.secs,
            a.mtime.secs,
            a.mtime.nanos
        ),
        (0o4755, 7, 8, 100, 200, 6)
    );
    assert!(a.ctime >= f.ctime);
    let grown = client
        .setattr(
            f.ino,
            SetAttr {
                size: Some(5 << 30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(grown.size, 5 << 30);
    let dir = client.mkdir(root, "d", 0o755, 0, 0).await.unwrap();
    assert_eq!(
        client
            .setattr(
                dir.ino,
                SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            )
            .await,
        Err(FsError::IsDir)
    );
    // Special files.
    for (name, kind) in [
        ("fifo", FileKind::Fifo),
        ("sock", FileKind::Socket),
        ("chr", FileKind::CharDevice),
    ] {
        let n = client
            .make_node(root, name, kind, 0o600, 0, 0, 0x0103)
            .await
            .unwrap();
        assert_eq!((n.kind, n.rdev), (kind, 0x0103));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_links_and_symlinks() {
    let (_c, client, root) = setup().await;
    let d = client.mkdir(root, "d", 0o755, 0, 0).await.unwrap();
    assert_eq!(d.nlink, 2);
    assert_eq!(client.getattr(root).await.unwrap().nlink, 3);
    let f = client
        .make_node(d.ino, "f", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    assert_eq!(client.rmdir(root, "d").await, Err(FsError::NotEmpty));
    assert_eq!(client.unlink(root, "d").await, Err(FsError::IsDir));
    assert_eq!(client.rmdir(d.ino, "f").await, Err(FsError::NotDir));
    // Hard links.
    let l = client.link(f.ino, root, "hard").await.unwrap();
    assert_eq!(l.nlink, 2);
    assert_eq!(
        client.link(d.ino, root, "dirlink").await,
        Err(FsError::NotPermitted)
    );
    client.unlink(d.ino, "f").await.unwrap();
    assert_eq!(client.getattr(f.ino).await.unwrap().nlink, 1);
    client.rmdir(root, "d").await.unwrap();
    assert_eq!(client.getattr(root).await.unwrap().nlink, 2);
    assert_eq!(client.getattr(d.ino).await, Err(FsError::NotFound));
    client.unlink(root, "hard").await.unwrap();
    freed(&client, f.ino).await;
    // Symlinks.
    let s = client
        .symlink(root, "s", "../some/where", 0, 0)
        .await
        .unwrap();
    assert_eq!((s.kind, s.size), (FileKind::Symlink, 13));
    assert_eq!(client.readlink(s.ino).await.unwrap(), "../some/where");
    assert!(matches!(
        client.readlink(root).await,
        Err(FsError::Invalid(_))
    ));
    assert_eq!(
        client.symlink(root, "long", &"x".repeat(5000), 0, 0).await,
        Err(FsError::NameTooLong)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_replace_noreplace_exchange() {
    let (_c, client, root) = setup().await;
    let a = client
        .make_node(root, "a", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    let b = client
        .make_node(root, "b", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    let d1 = client.mkdir(root, "d1", 0o755, 0, 0).await.unwrap();
    let d2 = client.mkdir(root, "d2", 0o755, 0, 0).await.unwrap();
    // NOREPLACE refuses an existing target.
    assert_eq!(
        client.rename(root, "a", root, "b", RENAME_NOREPLACE).await,
        Err(FsError::Exists)
    );
    // Plain rename replaces the target atomically; the replaced file is gone.
    client.rename(root, "a", root, "b", 0).await.unwrap();
    assert_eq!(client.lookup(root, "b").await.unwrap().ino, a.ino);
    assert_eq!(client.lookup(root, "a").await, Err(FsError::NotFound));
    freed(&client, b.ino).await;
    // Kind mismatches.
    assert_eq!(
        client.rename(root, "b", root, "d1", 0).await,
        Err(FsError::IsDir)
    );
    assert_eq!(
        client.rename(root, "d1", root, "b", 0).await,
        Err(FsError::NotDir)
    );
    // A directory cannot move into itself.
    let sub = client.mkdir(d1.ino, "sub", 0o755, 0, 0).await.unwrap();
    assert!(matches!(
        client.rename(root, "d1", sub.ino, "x", 0).await,
        Err(FsError::Invalid(_))
    ));
    // Moving a directory updates link counts of both parents.
    client
        .rename(d1.ino, "sub", d2.ino, "moved", 0)
        .await
        .unwrap();
    assert_eq!(client.getattr(d1.ino).await.unwrap().nlink, 2);
    assert_eq!(client.getattr(d2.ino).await.unwrap().nlink, 3);
    // Replacing a non-empty directory fails; an empty one works.
    assert_eq!(
        client.rename(root, "d1", root, "d2", 0).await,
        Err(FsError::NotEmpty)
    );
    client.rename(d2.ino, "moved", root, "d1", 0).await.unwrap();
    assert_eq!(client.lookup(root, "d1").await.unwrap().ino, sub.ino);
    assert_eq!(client.getattr(d1.ino).await, Err(FsError::NotFound));
    // EXCHANGE swaps two names, even a file and a directory.
    client
        .rename(root, "b", root, "d2", RENAME_EXCHANGE)
        .await
        .unwrap();
    assert_eq!(client.lookup(root, "d2").await.unwrap().ino, a.ino);
    assert_eq!(client.lookup(root, "b").await.unwrap().ino, d2.ino);
    assert_eq!(
        client
            .rename(root, "b", root, "none", RENAME_EXCHANGE)
            .await,
        Err(FsError::NotFound)
    );
    assert!(matches!(
        client
            .rename(root, "b", root, "d2", RENAME_EXCHANGE | RENAME_NOREPLACE)
            .await,
        Err(FsError::Invalid(_))
    ));
    // Renaming onto another link of the same file does nothing.
    client.link(a.ino, root, "a2").await.unwrap();
    client.rename(root, "a2", root, "d2", 0).await.unwrap();
    assert_eq!(client.lookup(root, "a2").await.unwrap().ino, a.ino);
    assert_eq!(client.getattr(a.ino).await.unwrap().nlink, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_and_statfs() {
    let (_c, client, root) = setup().await;
    let f = client
        .make_node(root, "f", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    assert_eq!(
        client.getxattr(f.ino, "user.a").await,
        Err(FsError::NoAttribute)
    );
    client.setxattr(f.ino, "user.a", b"1", 0).await.unwrap();
    client.setxattr(f.ino, "user.b", b"", 0).await.unwrap();
    assert_eq!(
        client.setxattr(f.ino, "user.a", b"2", XATTR_CREATE).await,
        Err(FsError::Exists)
    );
    assert_eq!(
        client.setxattr(f.ino, "user.c", b"2", XATTR_REPLACE).await,
        Err(FsError::NoAttribute)
    );
    client
        .setxattr(f.ino, "user.a", b"22", XATTR_REPLACE)
        .await
        .unwrap();
    assert_eq!(client.getxattr(f.ino, "user.a").await.unwrap(), b"22");
    // An inode's xattrs are bounded: the value that would pass 1 MiB in all is refused.
    let big = vec![7u8; 60 * 1024];
    let mut stored = 0;
    let full = loop {
        match client
            .setxattr(f.ino, &format!("user.big{stored}"), &big, 0)
            .await
        {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "xattrs are not bounded");
    };
    assert!(matches!(full, FsError::NoSpace(_)), "{full:?}");
    assert_eq!(stored, (1 << 20) / (60 * 1024 + 9));
    for i in 0..stored {
        client
            .removexattr(f.ino, &format!("user.big{i}"))
            .await
            .unwrap();
    }
    // A name with a NUL inside could never be read back by name: refused.
    assert!(matches!(
        client.setxattr(f.ino, "user.a\0b", b"x", 0).await,
        Err(FsError::Invalid(_))
    ));
    // A time the kernel could never hold is refused, not stored for mounts to choke on.
    let absurd = SetAttr {
        mtime: Some(TimeSet::At(Timestamp {
            secs: i64::MAX,
            nanos: 2_000_000_000,
        })),
        ..SetAttr::default()
    };
    assert!(matches!(
        client.setattr(f.ino, absurd).await,
        Err(FsError::Invalid(_))
    ));
    assert_eq!(
        client.listxattr(f.ino).await.unwrap(),
        vec!["user.a", "user.b"]
    );
    assert!(matches!(
        client
            .setxattr(f.ino, "user.big", &vec![0; 70_000], 0)
            .await,
        Err(FsError::TooBig(_))
    ));
    client.removexattr(f.ino, "user.a").await.unwrap();
    assert_eq!(
        client.removexattr(f.ino, "user.a").await,
        Err(FsError::NoAttribute)
    );
    assert_eq!(client.listxattr(f.ino).await.unwrap(), vec!["user.b"]);
    let st = client.statfs(root).await.unwrap();
    assert!(
        st.total_bytes > 0
            && st.free_bytes <= st.total_bytes
            && st.total_inodes - st.free_inodes >= 1,
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_of_100000_entries_is_complete_and_resumable() {
    let (_c, client, root) = setup().await;
    let dir = client.mkdir(root, "big", 0o755, 0, 0).await.unwrap();
    const N: usize = 100_000;
    // Create concurrently: group commit keeps this fast.
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (t..N).step_by(32) {
                    client
                        .make_node(
                            dir.ino,
                            &format!("entry-{i:06}"),
                            FileKind::File,
                            0o644,
                            0,
                            0,
                            0,
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = client.readdir_all(dir.ino, false).await.unwrap();
    assert_eq!(all.len(), N);
    let names: BTreeSet<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), N);
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "listing is in name order"
    );
    // Resume from a cookie in the middle, also after the cookie's entry was deleted.
    client.unlink(dir.ino, "entry-050000").await.unwrap();
    let page = client
        .readdir_page(dir.ino, Some("entry-050000".into()), 10, true)
        .await
        .unwrap();
    assert_eq!(page.entries[0].name, "entry-050001");
    assert!(page.more && page.entries.len() == 10);
    assert!(page
        .entries
        .iter()
        .all(|e| e.attr.as_ref().is_some_and(|a| a.ino == e.ino)));
    // Pages longer than the server reads on its network task come whole and in order, the
    // part read off it included (its first 64 entries are read there).
    for limit in [64, 65, 300] {
        let page = client
            .readdir_page(dir.ino, Some("entry-050000".into()), limit, true)
            .await
            .unwrap();
        let names: Vec<String> = page.entries.iter().map(|e| e.name.clone()).collect();
        let expected: Vec<String> = (50_001..50_001 + limit as usize)
            .map(|i| format!("entry-{i:06}"))
            .collect();
        assert_eq!(names, expected, "a page of {limit}");
        assert!(page.more);
        assert!(page
            .entries
            .iter()
            .all(|e| e.attr.as_ref().is_some_and(|a| a.ino == e.ino)));
    }
    let last = client
        .readdir_page(dir.ino, Some("entry-099998".into()), 10, false)
        .await
        .unwrap();
    assert_eq!(last.entries.len(), 1);
    assert!(!last.more);
}

//! The metadata group with real processes: a cluster holding data grows from one metadata
//! server to three, and a live mount keeps working through the SIGKILL of the leader.

use crate::heal::{cli_json, status, wait_until};
use dfs_common::proto::meta::MetaMember;
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// flock(2) on an open file: the errno on failure.
pub(crate) fn flock(file: &fs::File, how: libc::c_int) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    match unsafe { libc::flock(file.as_raw_fd(), how) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

fn members(cluster: &ProcessCluster) -> Vec<MetaMember> {
    cli_json(cluster, &["meta", "status"])
}

fn leader(members: &[MetaMember]) -> Option<&MetaMember> {
    let leaders: Vec<_> = members.iter().filter(|m| m.role == "leader").collect();
    assert!(leaders.len() <= 1, "two leaders: {members:?}");
    leaders.first().copied()
}

/// Waits until the second member knows a leader (after the first member was killed).
fn a_new_leader_as_member_1_sees_it(cluster: &ProcessCluster) {
    wait_until(cluster, Duration::from_secs(60), "a new leader", || {
        let out = cluster
            .member_cli(1)
            .args(["--json", "meta", "status"])
            .output();
        out.is_ok_and(|o| {
            serde_json::from_slice::<Vec<MetaMember>>(&o.stdout)
                .is_ok_and(|group| leader(&group).is_some())
        })
    });
}

/// Adds reserved member `i` with `dfs meta add`, once it listens.
fn add_member(cluster: &mut ProcessCluster, i: usize) {
    cluster.start_member(i);
    let addr = cluster.member_addr(i).to_string();
    wait_until(cluster, Duration::from_secs(30), "dfs meta add", || {
        let out = cluster.cli().args(["meta", "add", &addr]).output().unwrap();
        out.status.success()
    });
}

/// The digest of every running member's store, once they have all applied the same entries.
fn agreeing_digests(cluster: &ProcessCluster, running: &[usize]) -> String {
    #[derive(serde::Deserialize)]
    struct Digest {
        applied: u64,
        digest: String,
    }
    let mut agreed = None;
    wait_until(
        cluster,
        Duration::from_secs(60),
        "members at the same entry with the same digest",
        || {
            let digests: Vec<Digest> = running
                .iter()
                .filter_map(|&i| {
                    let out = cluster
                        .member_cli(i)
                        .args(["--json", "meta", "digest"])
                        .output()
                        .ok()?;
                    serde_json::from_slice(&out.stdout).ok()
                })
                .collect();
            if digests.len() != running.len()
                || digests.iter().any(|d| d.applied != digests[0].applied)
            {
                return false;
            }
            assert!(
                digests.iter().all(|d| d.digest == digests[0].digest),
                "members at entry {} disagree",
                digests[0].applied
            );
            agreed = Some(digests[0].digest.clone());
            true
        },
    );
    agreed.expect("digests")
}

/// Six chunk servers, volume `v`, and a metadata group grown to three members.
pub(crate) fn group_of_three(configure: impl FnOnce(&mut ProcessCluster)) -> ProcessCluster {
    let mut cluster = one_member_of_three(configure);
    add_member(&mut cluster, 1);
    add_member(&mut cluster, 2);
    cluster
}

/// Six chunk servers and volume `v`, with one metadata server and the addresses of two more
/// members reserved (everyone is given all three).
fn one_member_of_three(configure: impl FnOnce(&mut ProcessCluster)) -> ProcessCluster {
    let cluster = ProcessCluster::start_with(6, |c| {
        c.reserve_members(2);
        configure(c);
    });
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "6 chunk servers up",
        || status(&cluster).servers.iter().filter(|s| s.up).count() == 6,
    );
    let out = cluster
        .cli()
        .args(["volume", "create", "v", "--ec", "4+2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    cluster
}

/// Waits until member `i` is a follower with the leader's last entry.
fn caught_up(cluster: &ProcessCluster, i: usize) {
    let addr = cluster.member_addr(i).to_string();
    wait_until(
        cluster,
        Duration::from_secs(60),
        "a member catches up",
        || {
            let group = members(cluster);
            let last = leader(&group).and_then(|l| l.last_index);
            group.iter().any(|m| {
                m.addr == addr
                    && m.role == "follower"
                    && m.last_index.is_some()
                    && m.last_index == last
            })
        },
    );
}

#[test]
fn a_leader_that_dies_between_commit_and_reply_has_the_retry_applied_once() {
    // The first leader dies right after it commits a create; whichever member leads next dies
    // right after it commits a small write (kept inline).
    let mut cluster = group_of_three(|c| {
        c.member_faults
            .insert(0, "meta.after_commit.MakeNode=exit".into());
        for i in [1, 2] {
            c.member_faults
                .insert(i, "meta.after_commit.WriteInline=exit".into());
        }
    });
    let mount = Mount::new(&cluster, "v", "mnt", "")
        .unwrap_or_else(|e| panic!("mount failed: {e}\n{}", cluster.logs()));

    // The create was applied, its reply lost with the leader: the retry, on the new leader,
    // gets the first outcome (success, not EEXIST).
    let created = fs::File::create(mount.path("made"));
    assert!(
        created.is_ok(),
        "retried create: {created:?}\n{}",
        cluster.logs()
    );
    drop(created);
    assert!(
        cluster.member_exited(0),
        "the leader died at the fault point"
    );
    cluster.member_faults.remove(&0);
    cluster.start_meta();
    caught_up(&cluster, 0);
    // Only the leader keeps its fault: the follower among 1 and 2 comes back without it, so
    // that the next leader does not die at the retried write too.
    let group = members(&cluster);
    let leading = leader(&group).map(|l| l.addr.clone());
    let follower = [1, 2]
        .into_iter()
        .find(|&i| Some(cluster.member_addr(i).to_string()) != leading)
        .expect("one of 1 and 2 follows");
    assert_ne!(leading, Some(cluster.meta_addr.to_string()), "{group:?}");
    cluster.member_faults.remove(&follower);
    cluster.restart_member(follower);
    caught_up(&cluster, follower);

    // Same for an append: applied once, though the leader died before answering it.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mount.path("made"))
        .unwrap();
    f.write_all(b"appended once\n").unwrap();
    f.sync_all()
        .unwrap_or_else(|e| panic!("retried append: {e}\n{}", cluster.logs()));
    drop(f);
    let died: Vec<usize> = [1, 2]
        .into_iter()
        .filter(|&i| cluster.member_exited(i))
        .collect();
    assert_eq!(
        died,
        vec![3 - follower],
        "the leader died at the write's fault point"
    );
    // A second mount reads what the group holds, not what this one cached.
    let check = Mount::new(&cluster, "v", "check", "").unwrap();
    assert_eq!(fs::read(check.path("made")).unwrap(), b"appended once\n");
    let running: Vec<usize> = [0, 1, 2]
        .into_iter()
        .filter(|i| !died.contains(i))
        .collect();
    agreeing_digests(&cluster, &running);
}

#[test]
fn a_member_far_behind_catches_up_by_a_snapshot() {
    // A snapshot every 20 entries, and only 2 entries kept behind it.
    let mut cluster = group_of_three(|c| {
        c.group_args = vec!["--snapshot-every".into(), "20".into()];
    });
    let mount = Mount::new(&cluster, "v", "mnt", "").unwrap();
    cluster.kill_member(2);
    for i in 0..100 {
        fs::write(mount.path(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    cluster.start_member(2);
    caught_up(&cluster, 2);
    agreeing_digests(&cluster, &[0, 1, 2]);
    assert!(
        cluster
            .logs()
            .contains("installed a snapshot of the store from the leader"),
        "member 2 did not catch up by a snapshot\n{}",
        cluster.logs()
    );
    for i in 0..100 {
        assert_eq!(
            fs::read_to_string(mount.path(&format!("f{i}"))).unwrap(),
            format!("file {i}")
        );
    }
}

/// What the workload saw acknowledged, in order.
#[derive(Default)]
struct Acked {
    /// Files created (under their final name) and their contents.
    files: Vec<(String, Vec<u8>)>,
    /// Lines appended to the shared log file.
    appends: Vec<String>,
    /// When each operation was acknowledged.
    times: Vec<Instant>,
    /// The first failure, if any.
    error: Option<String>,
}

/// One round of the workload: create and write a file, rename every other one, append a line
/// to the log (fsynced).
fn round(dir: &std::path::Path, i: usize) -> std::io::Result<(String, Vec<u8>, String)> {
    let data = random_bytes(1 + (i * 7919) % 200_000, i as u64);
    let name = format!("w{i:04}");
    let mut f = fs::File::create(dir.join(&name))?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);
    let name = if i.is_multiple_of(2) {
        let renamed = format!("r{i:04}");
        fs::rename(dir.join(&name), dir.join(&renamed))?;
        renamed
    } else {
        name
    };
    let line = format!("append {i}\n");
    let mut log = fs::OpenOptions::new().append(true).open(dir.join("log"))?;
    log.write_all(line.as_bytes())?;
    log.sync_all()?;
    Ok((name, data, line))
}

#[test]
fn a_group_of_three_keeps_a_mount_working_through_the_kill_of_its_leader() {
    let mut cluster = one_member_of_three(|_| {});
    let mount = Mount::new(&cluster, "v", "mnt", "")
        .unwrap_or_else(|e| panic!("mount failed: {e}\n{}", cluster.logs()));

    // Data written while the group has one member.
    let before: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("before{i}"),
                random_bytes(100_000 + i, 1000 + i as u64),
            )
        })
        .collect();
    for (name, data) in &before {
        fs::write(mount.path(name), data).unwrap();
    }
    fs::create_dir(mount.path("work")).unwrap();
    fs::write(mount.path("work/log"), b"").unwrap();
    fs::write(mount.path("locked"), b"held by the second mount").unwrap();

    // From one member to three: each new member catches up with the log, then votes.
    add_member(&mut cluster, 1);
    add_member(&mut cluster, 2);
    let group = members(&cluster);
    assert_eq!(group.len(), 3, "{group:?}");
    assert_eq!(
        leader(&group).map(|m| m.addr.clone()),
        Some(cluster.meta_addr.to_string()),
        "the first server still leads: {group:?}"
    );
    assert_eq!(
        group.iter().filter(|m| m.role == "follower").count(),
        2,
        "{group:?}"
    );
    // A follower given alone sends the CLI on to the leader.
    let out = cluster
        .cli()
        .env("DFS_META", cluster.member_addr(2).to_string())
        .args(["volume", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("v "),
        "{out:?}"
    );

    // A second mount holds a lock across the failover.
    let second = Mount::new(&cluster, "v", "second", "").unwrap();
    let held = fs::File::open(second.path("locked")).unwrap();
    assert_eq!(flock(&held, libc::LOCK_EX | libc::LOCK_NB), Ok(()));
    let wanted = fs::File::open(mount.path("locked")).unwrap();
    assert_eq!(
        flock(&wanted, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );

    // The workload runs on the mount while the leader is killed.
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let (acked, stop, dir) = (acked.clone(), stop.clone(), mount.path("work"));
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let result = round(&dir, i);
                let mut acked = acked.lock().unwrap();
                match result {
                    Ok((name, data, line)) => {
                        acked.files.push((name, data));
                        acked.appends.push(line);
                        acked.times.push(Instant::now());
                    }
                    Err(e) => {
                        acked.error = Some(format!("round {i}: {e}"));
                        return;
                    }
                }
            }
        })
    };
    let done = |n: usize| {
        let a = acked.lock().unwrap();
        a.times.len() >= n || a.error.is_some()
    };
    wait_until(&cluster, Duration::from_secs(60), "20 rounds", || done(20));
    let killed_at = Instant::now();
    let rounds_before_kill = acked.lock().unwrap().times.len();
    cluster.kill_member(0);
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "20 rounds after the kill",
        || done(rounds_before_kill + 20),
    );
    stop.store(true, Ordering::SeqCst);
    workload.join().unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    assert!(
        acked.error.is_none(),
        "the mount returned an error: {:?}\n{}",
        acked.error,
        cluster.logs()
    );
    let first_after = acked
        .times
        .iter()
        .find(|&&t| t > killed_at)
        .expect("rounds after the kill");
    println!(
        "metadata failover: the first workload round finished {:.2} s after the leader's kill",
        first_after.duration_since(killed_at).as_secs_f64()
    );

    // A new leader among the two left; every acknowledged operation is there, once.
    let group = members(&cluster);
    let new_leader = leader(&group).expect("a new leader");
    assert_ne!(new_leader.addr, cluster.meta_addr.to_string());
    for (name, data) in before.iter() {
        assert!(
            &fs::read(mount.path(name)).unwrap() == data,
            "{name} differs"
        );
    }
    for (name, data) in &acked.files {
        let got = fs::read(mount.path(&format!("work/{name}")))
            .unwrap_or_else(|e| panic!("work/{name}: {e}"));
        assert!(&got == data, "work/{name} differs");
    }
    let log = fs::read_to_string(mount.path("work/log")).unwrap();
    assert_eq!(log, acked.appends.concat(), "each append once, in order");
    // The lock is still held, by the same mount, which can still let it go.
    assert_eq!(
        flock(&wanted, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK),
        "the lock was lost with the leader"
    );
    assert_eq!(flock(&held, libc::LOCK_UN), Ok(()));
    assert_eq!(flock(&wanted, libc::LOCK_EX | libc::LOCK_NB), Ok(()));

    // The old leader comes back as a follower and catches up.
    cluster.start_meta();
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the old leader rejoins",
        || {
            let group = members(&cluster);
            let last = leader(&group).and_then(|l| l.last_index);
            group.iter().any(|m| {
                m.addr == cluster.meta_addr.to_string()
                    && m.role == "follower"
                    && m.last_index.is_some()
                    && m.last_index == last
            })
        },
    );
    agreeing_digests(&cluster, &[0, 1, 2]);
}

#[test]
fn a_leader_cut_off_the_network_stops_answering_and_rejoins_as_a_follower() {
    let net = dfs_tests::netns::NetNs::create((((std::process::id() + 125) % 250) + 1) as u8);
    // The first member, which leads, lives behind the link; the others on the host's side.
    let cluster = group_of_three(|c| {
        c.meta_addr = std::net::SocketAddr::new(net.ns_ip.parse().unwrap(), c.meta_addr.port());
        c.meta_netns = Some(net.name.clone());
        c.members.clear();
        c.reserve_members_on(&net.host_ip, 2);
        // Chunk servers on the host's end of the link, where every member reaches them.
        c.chunk_ip = net.host_ip.clone();
    });
    let mount = Mount::new(&cluster, "v", "mnt", "").unwrap();
    fs::write(mount.path("before"), b"before the cut").unwrap();

    net.set_link(false);
    // The mount goes on with a leader elected by the two members it still reaches.
    for i in 0..10 {
        fs::write(
            mount.path(&format!("cut{i}")),
            format!("written during the cut {i}"),
        )
        .unwrap_or_else(|e| panic!("cut{i}: {e}\n{}", cluster.logs()));
    }
    let group = members(&cluster);
    assert_ne!(
        leader(&group).map(|l| l.addr.clone()),
        Some(cluster.meta_addr.to_string())
    );
    // The old leader, asked from its side of the cut, neither acknowledges a change nor
    // answers a read: it cannot reach a majority.
    let old_leader = |args: &[&str]| {
        std::process::Command::new("timeout")
            .arg("10")
            .args(["ip", "netns", "exec", &net.name])
            .arg(dfs_tests::process::binary("dfs"))
            .args(args)
            .env("DFS_META", cluster.meta_addr.to_string())
            .env("DFS_CERTS", &cluster.certs_dir)
            .output()
            .unwrap()
    };
    let split = old_leader(&["volume", "create", "split", "--ec", "2+1"]);
    assert!(
        !split.status.success(),
        "the cut-off leader acknowledged a change: {split:?}"
    );
    let read = old_leader(&["volume", "list"]);
    assert!(
        !read.status.success(),
        "the cut-off leader answered a read: {read:?}"
    );

    net.set_link(true);
    caught_up(&cluster, 0);
    agreeing_digests(&cluster, &[0, 1, 2]);
    let volumes = cluster.cli().args(["volume", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&volumes.stdout).contains("split"),
        "{volumes:?}"
    );
    assert_eq!(fs::read(mount.path("before")).unwrap(), b"before the cut");
    for i in 0..10 {
        assert_eq!(
            fs::read_to_string(mount.path(&format!("cut{i}"))).unwrap(),
            format!("written during the cut {i}")
        );
    }
}

#[test]
fn a_dead_member_is_replaced_by_a_new_one() {
    // No member holds log entries in memory once flushed: the new member's catch-up is read
    // from the leader's log files.
    let mut cluster = group_of_three(|c| {
        c.reserve_members(1);
        c.group_args.extend(["--log-memory".into(), "0".into()]);
    });
    let mount = Mount::new(&cluster, "v", "mnt", "").unwrap();
    fs::write(mount.path("kept"), b"kept through the replacement").unwrap();
    cluster.kill_member(2);
    let dead = cluster.member_addr(2).to_string();
    let id = members(&cluster)
        .iter()
        .find(|m| m.addr == dead)
        .map(|m| m.id)
        .expect("the dead member is listed");
    let out = cluster
        .cli()
        .args(["meta", "remove", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", cluster.logs());
    add_member(&mut cluster, 3);
    let group = members(&cluster);
    let mut addrs: Vec<String> = group.iter().map(|m| m.addr.clone()).collect();
    addrs.sort();
    let mut expected: Vec<String> = [0, 1, 3]
        .iter()
        .map(|&i| cluster.member_addr(i).to_string())
        .collect();
    expected.sort();
    assert_eq!(addrs, expected, "{group:?}");
    assert!(group.iter().all(|m| m.role != "learner"), "{group:?}");
    caught_up(&cluster, 3);
    agreeing_digests(&cluster, &[0, 1, 3]);
    fs::write(mount.path("after"), b"written after").unwrap();
    assert_eq!(
        fs::read(mount.path("kept")).unwrap(),
        b"kept through the replacement"
    );
}

/// A mount's poll for changes is held by the leader for seconds by design: the mount must not
/// take that silence for a dead leader and keep asking the other members who leads.
#[test]
fn a_mount_waiting_for_changes_does_not_ask_the_others_who_leads() {
    let mut cluster = group_of_three(|_| {});
    // The first member, the only one with a metrics page, becomes a follower.
    cluster.kill_member(0);
    a_new_leader_as_member_1_sees_it(&cluster);
    cluster.restart_member(0);
    caught_up(&cluster, 0);
    let m = Mount::new(&cluster, "v", "m", "").unwrap();
    fs::write(m.path("f"), b"x").unwrap();
    let questions = || {
        let samples = crate::observe::scrape(cluster.meta_http);
        crate::observe::value(&samples, "dfs_meta_requests_total{op=\"Leader\"}")
    };
    let before = questions();
    // The window spans a whole poll (9 s) and the next one's start.
    std::thread::sleep(Duration::from_secs(12));
    let asked = questions() - before;
    assert!(
        asked <= 2.0,
        "{asked} questions of who leads reached a follower while the mount only waited for changes"
    );
    drop(m);
}

/// A new leader's change feed is another one, so a mount that was waiting on the old leader
/// is told it missed changes, and drops what it caches itself and the pages of its open files:
/// a file it holds open shows a rewrite another mount made while it was not watching, though
/// its kernel would otherwise have kept the old bytes for the ten minutes of its attribute
/// timeout (long enough that no slow failover lets them run out first).
#[test]
fn a_mount_that_missed_changes_in_a_failover_drops_the_pages_of_its_open_files() {
    use crate::observe::mount_fault;
    use std::os::unix::fs::FileExt;
    let mut cluster = group_of_three(|_| {});
    let (watcher, http) =
        crate::observe::mount_with_faults(&cluster, "v", "watcher", "attr_timeout=600");
    let writer = Mount::new(&cluster, "v", "writer", "").unwrap();
    let control = |verb: &str| mount_fault(http, "mount.watch_changes", verb);
    let read = |file: &fs::File, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    };

    let old = random_bytes(300_000, 1);
    fs::write(writer.path("f"), &old).unwrap();
    // Nothing the watcher hears later drops its pages but what this test makes it hear.
    crate::coherence::hold_before_next_poll(&cluster, http, &writer);
    let held = fs::File::open(watcher.path("f")).unwrap();
    assert!(read(&held, old.len()) == old);
    let _pinned = crate::mount::PinnedPages::new(&held, old.len());

    // A new leader, and a rewrite the watcher does not hear of.
    cluster.kill_member(0);
    a_new_leader_as_member_1_sees_it(&cluster);
    let new = random_bytes(old.len(), 2);
    fs::write(writer.path("f"), &new).unwrap();
    assert!(
        read(&held, old.len()) == old,
        "the watcher's kernel keeps its pages"
    );

    control("disarm");
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the file held open shows the rewrite",
        || read(&held, new.len()) == new,
    );
}

/// Open delegations hold in a group as in a lone server, and go on while it grows: a mount
/// reopens a file without asking, and sees at its next open every change another mount
/// closed before.
#[test]
fn open_delegations_hold_in_a_group_and_while_it_grows() {
    use crate::coherence::wait_for_delegation;
    let mut cluster = one_member_of_three(|_| {});
    let holder = Mount::new(&cluster, "v", "holder", "").unwrap();
    let writer = Mount::new(&cluster, "v", "writer", "").unwrap();
    fs::write(writer.path("f"), b"one").unwrap();
    wait_for_delegation(&cluster, &holder, "f");
    add_member(&mut cluster, 1);
    fs::write(writer.path("f"), b"two").unwrap();
    assert_eq!(fs::read(holder.path("f")).unwrap(), b"two");
    add_member(&mut cluster, 2);
    wait_for_delegation(&cluster, &holder, "f");
    for round in 0..5 {
        let text = format!("round {round}{}", ".".repeat(round));
        fs::write(writer.path("f"), &text).unwrap();
        assert_eq!(fs::read_to_string(holder.path("f")).unwrap(), text);
    }
}

/// A new leader does not know the open delegations its predecessor granted: it answers a
/// change to a file only once they have lapsed at their mounts. The leader freezes while a
/// mount holds a delegation (and hears nothing more from the feed); another mount rewrites
/// the file through the new leader, and the holder's next open shows the rewrite.
#[test]
fn a_new_leader_waits_out_the_open_delegations_of_the_one_before() {
    use crate::coherence::{hold_before_next_poll, wait_for_delegation};
    let mut cluster = group_of_three(|_| {});
    let (holder, http) = crate::observe::mount_with_faults(&cluster, "v", "holder", "");
    let writer = Mount::new(&cluster, "v", "writer", "").unwrap();
    fs::write(writer.path("f"), b"one").unwrap();
    wait_for_delegation(&cluster, &holder, "f");
    // Its delegations hold for a few seconds from its last call for changes, sent just now.
    hold_before_next_poll(&cluster, http, &writer);
    cluster.freeze_member(0, true);
    fs::write(writer.path("f"), b"two").unwrap();
    let seen = fs::read(holder.path("f")).unwrap();
    crate::observe::mount_fault(http, "mount.watch_changes", "disarm");
    cluster.freeze_member(0, false);
    assert_eq!(seen, b"two", "the holder's reopen after the rewrite");
}

/// In a group, a mount reopens through /proc/self/fd a file it holds
/// open and another mount unlinked, before its next call for changes has reported the first
/// open: the metadata server keeps the orphan for that open, and the reopen reads it.
#[test]
fn a_file_held_open_is_reopened_through_proc_after_an_unlink_elsewhere() {
    use std::os::fd::AsRawFd;
    let cluster = group_of_three(|_| {});
    let (holder, http) = crate::observe::mount_with_faults(&cluster, "v", "holder", "");
    let other = Mount::new(&cluster, "v", "other", "").unwrap();
    fs::write(other.path("f"), b"kept while open").unwrap();
    // The holder's open is not reported until its next call.
    crate::coherence::hold_before_next_poll(&cluster, http, &other);
    let held = fs::File::open(holder.path("f")).unwrap();
    fs::remove_file(other.path("f")).unwrap();
    let again = format!("/proc/self/fd/{}", held.as_raw_fd());
    assert_eq!(fs::read(&again).unwrap(), b"kept while open");

    crate::observe::mount_fault(http, "mount.watch_changes", "disarm");
    let before = crate::orphans::reaped(&cluster);
    drop(held);
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the orphan freed",
        || crate::orphans::reaped(&cluster) > before,
    );
}

/// A file replaced by a rename on one mount is opened by its name on another before that one
/// has heard of the change: its kernel still has the name for the old file, gone there but
/// for the other mounts' reports (an orphan). The open answers ESTALE, as NFS does, and the
/// kernel looks the name up again and opens the new file, rather than failing with ENOENT
/// for a name that exists; a name unlinked there is found gone. The reader held open
/// delegations of both files, which lapse while it hears nothing: the server holds what they
/// covered for it, but does not open it again for a name it has not dropped yet.
#[test]
fn a_name_replaced_elsewhere_opens_the_new_file_before_the_change_is_heard() {
    name_replaced_elsewhere(&group_of_three(|_| {}), "v");
}

/// [`a_name_replaced_elsewhere_opens_the_new_file_before_the_change_is_heard`] with a lone
/// metadata server.
#[test]
fn a_name_replaced_elsewhere_opens_the_new_file_before_the_change_is_heard_alone() {
    name_replaced_elsewhere(&crate::mount::cluster_with_volume(), "default");
}

fn name_replaced_elsewhere(cluster: &ProcessCluster, volume: &str) {
    use std::os::unix::fs::MetadataExt;
    // Names kept for ten minutes: the reader's kernel holds the old one throughout, however
    // slowly the machine runs the waits below.
    let (reader, http) =
        crate::observe::mount_with_faults(cluster, volume, "reader", "attr_timeout=600");
    let writer = Mount::new(cluster, volume, "writer", "").unwrap();
    // Made by the reader itself: its feed leaves out its own changes, so no late news of
    // them drops the names from its kernel (as news of another mount's writes would).
    fs::write(reader.path("config"), b"version 1").unwrap();
    fs::write(reader.path("gone"), b"removed soon").unwrap();
    assert_eq!(fs::read(reader.path("config")).unwrap(), b"version 1");
    assert_eq!(fs::read(reader.path("gone")).unwrap(), b"removed soon");
    let old = fs::metadata(reader.path("config")).unwrap().ino();
    // The reader's closes of both files reach the metadata server first (the kernel sends
    // a release after the close returns): the second poll from now carries a report of open
    // files made after the first one ended, and has ended once the third starts (the point
    // counts its hits; it fails only the millionth). Else the server may still count "gone"
    // open there, and open it again for the reader after the unlink.
    let control = |verb: &str| crate::observe::mount_fault(http, "mount.watch_changes", verb);
    control("fail@1000000");
    crate::heal::wait_until(cluster, Duration::from_secs(30), "three polls", || {
        control("hits").trim().parse::<u32>().unwrap_or(0) >= 3
    });
    // The reader hears of nothing from here on.
    crate::coherence::hold_before_next_poll(cluster, http, &writer);
    fs::write(writer.path("config.new"), b"version 2").unwrap();
    fs::rename(writer.path("config.new"), writer.path("config")).unwrap();
    fs::remove_file(writer.path("gone")).unwrap();
    let seen = fs::metadata(reader.path("config")).unwrap().ino();
    assert_eq!(seen, old, "the reader's kernel still has the old name");
    assert_eq!(fs::read(reader.path("config")).unwrap(), b"version 2");
    // A name unlinked elsewhere: gone, as on a local file system.
    let err = fs::read(reader.path("gone")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    crate::observe::mount_fault(http, "mount.watch_changes", "disarm");
}

/// One of the first member's log figures (`dfs_meta_log{what=...}`).
fn log_figure(cluster: &ProcessCluster, what: &str) -> f64 {
    let series = format!("dfs_meta_log{{what=\"{what}\"}}");
    crate::observe::required_value(cluster.meta_http, &series)
}

/// A lone server flushes an idle log's appends in Raft's own task (saving two thread
/// wake-ups); a leader with followers hands them to the log's writer thread, so that the
/// entries go out to the followers while its own flush runs.
#[test]
fn a_leader_with_followers_flushes_its_log_beside_them() {
    let mut cluster = one_member_of_three(|_| {});
    let mkdirs = |cluster: &ProcessCluster, names: std::ops::Range<u32>| {
        for i in names {
            let path = format!("v:/d{i}");
            let out = cluster.cli().args(["mkdir", &path]).output().unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    };
    let before = log_figure(&cluster, "appends_flushed_inline");
    mkdirs(&cluster, 0..5);
    assert!(
        log_figure(&cluster, "appends_flushed_inline") >= before + 5.0,
        "a lone server's appends, one at a time, flushed in Raft's task"
    );

    add_member(&mut cluster, 1);
    add_member(&mut cluster, 2);
    let group = members(&cluster);
    let first = cluster.member_addr(0).to_string();
    assert_eq!(
        leader(&group).map(|m| m.addr.clone()),
        Some(first),
        "the first member still leads: {group:?}"
    );
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "appends handed to the writer thread",
        || log_figure(&cluster, "appends_inline") == 0.0,
    );
    let before = log_figure(&cluster, "appends_flushed_inline");
    mkdirs(&cluster, 5..10);
    assert_eq!(
        log_figure(&cluster, "appends_flushed_inline"),
        before,
        "a leader of followers flushed an append in Raft's task"
    );
    let out = cluster.cli().args(["ls", "v:/"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for i in 0..10 {
        assert!(listed.contains(&format!("d{i}")), "d{i} missing: {listed}");
    }
}

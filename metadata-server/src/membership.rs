//! Which chunk servers are alive: heartbeats kept in memory. Addresses are also stored durably
//! (through the state machine) so that layouts can name servers after a restart; liveness is
//! not, since it is only true for the moment it was seen.

use crate::placement::Candidate;
use dfs_common::proto::meta::ServerStatus;
use dfs_common::ServerId;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after this server starts a chunk server may take to register: a heartbeat it
/// sent to the process before (whose connection is dead) is given up after 4 s (a chunk
/// server's `heartbeat_timeout` at its default interval), and the next one follows.
const REGISTRATION_GRACE: Duration = Duration::from_secs(6);

#[derive(Clone, Debug)]
struct Seen {
    addr: String,
    capacity: u64,
    used: u64,
    shards: u64,
    at: Option<Instant>,
}

pub struct Membership {
    servers: Mutex<BTreeMap<ServerId, Seen>>,
    /// A server silent for longer is down.
    timeout: Duration,
    started: Instant,
    /// Servers being drained: live, readable, but no new shards go there.
    draining: Mutex<std::collections::HashSet<ServerId>>,
}

impl Membership {
    pub fn new(timeout: Duration, registered: Vec<(ServerId, String)>) -> Self {
        let servers = registered
            .into_iter()
            .map(|(id, addr)| {
                (
                    id,
                    Seen {
                        addr,
                        capacity: 0,
                        used: 0,
                        shards: 0,
                        at: None,
                    },
                )
            })
            .collect();
        Membership {
            servers: Mutex::new(servers),
            timeout,
            started: Instant::now(),
            draining: Mutex::new(Default::default()),
        }
    }

    pub fn set_draining(&self, server: ServerId, draining: bool) {
        let mut set = self.draining.lock().expect("draining lock");
        if draining {
            set.insert(server);
        } else {
            set.remove(&server);
        }
    }

    pub fn is_draining(&self, server: ServerId) -> bool {
        self.draining
            .lock()
            .expect("draining lock")
            .contains(&server)
    }

    /// Whether the server heartbeats now.
    pub fn is_live(&self, server: ServerId) -> bool {
        let servers = self.servers.lock().expect("membership lock");
        servers
            .get(&server)
            .is_some_and(|s| self.is_up(s, Instant::now()))
    }

    /// Forgets a removed server.
    pub fn forget(&self, server: ServerId) {
        self.servers
            .lock()
            .expect("membership lock")
            .remove(&server);
        self.set_draining(server, false);
    }

    /// Live servers that may receive new shards (not draining).
    pub fn placeable(&self) -> Vec<Candidate> {
        let draining = self.draining.lock().expect("draining lock").clone();
        self.live()
            .into_iter()
            .filter(|c| !draining.contains(&c.id))
            .collect()
    }

    /// Placeable servers once at least `wanted` are live, or once every server that is up has
    /// had the time to send a heartbeat since this server started: the server timeout, and
    /// at least [`REGISTRATION_GRACE`]. Right after a restart no heartbeat has arrived yet,
    /// and placing then would fail writes for no reason.
    pub async fn live_when_known(&self, wanted: usize) -> Vec<Candidate> {
        let grace = self.timeout.max(REGISTRATION_GRACE);
        loop {
            let live = self.placeable();
            if live.len() >= wanted || self.started.elapsed() > grace {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records a heartbeat. Returns true when the server is new or moved, so its address must
    /// be stored durably.
    pub fn heartbeat(
        &self,
        id: ServerId,
        addr: &str,
        capacity: u64,
        used: u64,
        shards: u64,
    ) -> bool {
        let mut servers = self.servers.lock().expect("membership lock");
        let known_addr = servers.get(&id).map(|s| s.addr.clone());
        servers.insert(
            id,
            Seen {
                addr: addr.to_string(),
                capacity,
                used,
                shards,
                at: Some(Instant::now()),
            },
        );
        known_addr.as_deref() != Some(addr)
    }

    /// Forgets the durable-address check for a server, so its next heartbeat registers again
    /// (used when storing its address failed).
    pub fn forget_address(&self, id: ServerId) {
        if let Some(s) = self.servers.lock().expect("membership lock").get_mut(&id) {
            s.addr.clear();
        }
    }

    fn is_up(&self, seen: &Seen, now: Instant) -> bool {
        seen.at
            .is_some_and(|at| now.duration_since(at) <= self.timeout)
    }

    /// Live servers as placement candidates.
    pub fn live(&self) -> Vec<Candidate> {
        let now = Instant::now();
        let servers = self.servers.lock().expect("membership lock");
        servers
            .iter()
            .filter(|(_, s)| self.is_up(s, now))
            .map(|(&id, s)| Candidate {
                id,
                capacity: s.capacity,
                used: s.used,
            })
            .collect()
    }

    /// Addresses of the live servers.
    pub fn live_addrs(&self) -> std::collections::HashMap<ServerId, String> {
        let now = Instant::now();
        let servers = self.servers.lock().expect("membership lock");
        servers
            .iter()
            .filter(|(_, s)| self.is_up(s, now))
            .map(|(&id, s)| (id, s.addr.clone()))
            .collect()
    }

    pub fn status(&self) -> Vec<ServerStatus> {
        let now = Instant::now();
        let servers = self.servers.lock().expect("membership lock");
        servers
            .iter()
            .map(|(&id, s)| ServerStatus {
                id,
                addr: s.addr.clone(),
                up: self.is_up(s, now),
                capacity: s.capacity,
                used: s.used,
                shards: s.shards,
                last_seen_secs: s.at.map(|at| now.duration_since(at).as_secs()),
                draining: self.is_draining(id),
                placed: 0,
            })
            .collect()
    }

    /// Capacity and free bytes of the live servers.
    pub fn capacity(&self) -> (u64, u64) {
        self.live().iter().fold((0, 0), |(cap, free), c| {
            (cap + c.capacity, free + c.capacity.saturating_sub(c.used))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn after_a_start_placement_waits_for_registrations_at_least_the_grace() {
        // A short server timeout (as in tests), long passed: a chunk server may still be giving
        // up a heartbeat to the process before, so placement waits out the grace.
        let mut membership = Membership::new(Duration::from_secs(2), Vec::new());
        membership.started = Instant::now() - (REGISTRATION_GRACE - Duration::from_secs(1));
        let asked = Instant::now();
        assert!(membership.live_when_known(1).await.is_empty());
        assert!(
            asked.elapsed() >= Duration::from_millis(900),
            "{:?}",
            asked.elapsed()
        );
        // A registration ends the wait at once.
        let membership = std::sync::Arc::new(Membership::new(Duration::from_secs(2), Vec::new()));
        let waiting = tokio::spawn({
            let membership = membership.clone();
            async move { membership.live_when_known(1).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        membership.heartbeat(ServerId(7), "127.0.0.1:1", 100, 0, 0);
        let live = waiting.await.unwrap();
        assert_eq!(live.iter().map(|c| c.id).collect::<Vec<_>>(), [ServerId(7)]);
    }
}

//! The metadata group as its callers see it: the address of every member, and the one believed
//! to lead. Requests go to the leader; a member that is not the leader answers with a hint,
//! and a leader that stops answering is found again by asking the others who leads.

use super::endpoint::Endpoint;
use super::rpc::Peer;
use crate::codec::ReplyStream;
use crate::error::{FsError, FsResult};
use crate::proto::meta::{req, MetaCall, MetaRpc};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a call waits for the member it uses before it asks the others who leads.
const ASK_OTHERS_AFTER: Duration = Duration::from_secs(1);
/// How long a member the others name as leader may leave a call unanswered before it is
/// asked whether the connection still works.
const STALE_AFTER: Duration = Duration::from_secs(2);
/// How often it asks again while they name no other leader (an election is under way).
const ASK_AGAIN_EVERY: Duration = Duration::from_millis(250);
/// Bound on asking one member who leads.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before trying again while the group has no leader (an election takes about 2 s).
const ELECTION_PAUSE: Duration = Duration::from_millis(200);

/// Every member of the metadata group, one connection each, and which one leads.
pub struct MetaLink {
    /// The members given, then any other a member named as leader.
    members: std::sync::RwLock<Vec<std::sync::Arc<Peer>>>,
    endpoint: Endpoint,
    timeout: Duration,
    /// The member believed to lead: where calls go first.
    current: AtomicUsize,
}

impl MetaLink {
    /// A link to the members at `addrs` (one for a metadata server that runs alone).
    pub fn new(endpoint: Endpoint, addrs: &[SocketAddr], timeout: Duration) -> FsResult<Self> {
        if addrs.is_empty() {
            return Err(FsError::invalid("no metadata server address given"));
        }
        let members = addrs
            .iter()
            .map(|&a| std::sync::Arc::new(Peer::new(endpoint.clone(), a).with_timeout(timeout)))
            .collect();
        Ok(MetaLink {
            members: std::sync::RwLock::new(members),
            endpoint,
            timeout,
            current: AtomicUsize::new(0),
        })
    }

    /// The member calls go to first.
    pub fn addr(&self) -> SocketAddr {
        self.member(self.current.load(Ordering::Relaxed)).1.addr()
    }

    /// Every member's address, in the order given.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members().iter().map(|m| m.addr()).collect()
    }

    fn members(&self) -> Vec<std::sync::Arc<Peer>> {
        self.members.read().expect("metadata members").clone()
    }

    /// Member `i` (modulo their number), with its index.
    fn member(&self, i: usize) -> (usize, std::sync::Arc<Peer>) {
        let members = self.members.read().expect("metadata members");
        let i = i % members.len();
        (i, members[i].clone())
    }

    fn count(&self) -> usize {
        self.members.read().expect("metadata members").len()
    }

    /// Sends `request` to the leader without a call id (a read, or a report that is safe to
    /// apply twice) and decodes its reply as the request's reply type.
    pub async fn ask<Q: MetaRpc>(&self, request: Q) -> FsResult<Q::Reply> {
        let call = MetaCall::untracked(request.into());
        let (reply, _) = self.call(&call, None, crate::codec::MAX_FRAME).await?;
        Ok(reply)
    }

    /// Like [`Peer::call`], to the leader.
    pub async fn call<Q, R>(
        &self,
        request: &Q,
        body: Option<Bytes>,
        max_reply: usize,
    ) -> FsResult<(R, ReplyStream)>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        let (reply, recv) = self.exchange(request, body, max_reply).await?;
        Ok((reply?, recv))
    }

    /// Like [`Peer::exchange`], to the leader: a member that is not the leader sends the call
    /// on to the one it names; one that does not answer is left for another. The outer error
    /// means no member answered; the inner one is the leader's answer.
    ///
    /// A call that is moved to another member may have reached the first one too: mutations
    /// carry a call id so that the group applies them once.
    pub async fn exchange<Q, R>(
        &self,
        request: &Q,
        body: Option<Bytes>,
        max_reply: usize,
    ) -> FsResult<(FsResult<R>, ReplyStream)>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        self.exchange_waiting(request, body, max_reply, Duration::ZERO)
            .await
    }

    /// [`Self::exchange`] for a call the server may hold for up to `wait` before it answers
    /// (a long poll): other members are asked who leads only once it is overdue.
    pub async fn exchange_waiting<Q, R>(
        &self,
        request: &Q,
        body: Option<Bytes>,
        max_reply: usize,
        wait: Duration,
    ) -> FsResult<(FsResult<R>, ReplyStream)>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        let mut last = None;
        // Each member gets a few chances: one for each hint, one for each election. Members
        // named by a hint along the way (the caller may know only one) get theirs too.
        let mut attempts = 0;
        while attempts < 3 * self.count() + 1 {
            attempts += 1;
            let n = self.count();
            let (at, member) = self.member(self.current.load(Ordering::Relaxed));
            let attempt = self
                .attempt(at, &member, request, body.clone(), max_reply, wait)
                .await;
            let failure = match attempt {
                Attempt::Answered(Ok((Err(FsError::NotLeader(hint)), _))) => {
                    match self.member_named(hint.as_deref()).await {
                        Some(leader) if leader != at => self.move_to(at, leader),
                        // No leader yet, or this member believes it leads (it is about to
                        // learn otherwise): wait for the election.
                        _ => {
                            tokio::time::sleep(ELECTION_PAUSE).await;
                            self.move_to(at, (at + 1) % n);
                        }
                    }
                    FsError::NotLeader(hint)
                }
                Attempt::Answered(Ok(answer)) => return Ok(answer),
                Attempt::Answered(Err(e)) => {
                    self.move_to(at, (at + 1) % n);
                    e
                }
                Attempt::Moved => continue,
            };
            if n == 1 && !matches!(failure, FsError::NotLeader(_)) {
                return Err(failure);
            }
            last = Some(failure);
        }
        Err(FsError::unavailable(format!(
            "no metadata leader among {:?}: {}",
            self.addrs(),
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }

    /// One exchange with member `at`. While it goes unanswered for [`ASK_OTHERS_AFTER`] beyond
    /// the `wait` the server may take by design, the other members are asked who leads; if
    /// they name another, the call is moved there. If they name `at` itself for [`STALE_AFTER`]
    /// beyond `wait` and it does not answer a question either, the connection to it is to a
    /// process that died and came back: the call starts again on a new one.
    async fn attempt<Q, R>(
        &self,
        at: usize,
        member: &Peer,
        request: &Q,
        body: Option<Bytes>,
        max_reply: usize,
        wait: Duration,
    ) -> Attempt<R>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        let lone = self.count() == 1;
        // Probing a lone server only helps a call that waits by design: any other call's
        // packets reach a restarted process, which resets the old connection.
        if lone && wait.is_zero() {
            return Attempt::Answered(member.exchange(request, body, max_reply).await);
        }
        {
            // Dropped before the connection is reset: the exchange may hold it meanwhile.
            let exchange = member.exchange(request, body, max_reply);
            let mut exchange = std::pin::pin!(exchange);
            let started = tokio::time::Instant::now();
            let mut ask_at = started + wait + ASK_OTHERS_AFTER;
            loop {
                tokio::select! {
                    answer = &mut exchange => return Attempt::Answered(answer),
                    _ = tokio::time::sleep_until(ask_at) => {
                        // A lone server restarted under a long poll (whose connection sends
                        // nothing the new process would reset) is found out by a question,
                        // not by the connection's idle timeout.
                        let leader = match lone {
                            true => Some(at),
                            false => self.leader_named_by_others(at).await,
                        };
                        match leader {
                            Some(leader) if leader != at => {
                                // Its cached connection may be to a process that died since:
                                // the moved call starts on a new one.
                                self.member(leader).1.reset().await;
                                self.move_to(at, leader);
                                return Attempt::Moved;
                            }
                            Some(_) if started.elapsed() >= wait + STALE_AFTER
                                && !self.answers(member).await => break,
                            _ => {}
                        }
                        ask_at = tokio::time::Instant::now() + ASK_AGAIN_EVERY;
                    }
                }
            }
        }
        // Unanswered on a connection that no longer answers a question either: the process
        // behind it died (and maybe came back); the call starts again on a new one.
        member.reset().await;
        Attempt::Moved
    }

    /// Whether `member` answers a question on the connection in use (a long call on it is
    /// still being worked on, not lost with a dead process).
    async fn answers(&self, member: &Peer) -> bool {
        let question = MetaCall::untracked(req::Leader.into());
        let ask = member.exchange::<_, <req::Leader as MetaRpc>::Reply>(&question, None, 4096);
        matches!(tokio::time::timeout(ASK_TIMEOUT, ask).await, Ok(Ok(_)))
    }

    /// Asks the members other than `at` who leads; the first that names a member of ours
    /// wins.
    async fn leader_named_by_others(&self, at: usize) -> Option<usize> {
        let question = MetaCall::untracked(req::Leader.into());
        for (i, member) in self.members().iter().enumerate() {
            if i == at {
                continue;
            }
            let ask = member.exchange::<_, <req::Leader as MetaRpc>::Reply>(&question, None, 4096);
            let leader = match tokio::time::timeout(ASK_TIMEOUT, ask).await {
                Ok(Ok((Ok(Some(leader)), _))) => leader,
                Ok(Ok(_)) => continue,
                // Perhaps a connection to a member that died and came back: the next
                // question makes a new one.
                Ok(Err(_)) | Err(_) => {
                    member.reset().await;
                    continue;
                }
            };
            if let Some(index) = self.member_named(Some(&leader)).await {
                return Some(index);
            }
        }
        None
    }

    /// The member with address `addr` (as members advertise it); one not given at the start
    /// is added.
    async fn member_named(&self, addr: Option<&str>) -> Option<usize> {
        let addr = super::lookup(addr?).await.ok()?;
        let mut members = self.members.write().expect("metadata members");
        if let Some(i) = members.iter().position(|m| m.addr() == addr) {
            return Some(i);
        }
        let peer = Peer::new(self.endpoint.clone(), addr).with_timeout(self.timeout);
        members.push(std::sync::Arc::new(peer));
        Some(members.len() - 1)
    }

    /// Calls go to `to` from now on, unless another call moved them already.
    fn move_to(&self, from: usize, to: usize) {
        let _ = self
            .current
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
    }
}

enum Attempt<R> {
    Answered(FsResult<(FsResult<R>, ReplyStream)>),
    /// Another member leads: the call goes there.
    Moved,
}

/// Parses a comma-separated list of `HOST:PORT` (the members of a metadata group).
pub fn resolve_list(list: &str) -> FsResult<Vec<SocketAddr>> {
    let addrs = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(super::resolve_addr)
        .collect::<FsResult<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(FsError::invalid(format!(
            "no metadata server address in {list:?}"
        )));
    }
    Ok(addrs)
}

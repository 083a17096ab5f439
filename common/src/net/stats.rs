//! Transport counters of this process's QUIC connections, for `/metrics`: datagrams sent and
//! received, send calls (several datagrams go out per call with GSO), packets lost, black holes
//! detected, and the smallest datagram size in use. They tell whether bulk transfers run at
//! full-size datagrams and without losses (see [`super::endpoint::MAX_DATAGRAM`]).

use quinn::Connection;
use std::sync::Mutex;

/// Counters summed over connections, open and closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportTotals {
    pub open_connections: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_calls: u64,
    pub lost_packets: u64,
    pub black_holes: u64,
    /// The smallest datagram size of the open connections (0 when none is open).
    pub smallest_datagram: u64,
}

struct Tracked {
    open: Vec<Connection>,
    /// What closed connections had counted when they were dropped from `open`.
    closed: TransportTotals,
}

static TRACKED: Mutex<Tracked> = Mutex::new(Tracked {
    open: Vec::new(),
    closed: TransportTotals {
        open_connections: 0,
        datagrams_sent: 0,
        datagrams_received: 0,
        send_calls: 0,
        lost_packets: 0,
        black_holes: 0,
        smallest_datagram: 0,
    },
});

fn add(into: &mut TransportTotals, conn: &Connection) {
    let s = conn.stats();
    into.datagrams_sent += s.udp_tx.datagrams;
    into.datagrams_received += s.udp_rx.datagrams;
    into.send_calls += s.udp_tx.ios;
    into.lost_packets += s.path.lost_packets;
    into.black_holes += s.path.black_holes_detected;
}

/// Counts `conn` in this process's totals from now on.
pub fn track(conn: &Connection) {
    let mut t = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    prune(&mut t);
    t.open.push(conn.clone());
}

/// Moves closed connections' counts into the closed totals.
fn prune(t: &mut Tracked) {
    let (closed, open): (Vec<_>, Vec<_>) = std::mem::take(&mut t.open)
        .into_iter()
        .partition(|c| c.close_reason().is_some());
    for c in &closed {
        add(&mut t.closed, c);
    }
    t.open = open;
}

/// This process's transport totals.
pub fn totals() -> TransportTotals {
    let mut t = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    prune(&mut t);
    let mut totals = t.closed;
    totals.open_connections = t.open.len() as u64;
    totals.smallest_datagram = t
        .open
        .iter()
        .map(|c| c.stats().path.current_mtu as u64)
        .min()
        .unwrap_or(0);
    for c in &t.open {
        add(&mut totals, c);
    }
    totals
}

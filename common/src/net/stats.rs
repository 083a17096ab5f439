//! Transport counters of this process's QUIC connections, for `/metrics`: datagrams sent and
//! received, send calls (several datagrams go out per call with GSO), packets lost, black holes
//! detected, and the smallest datagram size in use. They tell whether bulk transfers run at
//! full-size datagrams and without losses (see [`super::endpoint::MAX_DATAGRAM`] and
//! [`super::endpoint::LOOPBACK_DATAGRAM`]).
//!
//! A connection is counted through a [`Counted`] held by its owner beside it; the registry
//! itself holds no connection past its owner's, so a connection still closes when its owner
//! drops it, as quinn does with its last handle.

use quinn::Connection;
use std::sync::{Arc, Mutex};

/// Counters summed over connections, open and closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportTotals {
    pub open_connections: u64,
    /// The open connections that peers made to this process (its clients, for a server).
    pub accepted_connections: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_calls: u64,
    pub lost_packets: u64,
    pub black_holes: u64,
    /// The smallest datagram size of the open connections (0 when none is open).
    pub smallest_datagram: u64,
}

const ZERO: TransportTotals = TransportTotals {
    open_connections: 0,
    accepted_connections: 0,
    datagrams_sent: 0,
    datagrams_received: 0,
    send_calls: 0,
    lost_packets: 0,
    black_holes: 0,
    smallest_datagram: 0,
};

/// A counted connection, emptied when its [`Counted`] is dropped.
type Slot = Mutex<Option<Connection>>;

struct Registry {
    /// Each counted connection's slot, and whether a peer made it.
    slots: Vec<(Arc<Slot>, bool)>,
    /// What connections whose owners dropped them had counted by then.
    closed: TransportTotals,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    slots: Vec::new(),
    closed: ZERO,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn add(into: &mut TransportTotals, conn: &Connection) {
    let s = conn.stats();
    into.datagrams_sent += s.udp_tx.datagrams;
    into.datagrams_received += s.udp_rx.datagrams;
    into.send_calls += s.udp_tx.ios;
    into.lost_packets += s.path.lost_packets;
    into.black_holes += s.path.black_holes_detected;
}

/// A connection, counted in this process's totals for as long as this lives; its counts stay
/// in the totals after it is dropped.
pub struct Counted {
    conn: Connection,
    slot: Arc<Slot>,
}

impl Counted {
    /// A connection this process made.
    pub fn new(conn: Connection) -> Self {
        Self::register(conn, false)
    }

    /// A connection a peer made to this process.
    pub fn accepted(conn: Connection) -> Self {
        Self::register(conn, true)
    }

    fn register(conn: Connection, accepted: bool) -> Self {
        let slot = Arc::new(Mutex::new(Some(conn.clone())));
        let mut r = registry();
        r.slots.retain(|(s, _)| Arc::strong_count(s) > 1);
        r.slots.push((slot.clone(), accepted));
        Counted { conn, slot }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let conn = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = conn {
            add(&mut registry().closed, &conn);
        }
    }
}

/// This process's transport totals.
pub fn totals() -> TransportTotals {
    let r = registry();
    let mut totals = r.closed;
    let mut smallest: Option<u64> = None;
    for (slot, accepted) in &r.slots {
        let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = slot.as_ref() else { continue };
        add(&mut totals, conn);
        if conn.close_reason().is_none() {
            totals.open_connections += 1;
            totals.accepted_connections += u64::from(*accepted);
            let mtu = conn.stats().path.current_mtu as u64;
            smallest = Some(smallest.map_or(mtu, |s| s.min(mtu)));
        }
    }
    totals.smallest_datagram = smallest.unwrap_or(0);
    totals
}

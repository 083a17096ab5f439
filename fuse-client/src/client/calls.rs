//! Numbering of this client's mutations, so the metadata server can answer a retry with the
//! first reply instead of applying it again (see the metadata server's `calls` module).

use dfs_common::proto::meta::CallId;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// This client's id and its mutations still waiting for a reply.
pub(crate) struct CallIds {
    client: u64,
    state: Arc<Mutex<State>>,
}

struct State {
    next: u64,
    in_flight: BTreeSet<u64>,
}

/// A mutation's id, held for as long as the client may retry it; dropping it tells later
/// calls that the server may forget this one.
pub(crate) struct Outstanding {
    pub(crate) id: CallId,
    state: Arc<Mutex<State>>,
}

impl CallIds {
    pub(crate) fn new() -> Self {
        CallIds {
            client: rand::random(),
            state: Arc::new(Mutex::new(State {
                next: 1,
                in_flight: BTreeSet::new(),
            })),
        }
    }

    /// The id the metadata server knows this client by.
    pub(crate) fn client(&self) -> u64 {
        self.client
    }

    /// Numbers a new mutation.
    pub(crate) fn begin(&self) -> Outstanding {
        let mut state = self.state.lock().expect("call ids");
        let seq = state.next;
        state.next += 1;
        state.in_flight.insert(seq);
        let done_below = *state.in_flight.first().expect("just inserted");
        Outstanding {
            id: CallId {
                client: self.client,
                seq,
                done_below,
            },
            state: self.state.clone(),
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.state
            .lock()
            .expect("call ids")
            .in_flight
            .remove(&self.id.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_water_mark_is_the_oldest_call_in_flight() {
        let ids = CallIds::new();
        let a = ids.begin();
        let b = ids.begin();
        assert_eq!((a.id.seq, a.id.done_below), (1, 1));
        assert_eq!((b.id.seq, b.id.done_below), (2, 1));
        drop(a);
        let c = ids.begin();
        assert_eq!((c.id.seq, c.id.done_below), (3, 2));
        drop(b);
        drop(c);
        let d = ids.begin();
        assert_eq!((d.id.seq, d.id.done_below), (4, 4));
        assert_eq!(d.id.client, c_client(&ids));
    }

    fn c_client(ids: &CallIds) -> u64 {
        ids.client
    }
}

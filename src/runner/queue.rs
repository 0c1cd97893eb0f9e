//! The fair FIFO queue that holds runs beyond `max_concurrent`: a run enters, waits for a slot,
//! and gives it to the next in line when its slot drops.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A FIFO of runs waiting for one of `max` slots.
pub(super) struct Queue {
    pub(super) max: usize,
    pub(super) state: Mutex<QueueState>,
}

#[derive(Default)]
pub(super) struct QueueState {
    pub(super) running: usize,
    pub(super) waiting: VecDeque<oneshot::Sender<Slot>>,
    /// Admissions so far: numbered under the lock, so the numbers show the queue's order.
    pub(super) admitted: u64,
}

/// A slot of the queue; handed to the next waiter when dropped.
pub(super) struct Slot {
    pub(super) queue: Arc<Queue>,
    pub(super) admitted: u64,
}

pub(super) enum Ticket {
    Ready(Slot),
    Waiting {
        position: usize,
        slot: oneshot::Receiver<Slot>,
    },
}

impl Queue {
    pub(super) fn enter(self: &Arc<Self>) -> Ticket {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.running < self.max && st.waiting.is_empty() {
            st.running += 1;
            st.admitted += 1;
            return Ticket::Ready(Slot {
                queue: self.clone(),
                admitted: st.admitted - 1,
            });
        }
        let (tx, rx) = oneshot::channel();
        st.waiting.push_back(tx);
        Ticket::Waiting {
            position: st.waiting.len() - 1,
            slot: rx,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(tx) = st.waiting.pop_front() {
            let next = Slot {
                queue: self.queue.clone(),
                admitted: st.admitted,
            };
            match tx.send(next) {
                Ok(()) => {
                    st.admitted += 1;
                    return;
                }
                // That waiter gave up: the slot goes to the one after it. Forgotten, not
                // dropped, since dropping it would re-enter this function under the lock.
                Err(slot) => std::mem::forget(slot),
            }
        }
        st.running -= 1;
    }
}

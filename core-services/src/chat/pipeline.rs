//! Pipelined appends to one conversation's log (see `Chat::send`).
//!
//! A send takes its number under the conversation's lock and queues its commit in the
//! store's writer (`Store::commit_queued`), then leaves the lock and waits for
//! durability outside it: the next send of the same conversation does not wait for the
//! previous one's `fsync`, and both share one. Two pieces make that safe:
//!
//! - [`PendingHeads`]: the head each queued commit writes, until it is durable. The next
//!   append chains on it (its condition expects that head): it is queued behind it, so
//!   the writer applies it after, and it fails if the one before failed (another node
//!   changed the head), and then starts over from the stored head.
//! - [`Turns`]: the order in which entries were queued, which is their log order. A send
//!   pushes its entry only after every entry queued before it has been pushed (or has
//!   failed), so subscribers get a conversation's entries in order.
//!
//! Both are per shard (a conversation's changes run on its owner shard) and hold only
//! conversations with commits in flight.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use bytes::Bytes;
use tokio::sync::Notify;

use super::Head;

/// Heads written by commits that are queued and not yet durable, per conversation.
#[derive(Default)]
pub(super) struct PendingHeads {
    map: RefCell<HashMap<u64, Pending>>,
    epochs: Cell<u64>,
}

struct Pending {
    raw: Bytes,
    head: Head,
    /// Commits queued on this chain and not yet settled.
    in_flight: u32,
    /// Which chain (a failure ends one; a later commit starts another).
    epoch: u64,
}

impl PendingHeads {
    /// The newest head queued for `id`, if a commit is in flight.
    pub(super) fn get(&self, id: u64) -> Option<(Bytes, Head)> {
        self.map
            .borrow()
            .get(&id)
            .map(|p| (p.raw.clone(), p.head.clone()))
    }

    /// A commit writing `head` (encoded: `raw`) was queued; returns its chain.
    pub(super) fn queued(&self, id: u64, raw: Bytes, head: Head) -> u64 {
        let mut map = self.map.borrow_mut();
        match map.get_mut(&id) {
            Some(p) => {
                p.raw = raw;
                p.head = head;
                p.in_flight += 1;
                p.epoch
            }
            None => {
                let epoch = self.epochs.get() + 1;
                self.epochs.set(epoch);
                map.insert(
                    id,
                    Pending {
                        raw,
                        head,
                        in_flight: 1,
                        epoch,
                    },
                );
                epoch
            }
        }
    }

    /// A commit of chain `epoch` is durable (`held`) or failed. A failure ends the chain:
    /// every commit queued on it fails too, and the next append reads the stored head.
    /// Once the last one is durable, the store has the head and the entry goes.
    pub(super) fn settled(&self, id: u64, epoch: u64, held: bool) {
        let mut map = self.map.borrow_mut();
        let Some(p) = map.get_mut(&id) else {
            return;
        };
        if p.epoch != epoch {
            return; // A chain already ended.
        }
        p.in_flight -= 1;
        if !held || p.in_flight == 0 {
            map.remove(&id);
        }
    }

    /// Conversations with commits in flight (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.borrow().len()
    }
}

/// Turns to push, per conversation, in the order entries were queued.
#[derive(Default, Clone)]
pub(super) struct Turns(Rc<RefCell<HashMap<u64, Rc<Line>>>>);

#[derive(Default)]
struct Line {
    /// The next turn to give.
    next: Cell<u64>,
    /// Every turn below this one is over.
    served: Cell<u64>,
    /// Turns over, above `served`.
    over: RefCell<BTreeSet<u64>>,
    notify: Notify,
}

/// One entry's place in its conversation's push order; dropping it ends the turn.
pub(super) struct Turn {
    turns: Turns,
    id: u64,
    line: Rc<Line>,
    n: u64,
}

impl Turns {
    /// The next turn of conversation `id` (take it under the conversation's lock, right
    /// after queueing the entry).
    pub(super) fn take(&self, id: u64) -> Turn {
        let line = self.0.borrow_mut().entry(id).or_default().clone();
        let n = line.next.get();
        line.next.set(n + 1);
        Turn {
            turns: self.clone(),
            id,
            line,
            n,
        }
    }

    /// Conversations with turns outstanding (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

impl Turn {
    /// Waits until every earlier turn of the conversation is over.
    pub(super) async fn ready(&self) {
        loop {
            // Registered before the check: a turn ending in between still wakes it.
            let woken = self.line.notify.notified();
            if self.line.served.get() >= self.n {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let line = &self.line;
        line.over.borrow_mut().insert(self.n);
        let mut served = line.served.get();
        while line.over.borrow_mut().remove(&served) {
            served += 1;
        }
        line.served.set(served);
        line.notify.notify_waiters();
        if served == line.next.get() {
            // No turn outstanding: forget the conversation.
            let mut map = self.turns.0.borrow_mut();
            if map.get(&self.id).is_some_and(|l| Rc::ptr_eq(l, line)) {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_served_in_the_order_taken_whatever_order_they_end() {
        let turns = Turns::default();
        let (a, b, c) = (turns.take(7), turns.take(7), turns.take(7));
        let other = turns.take(8); // another conversation: its own line
        other.ready().await;
        let waiting_c = async { c.ready().await };
        tokio::pin!(waiting_c);
        assert!(futures::poll!(waiting_c.as_mut()).is_pending());
        // The second ends first (a failed commit): the third still waits for the first.
        drop(b);
        assert!(futures::poll!(waiting_c.as_mut()).is_pending());
        a.ready().await;
        drop(a);
        waiting_c.await;
        drop(other);
        assert_eq!(turns.len(), 1, "the third turn is still out");
    }

    #[test]
    fn a_failure_ends_the_chain_and_the_last_durable_commit_forgets_it() {
        let heads = PendingHeads::default();
        let head = |n: u64| Head {
            last_seq: n,
            ..Head::default()
        };
        let first = heads.queued(1, Bytes::from_static(b"1"), head(1));
        let second = heads.queued(1, Bytes::from_static(b"2"), head(2));
        assert_eq!(first, second, "one chain");
        assert_eq!(heads.get(1).map(|(_, h)| h.last_seq), Some(2));
        heads.settled(1, first, true);
        assert_eq!(
            heads.get(1).map(|(_, h)| h.last_seq),
            Some(2),
            "one still in flight"
        );
        heads.settled(1, second, true);
        assert_eq!(heads.len(), 0);
        // A failure: the chain goes, and a late settlement of it touches a new one.
        let old = heads.queued(1, Bytes::from_static(b"3"), head(3));
        heads.queued(1, Bytes::from_static(b"4"), head(4));
        heads.settled(1, old, false);
        assert!(heads.get(1).is_none());
        let new = heads.queued(1, Bytes::from_static(b"5"), head(5));
        assert_ne!(new, old);
        heads.settled(1, old, false); // the fourth, failing after its chain ended
        assert_eq!(heads.get(1).map(|(_, h)| h.last_seq), Some(5));
    }
}

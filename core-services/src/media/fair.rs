//! A node's processing workers, shared fairly between the users waiting for them: a
//! worker that comes free goes to the next user in turn (round robin over the users
//! with jobs waiting, each user's jobs in their order), so one user's hundred videos
//! never make another user's one photo wait for all of them. It owns only the order of
//! the grants; what a worker runs is the caller's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The workers and who waits for them.
#[derive(Clone)]
pub struct FairPool(Arc<Mutex<State>>);

struct State {
    /// Workers not lent.
    free: usize,
    /// Each waiting user's waiters, oldest first (only users with some).
    waiting: HashMap<u64, VecDeque<oneshot::Sender<Worker>>>,
    /// Users with waiters, in the order they get their next turn.
    turns: VecDeque<u64>,
}

/// One worker, lent until dropped.
pub struct Worker {
    pool: Option<FairPool>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back();
        }
    }
}

impl FairPool {
    /// A pool of `workers` (at least one).
    pub fn new(workers: usize) -> Self {
        Self(Arc::new(Mutex::new(State {
            free: workers.max(1),
            waiting: HashMap::new(),
            turns: VecDeque::new(),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker for one of `owner`'s jobs: at once when one is free and nobody waits,
    /// else when `owner`'s turn comes.
    pub async fn acquire(&self, owner: u64) -> Worker {
        let rx = {
            let mut guard = self.state();
            let s = &mut *guard;
            if s.free > 0 && s.turns.is_empty() {
                s.free -= 1;
                return Worker {
                    pool: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = s.waiting.entry(owner).or_default();
            if queue.is_empty() {
                s.turns.push_back(owner);
            }
            queue.push_back(tx);
            rx
        };
        match rx.await {
            Ok(worker) => worker,
            // The pool went away with its waiters (never while `self` lives): nothing is
            // held back.
            Err(_) => Worker { pool: None },
        }
    }

    /// A worker came back: to the next user in turn (whose waiter is still there), else
    /// free.
    fn give_back(&self) {
        let mut s = self.state();
        while let Some(owner) = s.turns.pop_front() {
            let Some(queue) = s.waiting.get_mut(&owner) else {
                continue;
            };
            let next = queue.pop_front();
            let more = !queue.is_empty();
            if more {
                s.turns.push_back(owner);
            } else {
                s.waiting.remove(&owner);
            }
            if let Some(tx) = next {
                let worker = Worker {
                    pool: Some(self.clone()),
                };
                match tx.send(worker) {
                    Ok(()) => return,
                    // Its job was dropped: the loop offers the worker to the next in
                    // turn (or counts it free). It is disarmed first: dropped armed,
                    // it would give itself back under this lock and deadlock.
                    Err(mut worker) => {
                        worker.pool = None;
                        continue;
                    }
                }
            }
        }
        s.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants come in turn: Ben's one job goes before Ana's second, though she queued
    /// five first; a waiter that went away is skipped.
    #[tokio::test]
    async fn a_freed_worker_goes_to_the_next_user_in_turn() {
        let pool = FairPool::new(1);
        let first = pool.acquire(1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let spawn = |owner: u64, tag: &'static str| {
            let (pool, order) = (pool.clone(), order.clone());
            tokio::spawn(async move {
                let w = pool.acquire(owner).await;
                order.lock().expect("order").push(tag);
                tokio::task::yield_now().await;
                drop(w);
            })
        };
        for tag in ["ana1", "ana2", "ana3"] {
            tasks.push(spawn(1, tag));
            tokio::task::yield_now().await;
        }
        let gone = spawn(3, "gone");
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        tasks.push(spawn(2, "ben1"));
        tokio::task::yield_now().await;
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(
            *order.lock().expect("order"),
            vec!["ana1", "ben1", "ana2", "ana3"]
        );
        // Everything came back: a worker at once.
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), pool.acquire(9))
            .await
            .expect("a worker at once");
        assert_eq!(pool.state().free, 0);
        drop(again);
        assert_eq!(pool.state().free, 1);
    }
}

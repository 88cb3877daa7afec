//! Test helpers shared by the core-services suites: a store that can hold one
//! operation at a gate (to drive races deterministically) and an outbox that keeps the
//! mail the accounts service sends.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use selfie_services::BoxFuture;
use selfie_services::auth::mail::{Mail, MailError, Mailer};
use selfie_storage::{Commit, Mutation, Page, Scan, Store, StoreError, Table};
use tokio::sync::oneshot;

/// The kinds of store operation a [`Gate`] can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
    Scan,
    InsertIfAbsent,
    DeleteIfPresent,
    CompareAndSet,
    Commit,
    /// The writes of a commit whose condition held, applied apart from it the way CQL
    /// does (the condition is a lightweight transaction, the writes land after it): the
    /// gate holds them between the two (table name: "").
    CommitWrites,
}

enum Action {
    /// Hold the operation until released.
    Hold {
        reached: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    },
    /// Fail it (an I/O error), without running it.
    Fail,
}

struct Armed {
    op: Op,
    table: &'static str,
    action: Action,
}

/// Holds the next matching operation until released: `arm` says which, the returned
/// [`Held`] says when it was reached and lets it go on.
#[derive(Default, Clone)]
pub struct Gate(Arc<Mutex<Option<Armed>>>);

/// One armed gate: await [`Held::reached`], do what must happen meanwhile, then
/// [`Held::release`].
pub struct Held {
    reached: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

impl Held {
    /// Waits until the held operation is reached (it has not run yet).
    pub async fn reached(&mut self) {
        if let Some(r) = self.reached.take() {
            tokio::time::timeout(Duration::from_secs(30), r)
                .await
                .expect("the gated operation was reached in time")
                .expect("gate dropped");
        }
    }

    /// Lets the held operation run.
    pub fn release(&mut self) {
        if let Some(r) = self.release.take() {
            let _ = r.send(());
        }
    }
}

impl Gate {
    /// Holds the next `op` on `table` (by name) before it runs.
    pub fn arm(&self, op: Op, table: &'static str) -> Held {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.0.lock().expect("gate") = Some(Armed {
            op,
            table,
            action: Action::Hold {
                reached: reached_tx,
                release: release_rx,
            },
        });
        Held {
            reached: Some(reached_rx),
            release: Some(release_tx),
        }
    }

    /// Fails the next `op` on `table` with an I/O error (a storage fault), unrun.
    pub fn fail(&self, op: Op, table: &'static str) {
        *self.0.lock().expect("gate") = Some(Armed {
            op,
            table,
            action: Action::Fail,
        });
    }

    /// Whether the next matching operation is `op` on `table`.
    fn armed_for(&self, op: Op, table: &str) -> bool {
        self.0
            .lock()
            .expect("gate")
            .as_ref()
            .is_some_and(|a| a.op == op && a.table == table)
    }

    async fn pass(&self, op: Op, table: &str) -> Result<(), StoreError> {
        let armed = {
            let mut slot = self.0.lock().expect("gate");
            match slot.as_ref() {
                Some(a) if a.op == op && a.table == table => slot.take(),
                _ => None,
            }
        };
        match armed.map(|a| a.action) {
            Some(Action::Hold { reached, release }) => {
                let _ = reached.send(());
                let _ = release.await;
                Ok(())
            }
            Some(Action::Fail) => Err(StoreError::Io(std::io::Error::other(
                "injected by the test gate",
            ))),
            None => Ok(()),
        }
    }
}

/// A clock the test moves by hand.
pub struct ManualClock(pub std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at a fixed instant in 2027.
    pub fn new() -> Arc<Self> {
        Arc::new(Self(std::sync::atomic::AtomicU64::new(1_800_000_000_000)))
    }

    /// Moves the clock on by `d`.
    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl selfie_storage::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A store whose operations pass a [`Gate`] first.
#[derive(Clone)]
pub struct Gated<S> {
    pub inner: S,
    pub gate: Gate,
}

impl<S: Store> Store for Gated<S> {
    async fn put(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.gate.pass(Op::Put, table.name).await?;
        self.inner
            .put(table, partition, clustering, value, ttl)
            .await
    }

    async fn get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
        self.gate.pass(Op::Get, table.name).await?;
        self.inner.get(table, partition, clustering).await
    }

    async fn delete(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<(), StoreError> {
        self.gate.pass(Op::Delete, table.name).await?;
        self.inner.delete(table, partition, clustering).await
    }

    async fn scan(
        &self,
        table: &'static Table,
        partition: &[u8],
        scan: &Scan,
    ) -> Result<Page, StoreError> {
        self.gate.pass(Op::Scan, table.name).await?;
        self.inner.scan(table, partition, scan).await
    }

    async fn batch(
        &self,
        table: &'static Table,
        partition: &[u8],
        mutations: &[Mutation],
    ) -> Result<(), StoreError> {
        self.inner.batch(table, partition, mutations).await
    }

    async fn insert_if_absent(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.gate.pass(Op::InsertIfAbsent, table.name).await?;
        self.inner
            .insert_if_absent(table, partition, clustering, value, ttl)
            .await
    }

    async fn delete_if_present(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<bool, StoreError> {
        self.gate.pass(Op::DeleteIfPresent, table.name).await?;
        self.inner
            .delete_if_present(table, partition, clustering)
            .await
    }

    async fn compare_and_set(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.gate.pass(Op::CompareAndSet, table.name).await?;
        self.inner
            .compare_and_set(table, partition, clustering, expected, new, ttl)
            .await
    }

    async fn commit(&self, commit: &Commit) -> Result<bool, StoreError> {
        if commit.condition.is_some() && self.gate.armed_for(Op::CommitWrites, "") {
            // CQL's order: the condition, then (held here) the writes.
            let condition = Commit {
                condition: commit.condition.clone(),
                writes: Vec::new(),
            };
            if !self.inner.commit(&condition).await? {
                return Ok(false);
            }
            self.gate.pass(Op::CommitWrites, "").await?;
            let writes = Commit {
                condition: None,
                writes: commit.writes.clone(),
            };
            return self.inner.commit(&writes).await;
        }
        self.gate.pass(Op::Commit, "").await?;
        self.inner.commit(commit).await
    }

    async fn counter_add(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        delta: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .counter_add(table, partition, clustering, delta)
            .await
    }

    async fn counter_get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<i64, StoreError> {
        self.inner.counter_get(table, partition, clustering).await
    }
}

/// Keeps every mail the service hands over (the SMTP seam; the edge suites use a real
/// SMTP server).
#[derive(Default)]
pub struct Outbox(Mutex<Vec<Mail>>);

impl Mailer for Outbox {
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), MailError>> {
        self.0.lock().expect("outbox").push(mail);
        Box::pin(async { Ok(()) })
    }
}

impl Outbox {
    /// Takes the oldest mail to `to`, waiting a little for it (mail goes out after the
    /// answer).
    pub async fn take(&self, to: &str) -> Mail {
        for _ in 0..500 {
            {
                let mut mails = self.0.lock().expect("outbox");
                if let Some(i) = mails.iter().position(|m| m.to.eq_ignore_ascii_case(to)) {
                    return mails.remove(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no mail to {to}");
    }

    /// Every mail not taken yet.
    pub fn pending(&self) -> Vec<Mail> {
        self.0.lock().expect("outbox").clone()
    }
}

/// The 10-character code in a verification or reset mail.
pub fn code_in(mail: &Mail) -> String {
    mail.body
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| {
            w.len() == 10
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        .unwrap_or_else(|| panic!("no code in {:?}", mail.body))
        .to_string()
}

/// A ready image of `owner`'s with id `media_id` (a placeholder without bytes): for
/// suites that test what uses media, not uploads (the edge's media suite does those).
pub async fn ready_media<S: Store>(store: &S, owner: u64, media_id: u64) {
    selfie_services::tables::media::seed(store, owner, media_id)
        .await
        .expect("media");
}

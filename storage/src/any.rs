//! A store chosen at run time (configuration): the embedded or the CQL backend, behind
//! one type, so that services stay generic over [`Store`] and binaries pick the backend.

use std::time::Duration;

use bytes::Bytes;

use crate::cql::CqlStore;
use crate::embedded::EmbeddedStore;
use crate::{Commit, Mutation, Page, Queued, Scan, Store, StoreError, Table};

/// Either backend.
#[derive(Clone)]
pub enum AnyStore {
    /// fjall in a data directory.
    Embedded(EmbeddedStore),
    /// ScyllaDB / Cassandra.
    Cql(CqlStore),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            AnyStore::Cql($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn put(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.put(table, partition, clustering, value, ttl))
    }

    async fn put_unsynced(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.put_unsynced(table, partition, clustering, value, ttl))
    }

    async fn get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
        delegate!(self, s => s.get(table, partition, clustering))
    }

    async fn delete(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.delete(table, partition, clustering))
    }

    async fn scan(
        &self,
        table: &'static Table,
        partition: &[u8],
        scan: &Scan,
    ) -> Result<Page, StoreError> {
        delegate!(self, s => s.scan(table, partition, scan))
    }

    async fn batch(
        &self,
        table: &'static Table,
        partition: &[u8],
        mutations: &[Mutation],
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.batch(table, partition, mutations))
    }

    async fn insert_if_absent(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.insert_if_absent(table, partition, clustering, value, ttl))
    }

    async fn delete_if_present(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.delete_if_present(table, partition, clustering))
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
        delegate!(self, s => s.compare_and_set(table, partition, clustering, expected, new, ttl))
    }

    async fn commit(&self, commit: &Commit) -> Result<bool, StoreError> {
        delegate!(self, s => s.commit(commit))
    }

    async fn commit_queued(&self, commit: &Commit) -> Result<Queued, StoreError> {
        delegate!(self, s => s.commit_queued(commit))
    }

    async fn counter_add(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        delta: i64,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.counter_add(table, partition, clustering, delta))
    }

    async fn counter_get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<i64, StoreError> {
        delegate!(self, s => s.counter_get(table, partition, clustering))
    }
}

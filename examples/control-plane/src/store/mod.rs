//! The store: what the control plane keeps its state in, behind one trait with two
//! backends of the same semantics.
//!
//! - [`EtcdStore`]: etcd v3 through the `etcd-client` crate (gRPC).
//! - [`MemoryStore`]: an in-process store for the demo and for tests without etcd. It
//!   reproduces the etcd semantics the control plane relies on: one revision per
//!   write or transaction (and per expired or revoked lease), per-key
//!   `create_revision` / `mod_revision` / `version` / `lease`, compares on a missing
//!   key counting as 0, watches from a revision (inclusive) with a `Canceled` message
//!   once that revision is compacted, leases with a minimum TTL of 2 s whose expiry
//!   deletes their keys in one revision.
//!
//! The trait carries only what the control plane uses. Every call is linearizable on
//! both backends. The same conformance tests run on both (`tests/store_conformance.rs`),
//! on real etcd processes, so the in-memory twin cannot drift from etcd.

mod etcd;
mod memory;

use std::future::Future;

use tokio::sync::mpsc;

pub use etcd::EtcdStore;
pub use memory::MemoryStore;

/// etcd's cluster-wide revision: +1 per modifying request.
pub type Revision = i64;
/// A lease id (etcd's 64-bit lease id).
pub type LeaseId = i64;

/// The most operations one transaction may carry on either backend (etcd's default
/// `--max-txn-ops`, checked as the longest of compares, then-ops and else-ops).
pub const MAX_TXN_OPS: usize = 128;

/// The shortest lease TTL, in seconds (etcd's minimum with its default election timeout).
pub const MIN_LEASE_TTL: i64 = 2;

/// One key with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (UTF-8; the control plane stores JSON or plain names).
    pub value: String,
    /// The revision of the key's last creation.
    pub create_revision: Revision,
    /// The revision of its last change.
    pub mod_revision: Revision,
    /// Changes since creation (1 after creation).
    pub version: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: LeaseId,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// What a compare looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The value. On a missing key the compare is false, whatever the operator.
    Value(String),
    /// The version (0 when missing).
    Version(i64),
    /// The creation revision (0 when missing).
    CreateRevision(Revision),
    /// The modification revision (0 when missing).
    ModRevision(Revision),
    /// The lease (0 when missing or none).
    Lease(LeaseId),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// The operator.
    pub op: CmpOp,
    /// What is compared with what.
    pub target: Target,
}

impl Compare {
    /// `value(key) op value`.
    pub fn value(key: impl Into<String>, op: CmpOp, value: impl Into<String>) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: Target::Value(value.into()),
        }
    }
    /// `version(key) op v`.
    pub fn version(key: impl Into<String>, op: CmpOp, v: i64) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: Target::Version(v),
        }
    }
    /// `create_revision(key) op r`; `== 0` means "absent".
    pub fn create_revision(key: impl Into<String>, op: CmpOp, r: Revision) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: Target::CreateRevision(r),
        }
    }
    /// `mod_revision(key) op r`.
    pub fn mod_revision(key: impl Into<String>, op: CmpOp, r: Revision) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: Target::ModRevision(r),
        }
    }
    /// `lease(key) op l`.
    pub fn lease(key: impl Into<String>, op: CmpOp, l: LeaseId) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: Target::Lease(l),
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key, attached to a lease if given.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
        /// The lease, if any.
        lease: Option<LeaseId>,
    },
    /// Deletes a key, or every key under a prefix.
    Delete {
        /// The key or prefix.
        key: String,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
    /// Reads a key, or every key under a prefix.
    Get {
        /// The key or prefix.
        key: String,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
    /// A put attached to `lease`.
    pub fn put_leased(key: impl Into<String>, value: impl Into<String>, lease: LeaseId) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }
    /// Deletes one key.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete {
            key: key.into(),
            prefix: false,
        }
    }
    /// Reads one key.
    pub fn get(key: impl Into<String>) -> Op {
        Op::Get {
            key: key.into(),
            prefix: false,
        }
    }
}

/// A compare-and-swap transaction: if every compare holds, `then` runs, else
/// `otherwise`; either way atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub when: Vec<Compare>,
    /// What runs if they hold.
    pub then: Vec<Op>,
    /// What runs if not.
    pub otherwise: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }
    /// Adds conditions.
    pub fn when(mut self, c: impl IntoIterator<Item = Compare>) -> Txn {
        self.when.extend(c);
        self
    }
    /// Adds operations run on success.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.then.extend(ops);
        self
    }
    /// Adds operations run on failure.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.otherwise.extend(ops);
        self
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held (and `then` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// One entry per operation that ran: the keys a `Get` found, empty for the others.
    pub responses: Vec<Vec<KeyValue>>,
}

/// A read: the store's revision and the keys found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The store's revision the read saw (the header revision, not the keys').
    pub revision: Revision,
    /// The keys, sorted.
    pub kvs: Vec<KeyValue>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// The TTL the store granted, in seconds (at least [`MIN_LEASE_TTL`]).
    pub ttl: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or changed (its new value and metadata).
    Put(KeyValue),
    /// A key was deleted, at this revision.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order. A transaction's changes come together, except that
    /// etcd splits a response past its size limit (1.5 MiB) into fragments, which
    /// arrive as messages of their own: consumers apply events one by one.
    Events(Vec<Event>),
    /// Nothing changed under the prefix up to this revision.
    Progress(Revision),
    /// The watch ended because its start revision was compacted away; the watcher
    /// must rebuild from a snapshot. `compact_revision` is the oldest revision left.
    Canceled {
        /// The oldest revision still kept.
        compact_revision: Revision,
    },
}

/// A watch: messages until the watch is canceled or the store connection breaks
/// (then [`WatchStream::next`] returns `None`, and the watcher rebuilds).
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::UnboundedReceiver<Result<WatchMessage, StoreError>>,
}

impl WatchStream {
    /// A stream fed by a backend's task through `rx`.
    ///
    /// The channel is unbounded so that a slow watcher never blocks a writer (the
    /// in-memory store sends while it holds its lock).
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Result<WatchMessage, StoreError>>,
    ) -> WatchStream {
        WatchStream { rx }
    }

    /// The next message; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchMessage, StoreError>> {
        self.rx.recv().await
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No endpoint answered.
    #[error("etcd at {endpoints} is unreachable: {reason}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What failed.
        reason: String,
    },
    /// A read or watch asked for a revision older than the last compaction.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction revision.
        compacted: Revision,
    },
    /// A read asked for a revision newer than the store's.
    #[error("revision {requested} is in the future (store is at {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's revision.
        current: Revision,
    },
    /// The lease expired or was revoked.
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A transaction the store refuses: too many operations, a key written twice.
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    /// A stored value is not UTF-8.
    #[error("value of {key} is not UTF-8")]
    NotUtf8 {
        /// The key.
        key: String,
    },
    /// Any other failure of the backend (a timeout, a broken stream, no leader).
    #[error("store: {0}")]
    Backend(String),
}

/// A key-value store with etcd v3 semantics. Both backends are cheap to clone (a
/// handle on a shared connection or state).
pub trait Store: Clone + Send + Sync + 'static {
    /// Reads one key, or every key under a prefix, at `revision` (the latest if `None`).
    fn get(
        &self,
        key: &str,
        prefix: bool,
        revision: Option<Revision>,
    ) -> impl Future<Output = Result<Range, StoreError>> + Send;

    /// Runs a transaction.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnResult, StoreError>> + Send;

    /// Grants a lease of `ttl` seconds (raised to [`MIN_LEASE_TTL`]).
    fn lease_grant(&self, ttl: i64) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Renews a lease; returns its TTL, or [`StoreError::LeaseNotFound`] if it is gone.
    fn lease_keep_alive(&self, id: LeaseId)
    -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Revokes a lease, deleting its keys.
    fn lease_revoke(&self, id: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Watches a prefix from `start` (inclusive).
    fn watch(
        &self,
        prefix: &str,
        start: Revision,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;

    /// Drops history below `revision`.
    fn compact(&self, revision: Revision) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A put outside any transaction; returns the new revision.
    fn put(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send {
        let txn = Txn::new().and_then([Op::put(key, value)]);
        async move { Ok(self.txn(txn).await?.revision) }
    }
}

/// Either backend, chosen at run time from `--endpoints` (`memory` or etcd URLs).
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded store.
    Memory(MemoryStore),
    /// etcd.
    Etcd(EtcdStore),
}

impl AnyStore {
    /// Connects to `endpoints`: `memory` for a fresh embedded store, else a
    /// comma-separated list of etcd URLs. Fails with [`StoreError::Unreachable`] if no
    /// endpoint answers within `timeout`.
    pub async fn connect(
        endpoints: &str,
        timeout: std::time::Duration,
    ) -> Result<AnyStore, StoreError> {
        if endpoints == "memory" {
            return Ok(AnyStore::Memory(MemoryStore::new()));
        }
        let list: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(AnyStore::Etcd(EtcdStore::connect(&list, timeout).await?))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Memory($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn get(
        &self,
        key: &str,
        prefix: bool,
        revision: Option<Revision>,
    ) -> Result<Range, StoreError> {
        delegate!(self, s => s.get(key, prefix, revision).await)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        delegate!(self, s => s.txn(txn).await)
    }
    async fn lease_grant(&self, ttl: i64) -> Result<Lease, StoreError> {
        delegate!(self, s => s.lease_grant(ttl).await)
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        delegate!(self, s => s.lease_keep_alive(id).await)
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        delegate!(self, s => s.lease_revoke(id).await)
    }
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        delegate!(self, s => s.watch(prefix, start).await)
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        delegate!(self, s => s.compact(revision).await)
    }
}

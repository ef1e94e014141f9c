//! The embedded store (to be written).

use super::*;

/// The in-memory store.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    /// A fresh, empty store at revision 1.
    pub fn new() -> MemoryStore {
        MemoryStore {}
    }
}

impl Store for MemoryStore {
    async fn get(
        &self,
        _key: &str,
        _prefix: bool,
        _revision: Option<Revision>,
    ) -> Result<Range, StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
    async fn txn(&self, _txn: Txn) -> Result<TxnResult, StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
    async fn lease_grant(&self, _ttl: i64) -> Result<Lease, StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
    async fn lease_keep_alive(&self, _id: LeaseId) -> Result<i64, StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
    async fn lease_revoke(&self, _id: LeaseId) -> Result<(), StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
    async fn watch(&self, _prefix: &str, _start: Revision) -> Result<WatchStream, StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
    async fn compact(&self, _revision: Revision) -> Result<(), StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
}

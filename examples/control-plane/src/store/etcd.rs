//! etcd v3 (to be written).

use super::*;

/// etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdStore {}

impl EtcdStore {
    /// Connects.
    pub async fn connect(
        _endpoints: &[String],
        _timeout: std::time::Duration,
    ) -> Result<EtcdStore, StoreError> {
        Err(StoreError::Backend("unimplemented".into()))
    }
}

impl Store for EtcdStore {
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

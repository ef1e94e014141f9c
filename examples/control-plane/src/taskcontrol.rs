//! A job's TaskControl controller: `twine-control taskcontrol --job JOB --entitlement ENT`.
//!
//! The scheduler offers operations under `/twine/v1/taskcontrol/<ent>/<job>/<op>`; the
//! controller approves one by writing `<op>/ack` (create-if-absent, and only while the
//! operation key exists). The scheduler carries the operation out and deletes both keys
//! in the same transaction. An operation is *unavailable* from its ack until its key is
//! deleted; the controller keeps at most `max_unavailable` of them. It acks any subset,
//! in any order; an operation it never acks is vetoed (`max_unavailable` 0 vetoes all).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::watch;

use crate::keys;
use crate::model::{self, AckRecord, BadRecord, OpRecord};
use crate::store::{CmpOp, Compare, Op, Store, StoreError, Txn, WatchMessage};

/// Why a controller stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not parse.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    /// A name that cannot go into a key.
    #[error(transparent)]
    BadName(#[from] keys::BadName),
}

/// What one controller runs for.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The entitlement.
    pub entitlement: String,
    /// The job.
    pub job: String,
    /// At most this many operations acked and not yet done.
    pub max_unavailable: usize,
    /// The name written into acks.
    pub name: String,
}

/// Acks what it may now: returns the store revision it read at.
async fn round<S: Store>(store: &S, cfg: &ControllerConfig) -> Result<i64, ControllerError> {
    let prefix = keys::taskcontrol(&cfg.entitlement, &cfg.job);
    let r = store.get(&prefix, true, None).await?;
    let mut ops = BTreeMap::new();
    let mut acks = BTreeSet::new();
    for kv in &r.kvs {
        match keys::split(&prefix, &kv.key).as_deref() {
            Some([op]) => {
                let rec: OpRecord = model::decode(&kv.key, &kv.value)?;
                ops.insert((*op).to_owned(), rec);
            }
            Some([op, "ack"]) => {
                acks.insert((*op).to_owned());
            }
            _ => {}
        }
    }
    let mut unavailable = ops.keys().filter(|op| acks.contains(*op)).count();
    for op in ops.keys().filter(|op| !acks.contains(*op)) {
        if unavailable >= cfg.max_unavailable {
            break;
        }
        let key = keys::taskcontrol_op(&cfg.entitlement, &cfg.job, op);
        let ack = keys::taskcontrol_ack(&cfg.entitlement, &cfg.job, op);
        let txn = Txn::new()
            .when([
                Compare::create_revision(&key, CmpOp::Greater, 0),
                Compare::create_revision(&ack, CmpOp::Equal, 0),
            ])
            .and_then([Op::put(
                &ack,
                model::encode(&AckRecord {
                    by: cfg.name.clone(),
                }),
            )]);
        if store.txn(txn).await?.succeeded {
            tracing::info!(job = %cfg.job, %op, "acked");
            unavailable += 1;
        }
    }
    Ok(r.revision)
}

/// Runs a controller until `stop` turns true: re-reads the job's operations whenever
/// they change and acks what `max_unavailable` allows.
pub async fn run<S: Store>(
    store: S,
    cfg: ControllerConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    keys::check_name("entitlement", &cfg.entitlement)?;
    keys::check_name("job", &cfg.job)?;
    let prefix = keys::taskcontrol(&cfg.entitlement, &cfg.job);
    'rebuild: loop {
        let rev = round(&store, &cfg).await?;
        let mut w = store.watch(&prefix, rev + 1).await?;
        loop {
            tokio::select! {
                m = w.next() => match m {
                    Some(Ok(WatchMessage::Events(_))) => {
                        round(&store, &cfg).await?;
                    }
                    Some(Ok(WatchMessage::Progress(_))) => {}
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'rebuild;
                    }
                },
                _ = stop.changed() => return Ok(()),
            }
            if *stop.borrow() {
                return Ok(());
            }
        }
    }
}

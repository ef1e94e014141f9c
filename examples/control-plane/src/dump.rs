//! `twine-control dump`: the whole control-plane state, read at one revision.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::keys;
use crate::model::{self, BadRecord, Capacity, HostInfo, StatusRecord, TaskRecord, TaskState};
use crate::store::{Revision, Store, StoreError};

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostDump {
    /// Its name.
    pub name: String,
    /// `free` or the entitlement that owns it.
    pub owner: String,
    /// Its capacity.
    pub capacity: Capacity,
}

/// One placed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskDump {
    /// `<job>/<index>`.
    pub id: String,
    /// Its job.
    pub job: String,
    /// Its entitlement.
    pub entitlement: String,
    /// Its host.
    pub host: String,
    /// CPU, thousandths.
    pub cpu_milli: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// What its agent reports (`pending` before any report).
    pub state: TaskState,
}

/// The state at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dump {
    /// The revision read.
    pub revision: Revision,
    /// Hosts, by name.
    pub hosts: Vec<HostDump>,
    /// Tasks, by entitlement, job and index.
    pub tasks: Vec<TaskDump>,
    /// The scheduler leading each entitlement that has a leader.
    pub leaders: BTreeMap<String, String>,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record does not parse.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
}

/// Reads everything under the layout's root in one read.
pub async fn dump<S: Store>(store: &S) -> Result<Dump, DumpError> {
    let all = store.get(keys::ROOT, true, None).await?;
    let mut hosts: BTreeMap<String, (Option<HostInfo>, String)> = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut leaders = BTreeMap::new();
    let mut status: BTreeMap<&str, StatusRecord> = BTreeMap::new();
    for kv in &all.kvs {
        if let Some(parts) = keys::split(keys::HOSTS, &kv.key) {
            match parts.as_slice() {
                [h, "info"] => {
                    hosts.entry((*h).to_owned()).or_default().0 =
                        Some(model::decode(&kv.key, &kv.value)?)
                }
                [h, "owner"] => hosts.entry((*h).to_owned()).or_default().1 = kv.value.clone(),
                _ => {}
            }
        } else if let Some(parts) = keys::split(keys::ENTS, &kv.key) {
            match parts.as_slice() {
                [e, "leader"] => {
                    leaders.insert((*e).to_owned(), kv.value.clone());
                }
                [e, "tasks", job, index] => {
                    if let Ok(i) = index.parse::<u32>() {
                        let rec: TaskRecord = model::decode(&kv.key, &kv.value)?;
                        tasks.push(((*e).to_owned(), (*job).to_owned(), i, rec));
                    }
                }
                _ => {}
            }
        } else if kv.key.starts_with(keys::STATUS) {
            status.insert(kv.key.as_str(), model::decode(&kv.key, &kv.value)?);
        }
    }
    tasks.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    Ok(Dump {
        revision: all.revision,
        hosts: hosts
            .into_iter()
            .filter_map(|(name, (info, owner))| {
                info.map(|i| HostDump {
                    name,
                    owner,
                    capacity: i.capacity,
                })
            })
            .collect(),
        tasks: tasks
            .into_iter()
            .map(|(e, job, i, rec)| {
                let sk = keys::status(&rec.host, &job, i);
                TaskDump {
                    id: format!("{job}/{i}"),
                    state: status
                        .get(sk.as_str())
                        .map_or(TaskState::Pending, |s| s.state),
                    job,
                    entitlement: e,
                    host: rec.host,
                    cpu_milli: rec.demand.cpu_milli,
                    memory_mib: rec.demand.memory_mib,
                }
            })
            .collect(),
        leaders,
    })
}

//! What a scheduler knows of the store: a snapshot at one revision, then every change
//! its watches deliver. Built from the keys alone, so a standby's view and a leader's
//! agree once both have seen the same revision.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys;
use crate::model::{
    self, BadRecord, DrainRecord, EntitlementRecord, FleetRecord, HostInfo, JobRecord, OpRecord,
    TaskRecord,
};
use crate::store::{Event, KeyValue, Revision};

/// One entitlement as the store has it.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntView {
    /// Its record; `None` while only its jobs or tasks were seen.
    pub(crate) spec: Option<EntitlementRecord>,
    /// Its leader: scheduler name and the leader key's create revision (the fence).
    pub(crate) leader: Option<(String, Revision)>,
    /// Its jobs.
    pub(crate) jobs: BTreeMap<String, JobRecord>,
    /// Its placed tasks, by (job, index).
    pub(crate) tasks: BTreeMap<(String, u32), TaskRecord>,
    /// Its TaskControl operations, by (job, op id).
    pub(crate) ops: BTreeMap<(String, String), OpRecord>,
    /// The acks its jobs' controllers wrote, by (job, op id).
    pub(crate) acks: BTreeSet<(String, String)>,
}

/// One host as the store has it.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostEntry {
    /// Its inventory.
    pub(crate) info: Option<HostInfo>,
    /// Its owner: `free` or an entitlement.
    pub(crate) owner: Option<String>,
    /// Its drain record and that key's mod revision (what the leader compares when it
    /// marks the drain done).
    pub(crate) drain: Option<(DrainRecord, Revision)>,
}

/// What changed with one event, for deciding what to redo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The set of live schedulers.
    Schedulers,
    /// An entitlement's record or leader.
    Entitlement(String),
    /// A job of an entitlement.
    Job(String, String),
    /// A task record of an entitlement.
    Task(String, String, u32),
    /// A host's owner (the new owner, `None` if deleted).
    HostOwner(String, Option<String>),
    /// A host's drain record.
    HostDrain(String),
    /// A TaskControl operation or its ack: entitlement, job, op id.
    TaskControl(String, String, String),
    /// Anything else (host inventory, the fleet record, keys this view ignores).
    Other,
}

/// The scheduler's view of the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// The newest revision applied, from any watch.
    pub(crate) revision: Revision,
    /// The newest revision applied from the watch on entitlements (the watches are
    /// ordered each on its own, not with each other).
    pub(crate) ents_revision: Revision,
    /// The fleet record.
    pub(crate) fleet: Option<FleetRecord>,
    /// Live schedulers, with their keys' create revisions.
    pub(crate) scheds: BTreeMap<String, Revision>,
    /// Entitlements.
    pub(crate) ents: BTreeMap<String, EntView>,
    /// Hosts.
    pub(crate) hosts: BTreeMap<String, HostEntry>,
}

impl View {
    /// A view of these keys, read at `revision`.
    pub(crate) fn from_snapshot<'a>(
        revision: Revision,
        kvs: impl IntoIterator<Item = &'a KeyValue>,
    ) -> Result<View, BadRecord> {
        let mut v = View {
            revision,
            ents_revision: revision,
            ..View::default()
        };
        for kv in kvs {
            v.put(kv)?;
        }
        Ok(v)
    }

    /// Applies one change from a watch started after the snapshot. Each watch delivers
    /// its prefix's changes once and in order, but not in order with the other watches,
    /// so the view keeps no single cut-off.
    pub(crate) fn apply(&mut self, ev: &Event) -> Result<Change, BadRecord> {
        self.revision = self.revision.max(ev.revision());
        if ev.key().starts_with(keys::ENTS) {
            self.ents_revision = self.ents_revision.max(ev.revision());
        }
        match ev {
            Event::Put(kv) => self.put(kv),
            Event::Delete { key, .. } => Ok(self.delete(key)),
        }
    }

    fn put(&mut self, kv: &KeyValue) -> Result<Change, BadRecord> {
        let (key, value) = (kv.key.as_str(), kv.value.as_str());
        if key == keys::FLEET {
            self.fleet = Some(model::decode(key, value)?);
            return Ok(Change::Other);
        }
        if let Some(parts) = keys::split(keys::SCHEDS, key) {
            if let [name] = parts.as_slice() {
                self.scheds.insert((*name).to_owned(), kv.create_revision);
                return Ok(Change::Schedulers);
            }
            return Ok(Change::Other);
        }
        if let Some(parts) = keys::split(keys::HOSTS, key) {
            return Ok(match parts.as_slice() {
                [host, "info"] => {
                    self.hosts.entry((*host).to_owned()).or_default().info =
                        Some(model::decode(key, value)?);
                    Change::Other
                }
                [host, "owner"] => {
                    self.hosts.entry((*host).to_owned()).or_default().owner =
                        Some(value.to_owned());
                    Change::HostOwner((*host).to_owned(), Some(value.to_owned()))
                }
                [host, "drain"] => {
                    self.hosts.entry((*host).to_owned()).or_default().drain =
                        Some((model::decode(key, value)?, kv.mod_revision));
                    Change::HostDrain((*host).to_owned())
                }
                _ => Change::Other,
            });
        }
        if let Some(parts) = keys::split(keys::TASKCONTROL, key) {
            return Ok(match parts.as_slice() {
                [ent, job, op] => {
                    let rec: OpRecord = model::decode(key, value)?;
                    self.ent(ent)
                        .ops
                        .insert(((*job).to_owned(), (*op).to_owned()), rec);
                    Change::TaskControl((*ent).to_owned(), (*job).to_owned(), (*op).to_owned())
                }
                [ent, job, op, "ack"] => {
                    self.ent(ent)
                        .acks
                        .insert(((*job).to_owned(), (*op).to_owned()));
                    Change::TaskControl((*ent).to_owned(), (*job).to_owned(), (*op).to_owned())
                }
                _ => Change::Other,
            });
        }
        if let Some(parts) = keys::split(keys::ENTS, key) {
            return Ok(match parts.as_slice() {
                [ent, "spec"] => {
                    self.ent(ent).spec = Some(model::decode(key, value)?);
                    Change::Entitlement((*ent).to_owned())
                }
                [ent, "leader"] => {
                    self.ent(ent).leader = Some((value.to_owned(), kv.create_revision));
                    Change::Entitlement((*ent).to_owned())
                }
                [ent, "jobs", job] => {
                    let rec: JobRecord = model::decode(key, value)?;
                    self.ent(ent).jobs.insert((*job).to_owned(), rec);
                    Change::Job((*ent).to_owned(), (*job).to_owned())
                }
                [ent, "tasks", job, index] => match index.parse::<u32>() {
                    Ok(i) => {
                        let rec: TaskRecord = model::decode(key, value)?;
                        self.ent(ent).tasks.insert(((*job).to_owned(), i), rec);
                        Change::Task((*ent).to_owned(), (*job).to_owned(), i)
                    }
                    Err(_) => Change::Other,
                },
                _ => Change::Other,
            });
        }
        Ok(Change::Other)
    }

    fn delete(&mut self, key: &str) -> Change {
        if let Some([name]) = keys::split(keys::SCHEDS, key).as_deref() {
            self.scheds.remove(*name);
            return Change::Schedulers;
        }
        if let Some([host, "owner"]) = keys::split(keys::HOSTS, key).as_deref() {
            if let Some(h) = self.hosts.get_mut(*host) {
                h.owner = None;
            }
            return Change::HostOwner((*host).to_owned(), None);
        }
        if let Some([host, "drain"]) = keys::split(keys::HOSTS, key).as_deref() {
            if let Some(h) = self.hosts.get_mut(*host) {
                h.drain = None;
            }
            return Change::HostDrain((*host).to_owned());
        }
        match keys::split(keys::TASKCONTROL, key).as_deref() {
            Some([ent, job, op]) => {
                self.ent(ent)
                    .ops
                    .remove(&((*job).to_owned(), (*op).to_owned()));
                return Change::TaskControl((*ent).to_owned(), (*job).to_owned(), (*op).to_owned());
            }
            Some([ent, job, op, "ack"]) => {
                self.ent(ent)
                    .acks
                    .remove(&((*job).to_owned(), (*op).to_owned()));
                return Change::TaskControl((*ent).to_owned(), (*job).to_owned(), (*op).to_owned());
            }
            _ => {}
        }
        match keys::split(keys::ENTS, key).as_deref() {
            Some([ent, "spec"]) => {
                self.ent(ent).spec = None;
                Change::Entitlement((*ent).to_owned())
            }
            Some([ent, "leader"]) => {
                self.ent(ent).leader = None;
                Change::Entitlement((*ent).to_owned())
            }
            Some([ent, "jobs", job]) => {
                self.ent(ent).jobs.remove(*job);
                Change::Job((*ent).to_owned(), (*job).to_owned())
            }
            Some([ent, "tasks", job, index]) => match index.parse::<u32>() {
                Ok(i) => {
                    self.ent(ent).tasks.remove(&((*job).to_owned(), i));
                    Change::Task((*ent).to_owned(), (*job).to_owned(), i)
                }
                Err(_) => Change::Other,
            },
            _ => Change::Other,
        }
    }

    fn ent(&mut self, name: &str) -> &mut EntView {
        self.ents.entry(name.to_owned()).or_default()
    }

    /// Entitlements that exist (have a record).
    pub(crate) fn entitlement_names(&self) -> Vec<&str> {
        self.ents
            .iter()
            .filter(|(_, e)| e.spec.is_some())
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

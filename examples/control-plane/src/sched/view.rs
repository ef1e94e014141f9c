//! What a scheduler knows of the store: a snapshot at one revision, then every change
//! its watches deliver. Built from the keys alone, so a standby's view and a leader's
//! agree once both have seen the same revision.

use std::collections::BTreeMap;

use crate::keys;
use crate::model::{
    self, BadRecord, EntitlementRecord, FleetRecord, HostInfo, JobRecord, TaskRecord,
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
}

/// One host as the store has it.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostEntry {
    /// Its inventory.
    pub(crate) info: Option<HostInfo>,
    /// Its owner: `free` or an entitlement.
    pub(crate) owner: Option<String>,
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

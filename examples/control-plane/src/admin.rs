//! What an operator does: lay out the fleet, add entitlements, submit jobs. Each call
//! checks everything first and writes in transactions that compare what they create
//! (create-if-absent), so bad input or a lost race leaves the store as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use twine_spec::{Format, JobSpec};

use crate::keys::{self, BadName, FREE};
use crate::model::{
    self, BadRecord, Capacity, DrainRecord, DrainState, EntitlementRecord, FleetRecord, HostInfo,
    JobRecord,
};
use crate::store::{CmpOp, Compare, MAX_TXN_OPS, Op, Store, StoreError, Txn};

/// The fleet `fleet init` lays out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Number of hosts.
    pub hosts: u32,
    /// Every host's CPU and memory.
    pub shape: Capacity,
    /// GPUs per host.
    pub gpus: u8,
    /// Racks per power domain.
    pub racks_per_pd: u32,
}

/// Hosts per rack in a laid-out fleet.
pub const HOSTS_PER_RACK: u32 = 20;
/// Power domains per datacenter in a laid-out fleet.
pub const PDS_PER_DC: u32 = 8;
/// The machine type of every host `fleet init` lays out.
pub const MACHINE_TYPE: &str = "standard";

/// Why an operator's command was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not parse.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    /// A name that cannot go into a key.
    #[error(transparent)]
    BadName(#[from] BadName),
    /// A number out of range.
    #[error("{flag} {value}: {why}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why.
        why: &'static str,
    },
    /// The fleet was laid out already.
    #[error("the store already has a fleet of {hosts} hosts")]
    FleetExists {
        /// Its size.
        hosts: u32,
    },
    /// No fleet yet.
    #[error("the store has no fleet: run `twine-control fleet init` first")]
    NoFleet,
    /// An entitlement of that name exists.
    #[error("entitlement {0:?} exists already")]
    EntitlementExists(String),
    /// A spec could not be read or is invalid.
    #[error("{}: {message}", path.display())]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong, with the field path.
        message: String,
    },
    /// A spec names an entitlement the store does not have.
    #[error("{}: entitlement: {name:?} is unknown (known: {known})", path.display())]
    UnknownEntitlement {
        /// The spec file.
        path: PathBuf,
        /// The entitlement named.
        name: String,
        /// The entitlements there are.
        known: String,
    },
    /// A job needs more hosts than its entitlement's quota has room for.
    #[error(
        "{}: job {job:?} needs at least {needs} hosts of entitlement {entitlement:?}, which has a quota of {quota} with {used} needed by jobs submitted before",
        path.display()
    )]
    OverQuota {
        /// The spec file.
        path: PathBuf,
        /// The job.
        job: String,
        /// The entitlement.
        entitlement: String,
        /// Hosts this job needs at least (a lower bound per dimension).
        needs: u64,
        /// Hosts the jobs already there need at least.
        used: u64,
        /// The quota.
        quota: u32,
    },
    /// `drain` named a host the fleet does not have.
    #[error("host {0:?} is unknown")]
    UnknownHost(String),
    /// `drain` named a host that has a drain record already.
    #[error("host {host:?} is already {state}")]
    AlreadyDraining {
        /// The host.
        host: String,
        /// `draining` or `drained`.
        state: String,
    },
    /// A job of that name was submitted before.
    #[error("{}: job {job:?} exists already in entitlement {entitlement:?}", path.display())]
    JobExists {
        /// The spec file.
        path: PathBuf,
        /// The job.
        job: String,
        /// Its entitlement.
        entitlement: String,
    },
}

/// Lays out a fleet: `hosts` hosts named `h00000`.., 20 per rack, `racks_per_pd` racks
/// per power domain, 8 power domains per datacenter, one region, all free. Hosts are
/// written first, in transactions that each check that no fleet record exists; the
/// fleet record comes last and is what schedulers wait for, so an interrupted init is
/// never taken for a fleet and can simply be run again.
pub async fn fleet_init<S: Store>(store: &S, cfg: &FleetConfig) -> Result<FleetRecord, AdminError> {
    let bad = |flag, value: String, why| Err(AdminError::BadValue { flag, value, why });
    if cfg.hosts == 0 || cfg.hosts > 1_000_000 {
        return bad("--hosts", cfg.hosts.to_string(), "must be 1 to 1000000");
    }
    if cfg.racks_per_pd == 0 {
        return bad("--racks-per-pd", "0".into(), "must be at least 1");
    }
    if cfg.shape.cpu_milli == 0 || cfg.shape.memory_mib == 0 {
        return bad(
            "--shape",
            format!(
                "{},{},{}",
                cfg.shape.cpu_milli, cfg.shape.memory_mib, cfg.gpus
            ),
            "CPU and memory must be positive",
        );
    }
    let existing = store.get(keys::FLEET, false, None).await?;
    if let Some(kv) = existing.kvs.first() {
        let rec: FleetRecord = model::decode(&kv.key, &kv.value)?;
        return Err(AdminError::FleetExists { hosts: rec.hosts });
    }
    let record = FleetRecord {
        hosts: cfg.hosts,
        shape: cfg.shape,
        gpus: cfg.gpus,
        machine_type: MACHINE_TYPE.into(),
        hosts_per_rack: HOSTS_PER_RACK,
        racks_per_pd: cfg.racks_per_pd,
        pds_per_dc: PDS_PER_DC,
    };
    let no_fleet = Compare::create_revision(keys::FLEET, CmpOp::Equal, 0);
    let names: Vec<String> = (0..cfg.hosts).map(host_name).collect();
    for chunk in names.chunks(MAX_TXN_OPS / 2) {
        let mut txn = Txn::new().when([no_fleet.clone()]);
        for name in chunk {
            let info = host_info(&record, name)?;
            txn = txn.and_then([
                Op::put(keys::host_info(name), model::encode(&info)),
                Op::put(keys::host_owner(name), FREE),
            ]);
        }
        if !store.txn(txn).await?.succeeded {
            return Err(AdminError::FleetExists { hosts: cfg.hosts });
        }
    }
    let txn = Txn::new()
        .when([no_fleet])
        .and_then([Op::put(keys::FLEET, model::encode(&record))]);
    if !store.txn(txn).await?.succeeded {
        return Err(AdminError::FleetExists { hosts: cfg.hosts });
    }
    Ok(record)
}

/// A host's name: `h` and its index, at least five digits.
pub fn host_name(i: u32) -> String {
    format!("h{i:05}")
}

fn host_info(f: &FleetRecord, name: &str) -> Result<HostInfo, AdminError> {
    let i: u32 = name[1..].parse().map_err(|_| AdminError::BadValue {
        flag: "host",
        value: name.to_owned(),
        why: "not a laid-out host name",
    })?;
    let rack = i / f.hosts_per_rack;
    let pd = rack / f.racks_per_pd;
    let dc = pd / f.pds_per_dc;
    Ok(HostInfo {
        capacity: f.shape,
        gpus: f.gpus,
        machine_type: f.machine_type.clone(),
        domain: [
            "region1".into(),
            format!("dc{dc}"),
            format!("pd{pd}"),
            format!("rack{rack}"),
        ],
    })
}

async fn fleet<S: Store>(store: &S) -> Result<FleetRecord, AdminError> {
    let r = store.get(keys::FLEET, false, None).await?;
    match r.kvs.first() {
        Some(kv) => Ok(model::decode(&kv.key, &kv.value)?),
        None => Err(AdminError::NoFleet),
    }
}

/// Adds an entitlement with a quota of `quota_machines` hosts.
pub async fn entitlement_add<S: Store>(
    store: &S,
    name: &str,
    quota_machines: u32,
) -> Result<(), AdminError> {
    keys::check_name("entitlement", name)?;
    let f = fleet(store).await?;
    if quota_machines == 0 || quota_machines > f.hosts {
        return Err(AdminError::BadValue {
            flag: "--quota-machines",
            value: quota_machines.to_string(),
            why: "must be 1 to the fleet's host count",
        });
    }
    let key = keys::ent_spec(name);
    let txn = Txn::new()
        .when([Compare::create_revision(&key, CmpOp::Equal, 0)])
        .and_then([Op::put(
            &key,
            model::encode(&EntitlementRecord { quota_machines }),
        )]);
    if !store.txn(txn).await?.succeeded {
        return Err(AdminError::EntitlementExists(name.to_owned()));
    }
    Ok(())
}

/// Starts draining a host: writes `/twine/v1/hosts/<host>/drain` (state `draining`)
/// if the host exists and has no drain record yet. The leader of the entitlement that
/// owns the host does the rest through TaskControl (see the README).
pub async fn drain<S: Store>(store: &S, host: &str) -> Result<(), AdminError> {
    keys::check_name("host", host)?;
    let info = keys::host_info(host);
    let key = keys::host_drain(host);
    let txn = Txn::new()
        .when([
            Compare::create_revision(&info, CmpOp::Greater, 0),
            Compare::create_revision(&key, CmpOp::Equal, 0),
        ])
        .and_then([Op::put(
            &key,
            model::encode(&DrainRecord {
                state: DrainState::Draining,
            }),
        )])
        .or_else([Op::get(&info), Op::get(&key)]);
    let res = store.txn(txn).await?;
    if res.succeeded {
        return Ok(());
    }
    if res.responses.first().is_none_or(|r| r.is_empty()) {
        return Err(AdminError::UnknownHost(host.to_owned()));
    }
    let state = match res.responses.get(1).and_then(|r| r.first()) {
        Some(kv) => match model::decode::<DrainRecord>(&kv.key, &kv.value)?.state {
            DrainState::Draining => "draining",
            DrainState::Drained => "drained",
        },
        None => "draining",
    };
    Err(AdminError::AlreadyDraining {
        host: host.to_owned(),
        state: state.to_owned(),
    })
}

/// A job read from a spec file, ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The file.
    pub path: PathBuf,
    /// The record to store.
    pub record: JobRecord,
}

/// Reads and validates one spec: twine-spec's validation, a name usable in keys, and
/// the demand (`task.resources.cpu_quota` and `memory_max` are required here: they
/// size the task).
pub fn read_spec(path: &Path) -> Result<Submission, AdminError> {
    let err = |message: String| AdminError::Spec {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let format = Format::from_path(path)
        .ok_or_else(|| err("unknown format: use .toml, .json, .yaml or .yml".into()))?;
    let spec = JobSpec::parse(&text, format).map_err(|e| err(e.to_string()))?;
    let job = spec.validate().map_err(|e| err(e.to_string()))?;
    keys::check_name("job", &job.name).map_err(|e| err(format!("name: {e}")))?;
    keys::check_name("entitlement", &job.entitlement)
        .map_err(|e| err(format!("entitlement: {e}")))?;
    let cpu = job
        .task
        .resources
        .cpu_quota_percent
        .ok_or_else(|| err("task.resources.cpu_quota: required to size the task".into()))?;
    let mem = job
        .task
        .resources
        .memory_max
        .ok_or_else(|| err("task.resources.memory_max: required to size the task".into()))?;
    if job.replicas == 0 {
        return Err(err("replicas: must be at least 1 (got 0)".into()));
    }
    Ok(Submission {
        path: path.to_owned(),
        record: JobRecord {
            name: job.name.clone(),
            entitlement: job.entitlement.clone(),
            replicas: job.replicas,
            demand: Capacity {
                cpu_milli: u64::from(cpu) * 10,
                memory_mib: mem.div_ceil(1 << 20),
            },
            spec: text,
            format: format_name(format).into(),
        },
    })
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Json => "json",
        Format::Yaml => "yaml",
        _ => "toml",
    }
}

/// Hosts of `shape` that `n` tasks of `d` need at least, by the per-dimension bound
/// (`None` if one task fits no host).
fn hosts_needed(shape: Capacity, d: Capacity, n: u64) -> Option<u64> {
    if d.cpu_milli > shape.cpu_milli || d.memory_mib > shape.memory_mib {
        return None;
    }
    let cpu = (d.cpu_milli * n).div_ceil(shape.cpu_milli);
    let mem = (d.memory_mib * n).div_ceil(shape.memory_mib);
    Some(cpu.max(mem))
}

/// Submits jobs: every spec is read and checked first (entitlement known, the job with
/// the jobs already in its entitlement within quota by a per-dimension lower bound,
/// name unused); then all are written in transactions that compare that each job is
/// still absent, up to 64 jobs per transaction (all or none within one). Returns the
/// records written.
pub async fn submit<S: Store>(store: &S, paths: &[PathBuf]) -> Result<Vec<JobRecord>, AdminError> {
    let subs: Vec<Submission> = paths
        .iter()
        .map(|p| read_spec(p))
        .collect::<Result<_, _>>()?;
    submit_records(store, subs).await
}

/// [`submit`] for submissions already read (by [`read_spec`], or built in code).
pub async fn submit_records<S: Store>(
    store: &S,
    subs: Vec<Submission>,
) -> Result<Vec<JobRecord>, AdminError> {
    let f = fleet(store).await?;
    for s in &subs {
        keys::check_name("job", &s.record.name)?;
        keys::check_name("entitlement", &s.record.entitlement)?;
    }
    let ents = store.get(keys::ENTS, true, None).await?;
    let mut quota: BTreeMap<String, u32> = BTreeMap::new();
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut jobs: BTreeMap<(String, String), ()> = BTreeMap::new();
    for kv in &ents.kvs {
        match keys::split(keys::ENTS, &kv.key).as_deref() {
            Some([e, "spec"]) => {
                let r: EntitlementRecord = model::decode(&kv.key, &kv.value)?;
                quota.insert((*e).to_owned(), r.quota_machines);
            }
            Some([e, "jobs", j]) => {
                let r: JobRecord = model::decode(&kv.key, &kv.value)?;
                let s = sums.entry((*e).to_owned()).or_default();
                s.0 += r.demand.cpu_milli * u64::from(r.replicas);
                s.1 += r.demand.memory_mib * u64::from(r.replicas);
                jobs.insert(((*e).to_owned(), (*j).to_owned()), ());
            }
            _ => {}
        }
    }
    for s in &subs {
        let r = &s.record;
        let Some(&q) = quota.get(&r.entitlement) else {
            return Err(AdminError::UnknownEntitlement {
                path: s.path.clone(),
                name: r.entitlement.clone(),
                known: if quota.is_empty() {
                    "none".into()
                } else {
                    quota.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        };
        if jobs
            .insert((r.entitlement.clone(), r.name.clone()), ())
            .is_some()
        {
            return Err(AdminError::JobExists {
                path: s.path.clone(),
                job: r.name.clone(),
                entitlement: r.entitlement.clone(),
            });
        }
        let before = sums.get(&r.entitlement).copied().unwrap_or((0, 0));
        let used = before
            .0
            .div_ceil(f.shape.cpu_milli)
            .max(before.1.div_ceil(f.shape.memory_mib));
        let n = u64::from(r.replicas);
        let after = (
            before.0 + r.demand.cpu_milli * n,
            before.1 + r.demand.memory_mib * n,
        );
        let needs_all = after
            .0
            .div_ceil(f.shape.cpu_milli)
            .max(after.1.div_ceil(f.shape.memory_mib));
        match hosts_needed(f.shape, r.demand, n) {
            Some(_) if needs_all <= u64::from(q) => {}
            alone => {
                return Err(AdminError::OverQuota {
                    path: s.path.clone(),
                    job: r.name.clone(),
                    entitlement: r.entitlement.clone(),
                    needs: alone.unwrap_or(u64::MAX),
                    used,
                    quota: q,
                });
            }
        }
        sums.insert(r.entitlement.clone(), after);
    }
    for chunk in subs.chunks(MAX_TXN_OPS / 2) {
        let mut txn = Txn::new();
        for s in chunk {
            let key = keys::job(&s.record.entitlement, &s.record.name);
            txn = txn
                .when([Compare::create_revision(&key, CmpOp::Equal, 0)])
                .and_then([Op::put(&key, model::encode(&s.record))]);
        }
        if !commit_once(store, txn, chunk).await? {
            // Submitted meanwhile by someone else: name the job.
            let mut first = &chunk[0];
            for s in chunk {
                let key = keys::job(&s.record.entitlement, &s.record.name);
                if !store.get(&key, false, None).await?.kvs.is_empty() {
                    first = s;
                    break;
                }
            }
            let s = first;
            return Err(AdminError::JobExists {
                path: s.path.clone(),
                job: s.record.name.clone(),
                entitlement: s.record.entitlement.clone(),
            });
        }
    }
    Ok(subs.into_iter().map(|s| s.record).collect())
}

/// Runs a submission's transaction. A store error leaves it unknown whether the
/// transaction committed (an etcd leader change, a connection lost after sending), so
/// the jobs are read back: all there exactly as submitted means it committed; none
/// there means it did not, and it is tried again (up to 5 times, 1 s apart); anything
/// else is reported as the store error.
async fn commit_once<S: Store>(
    store: &S,
    txn: Txn,
    chunk: &[Submission],
) -> Result<bool, AdminError> {
    let mut last = None;
    for _ in 0..5 {
        match store.txn(txn.clone()).await {
            Ok(r) => return Ok(r.succeeded),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut found = 0;
        for s in chunk {
            let key = keys::job(&s.record.entitlement, &s.record.name);
            match store.get(&key, false, None).await {
                Ok(r)
                    if r.kvs
                        .first()
                        .is_some_and(|kv| kv.value == model::encode(&s.record)) =>
                {
                    found += 1
                }
                Ok(r) if r.kvs.is_empty() => {}
                // Someone else's job of that name, or still no answer: report the error.
                _ => break,
            }
        }
        if found == chunk.len() {
            return Ok(true);
        }
        if found > 0 {
            break;
        }
    }
    Err(last.map_or_else(
        || AdminError::Store(StoreError::Backend("no answer".into())),
        AdminError::Store,
    ))
}

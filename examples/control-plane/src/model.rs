//! The records stored under the keys of [`crate::keys`], as JSON. Unknown fields are
//! errors, so a record written by a newer version is refused rather than half read.

use serde::{Deserialize, Serialize};

/// CPU and memory, as `dump` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Thousandths of a CPU.
    pub cpu_milli: u64,
    /// MiB of memory.
    pub memory_mib: u64,
}

/// The fleet, as `fleet init` made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRecord {
    /// Number of hosts.
    pub hosts: u32,
    /// Every host's capacity.
    pub shape: Capacity,
    /// GPUs per host.
    pub gpus: u8,
    /// The hosts' machine type (the unit of `--quota-machines`).
    pub machine_type: String,
    /// Hosts per rack.
    pub hosts_per_rack: u32,
    /// Racks per power domain.
    pub racks_per_pd: u32,
    /// Power domains per datacenter.
    pub pds_per_dc: u32,
}

/// One host's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    /// CPU and memory.
    pub capacity: Capacity,
    /// GPU devices.
    pub gpus: u8,
    /// Machine type.
    pub machine_type: String,
    /// Region, datacenter, power domain, rack.
    pub domain: [String; 4],
}

/// An entitlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementRecord {
    /// At most this many hosts of the fleet's machine type.
    pub quota_machines: u32,
}

/// A submitted job: its spec as written, and the demand read from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The job's name.
    pub name: String,
    /// Its entitlement.
    pub entitlement: String,
    /// Tasks to run.
    pub replicas: u32,
    /// Each task's demand.
    pub demand: Capacity,
    /// The spec text, as submitted.
    pub spec: String,
    /// The spec's format: `toml`, `json` or `yaml`.
    pub format: String,
}

/// Where a scheduler placed a task; written only in a transaction fenced by the
/// entitlement's leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// The host.
    pub host: String,
    /// The task's demand.
    pub demand: Capacity,
    /// The scheduler that wrote it.
    pub writer: String,
    /// The writer's fencing token: the create revision of the entitlement's leader key
    /// it held.
    pub epoch: i64,
}

/// What a host's agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The entitlement (where the job's record is).
    pub entitlement: String,
    /// The job.
    pub job: String,
    /// The replica index.
    pub index: u32,
    /// The task's demand.
    pub demand: Capacity,
}

/// A task's state as its agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Assigned, no report yet (never stored; what `dump` shows without a report).
    Pending,
    /// The agent is starting it.
    Starting,
    /// Running.
    Running,
    /// Failed to start or exited with an error.
    Failed,
}

/// An agent's report on one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRecord {
    /// The state.
    pub state: TaskState,
    /// Which agent: `simulated` or `twine-agent`.
    pub agent: String,
    /// A detail for a failure, empty otherwise.
    #[serde(default)]
    pub detail: String,
}

/// Where a host's drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    /// Its tasks are being offered to their jobs' controllers and moved as they ack.
    Draining,
    /// It holds no task any more.
    Drained,
}

/// `/twine/v1/hosts/<host>/drain`: written by `drain`, marked drained by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRecord {
    /// The state.
    pub state: DrainState,
}

/// The state of a TaskControl operation while its key exists (the scheduler deletes the
/// key once the operation is done; an ack is a separate key, see [`AckRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    /// Offered to the job's controller, which may ack it or never (a veto).
    Offered,
}

/// `/twine/v1/taskcontrol/<ent>/<job>/<op>`: an operation the scheduler offers a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpRecord {
    /// The replica index.
    pub index: u32,
    /// What the operation does: `move`.
    pub kind: String,
    /// The host the task leaves.
    pub from: String,
    /// Its state.
    pub state: OpState,
}

/// `/twine/v1/taskcontrol/<ent>/<job>/<op>/ack`: the job's controller approves the
/// operation. Written only while the operation key exists; deleted with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRecord {
    /// Who acked (the controller's name).
    pub by: String,
}

/// A record that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source} (value {value:?})")]
pub struct BadRecord {
    /// The key.
    pub key: String,
    /// The value (truncated to 200 bytes).
    pub value: String,
    /// The parse error.
    pub source: serde_json::Error,
}

/// Reads a record from a stored value.
pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, value: &str) -> Result<T, BadRecord> {
    serde_json::from_str(value).map_err(|source| BadRecord {
        key: key.to_owned(),
        value: value.chars().take(200).collect(),
        source,
    })
}

/// Writes a record as a stored value.
pub fn encode<T: Serialize>(record: &T) -> String {
    // The records are plain structs of strings, integers and fixed arrays, with no map
    // keys that are not strings: serde_json cannot fail on them.
    #[allow(clippy::expect_used)]
    serde_json::to_string(record).expect("records always serialize")
}

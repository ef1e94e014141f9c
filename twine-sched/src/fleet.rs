//! The fleet as the allocator sees it: hosts, their static properties, fault domains,
//! owner and state.
//!
//! Strings (machine types, GPU models, host profiles, attribute keys and values, fault
//! domain paths) are interned once into small integer names so that a host costs a couple of
//! hundred bytes and comparing a host against a requirement is an integer compare: a
//! region holds a million hosts but only a handful of distinct property values. A host's
//! attributes are interned as a whole set because hosts share them too.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use smallvec::SmallVec;

use crate::entitlement::EntitlementId;
use crate::request::TaskId;
use crate::resources::{GpuDevices, MAX_EXTRA, Resources};

/// An interned string (machine type, GPU model, profile, attribute, fault domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Name(pub(crate) u32);

impl Name {
    /// A name no host carries: what an unknown string in a requirement resolves to.
    /// [`Interner`] never hands out this id.
    pub(crate) const UNKNOWN: Name = Name(u32::MAX);
}

/// Values with dense ids `0..max`, each value stored once (strings, attribute sets).
#[derive(Debug, Clone)]
pub(crate) struct Interner<K> {
    ids: BTreeMap<K, u32>,
    values: Vec<K>,
    /// Ids stay below this; `u32::MAX` is reserved for [`Name::UNKNOWN`].
    pub(crate) max: u32,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner {
            ids: BTreeMap::new(),
            values: Vec::new(),
            max: u32::MAX,
        }
    }
}

impl<K: Ord + Clone> Interner<K> {
    /// The id of `value`, adding it if new; `None` once `max` ids are taken.
    pub(crate) fn intern<Q>(&mut self, value: &Q) -> Option<u32>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Ord + ToOwned + ?Sized,
    {
        if let Some(&id) = self.ids.get(value) {
            return Some(id);
        }
        let id = u32::try_from(self.values.len())
            .ok()
            .filter(|&id| id < self.max)?;
        let key = K::from(value.to_owned());
        self.values.push(key.clone());
        self.ids.insert(key, id);
        Some(id)
    }

    /// The id of `value` if it was interned.
    pub(crate) fn get<Q>(&self, value: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.ids.get(value).copied()
    }

    /// The value behind `id`.
    pub(crate) fn resolve(&self, id: u32) -> Option<&K> {
        self.values.get(usize::try_from(id).ok()?)
    }
}

/// The string table behind [`Name`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Names(pub(crate) Interner<Box<str>>);

impl Names {
    /// The name of `s`, adding it if new; `None` when the table is full.
    pub(crate) fn intern(&mut self, s: &str) -> Option<Name> {
        self.0.intern(s).map(Name)
    }

    /// The name of `s` if any host or entitlement mentioned it, else [`Name::UNKNOWN`]
    /// (which matches nothing).
    pub(crate) fn lookup(&self, s: &str) -> Name {
        self.0.get(s).map_or(Name::UNKNOWN, Name)
    }

    /// The string behind `name`. Every name a host or quota holds came from
    /// [`Names::intern`] and the table never shrinks, so only [`Name::UNKNOWN`] (a
    /// requirement's unknown string, never stored on a host) reads as `"?"`.
    pub(crate) fn resolve(&self, name: Name) -> &str {
        self.0.resolve(name.0).map_or("?", |s| s)
    }
}

/// Names of the extensible resources ([`Resources::extra`]), by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceNames {
    names: [Option<String>; MAX_EXTRA],
}

impl ResourceNames {
    /// Names `extra[index]`; `None` if `index` is out of range.
    pub fn with(mut self, index: usize, name: &str) -> Option<ResourceNames> {
        *self.names.get_mut(index)? = Some(name.to_owned());
        Some(self)
    }

    /// The index of the resource called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n.as_deref() == Some(name))
    }

    /// The name of `extra[index]`, or `extra<index>` if unnamed.
    pub fn name(&self, index: usize) -> String {
        match self.names.get(index) {
            Some(Some(n)) => n.clone(),
            _ => format!("extra{index}"),
        }
    }
}

/// A host, by the index the allocator gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u32);

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {}", self.0)
    }
}

/// A level of the fault-domain path, outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultLevel {
    /// A region (the allocator's whole scope in Twine).
    Region,
    /// A datacenter in a region.
    Datacenter,
    /// A power domain (Twine's MSB) in a datacenter.
    PowerDomain,
    /// A rack.
    Rack,
}

impl FaultLevel {
    /// Every level, outermost first.
    pub const ALL: [FaultLevel; 4] = [
        FaultLevel::Region,
        FaultLevel::Datacenter,
        FaultLevel::PowerDomain,
        FaultLevel::Rack,
    ];

    pub(crate) const fn index(self) -> usize {
        match self {
            FaultLevel::Region => 0,
            FaultLevel::Datacenter => 1,
            FaultLevel::PowerDomain => 2,
            FaultLevel::Rack => 3,
        }
    }
}

/// Whether a host takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HostState {
    /// Takes tasks.
    Up,
    /// Tasks are being moved off; takes no new ones.
    Draining,
    /// Failed or out of service; holds no tasks.
    Down,
}

/// Who a host belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The region's shared free pool: any entitlement may take it, within quota.
    FreePool,
    /// Assigned to an entitlement; only its jobs stack here.
    Entitlement(EntitlementId),
}

/// An interned attribute set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct AttrSetId(pub(crate) u32);

/// Sorted `(key, value)` pairs.
pub(crate) type AttrSet = SmallVec<[(Name, Name); 4]>;

/// What a new host looks like. Built with the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// CPU, memory and extras.
    pub capacity: Resources,
    /// Number of GPU devices.
    pub gpus: u8,
    /// GPU model, if the host has GPUs.
    pub gpu_model: Option<String>,
    /// Machine type (e.g. `"small"`, `"skylake"`).
    pub machine_type: String,
    /// Host profile currently applied.
    pub profile: String,
    /// Free-form attributes.
    pub attributes: Vec<(String, String)>,
    /// Fault-domain path: region, datacenter, power domain, rack.
    pub domain: [String; 4],
}

impl HostSpec {
    /// A host with this capacity, machine type `"default"`, profile `"default"`, no GPUs
    /// and an empty fault-domain path.
    pub fn new(capacity: Resources) -> HostSpec {
        HostSpec {
            capacity,
            gpus: 0,
            gpu_model: None,
            machine_type: "default".into(),
            profile: "default".into(),
            attributes: Vec::new(),
            domain: Default::default(),
        }
    }

    /// Sets the machine type.
    pub fn machine_type(mut self, t: &str) -> HostSpec {
        self.machine_type = t.into();
        self
    }

    /// Sets the host profile.
    pub fn profile(mut self, p: &str) -> HostSpec {
        self.profile = p.into();
        self
    }

    /// Sets GPU devices and their model.
    pub fn gpus(mut self, count: u8, model: &str) -> HostSpec {
        self.gpus = count;
        self.gpu_model = Some(model.into());
        self
    }

    /// Adds an attribute.
    pub fn attribute(mut self, key: &str, value: &str) -> HostSpec {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// Sets the fault-domain path: region, datacenter, power domain, rack.
    pub fn domain(mut self, path: [&str; 4]) -> HostSpec {
        self.domain = path.map(str::to_owned);
        self
    }
}

/// A host's live record.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) capacity: Resources,
    pub(crate) free: Resources,
    pub(crate) gpus: GpuDevices,
    pub(crate) gpu_model: Option<Name>,
    pub(crate) machine_type: Name,
    pub(crate) profile: Name,
    pub(crate) attrs: AttrSetId,
    /// Interned full paths, one per [`FaultLevel`], so racks in different rows differ.
    pub(crate) domains: [Name; 4],
    pub(crate) owner: Owner,
    pub(crate) state: HostState,
    /// The equivalence class the host sits in (see `index.rs`).
    pub(crate) class: u32,
    pub(crate) tasks: Vec<TaskId>,
}

/// A host's properties, read-only.
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a> {
    pub(crate) host: &'a Host,
    pub(crate) names: &'a Names,
}

impl HostView<'_> {
    /// Total capacity.
    pub fn capacity(&self) -> Resources {
        self.host.capacity
    }
    /// Free capacity.
    pub fn free(&self) -> Resources {
        self.host.free
    }
    /// GPU devices with their free thousandths.
    pub fn gpus(&self) -> &GpuDevices {
        &self.host.gpus
    }
    /// Machine type.
    pub fn machine_type(&self) -> &str {
        self.names.resolve(self.host.machine_type)
    }
    /// Host profile.
    pub fn profile(&self) -> &str {
        self.names.resolve(self.host.profile)
    }
    /// Owner.
    pub fn owner(&self) -> Owner {
        self.host.owner
    }
    /// State.
    pub fn state(&self) -> HostState {
        self.host.state
    }
    /// Tasks on the host, in placement order.
    pub fn tasks(&self) -> &[TaskId] {
        &self.host.tasks
    }
    /// The fault domain at `level`, as its full path.
    pub fn domain(&self, level: FaultLevel) -> &str {
        self.names.resolve(self.host.domains[level.index()])
    }
}

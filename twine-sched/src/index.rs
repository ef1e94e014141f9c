//! Equivalence classes of hosts and, inside each, an ordered index on free capacity.
//!
//! Borg scores one task per equivalence class of requirements; we turn that around and
//! group *hosts* by everything a hard requirement can test statically (owner, state,
//! machine type, GPU model, host profile, attribute set), plus what their GPU devices
//! can still take (idle devices, and the largest share free on a used device, in tenths).
//! The GPU part keeps GPU tasks from walking hosts whose CPU is free but whose devices
//! are not: a class either can take the demand's GPUs or is skipped whole. A request then decides per
//! class, not per host, which part of the fleet it may touch, and only walks the free
//! capacity index of the classes that pass. Classes are never deleted (an empty class
//! costs an empty set), so class ids stay stable.

use std::collections::{BTreeMap, BTreeSet};

use crate::allocator::Bookkeeping;
use crate::fleet::{AttrSetId, Host, HostId, HostState, Interner, Name, Owner};
use crate::resources::{GPU_MILLI, GpuDemand, Resources};

/// What makes two hosts interchangeable to a hard requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClassKey {
    pub(crate) owner: Owner,
    pub(crate) state: HostState,
    pub(crate) machine_type: Name,
    pub(crate) gpu_model: Option<Name>,
    pub(crate) profile: Name,
    pub(crate) attrs: AttrSetId,
    /// Idle GPU devices.
    pub(crate) gpu_idle: u8,
    /// 0 when no used device has room; else 1 + (largest free milli on a used device) / 100.
    pub(crate) gpu_partial: u8,
}

impl ClassKey {
    pub(crate) fn of(host: &Host) -> ClassKey {
        // Both buckets only ever claim too much (a saturated count still passes
        // `may_fit_gpu`, and the per-host check follows), and neither saturates: a host
        // has at most 255 devices (`HostSpec::gpus` is a `u8`) and a partial device's
        // bucket is at most 1 + 999 / 100.
        let partial = host
            .gpus
            .free()
            .iter()
            .filter(|&&f| f > 0 && f < GPU_MILLI)
            .max();
        ClassKey {
            owner: host.owner,
            state: host.state,
            machine_type: host.machine_type,
            gpu_model: host.gpu_model,
            profile: host.profile,
            attrs: host.attrs,
            gpu_idle: u8::try_from(host.gpus.idle()).unwrap_or(u8::MAX),
            gpu_partial: partial.map_or(0, |&f| u8::try_from(1 + f / 100).unwrap_or(u8::MAX)),
        }
    }

    /// Whether some host of this class may take `demand` on its devices (a share still
    /// needs the exact per-host check: the bucket only bounds the largest free share).
    pub(crate) fn may_fit_gpu(&self, demand: GpuDemand) -> bool {
        match demand {
            GpuDemand::None => true,
            GpuDemand::Whole(n) => self.gpu_idle >= n,
            GpuDemand::Shared(m) => {
                self.gpu_idle > 0 || (self.gpu_partial > 0 && u16::from(self.gpu_partial) * 100 > m)
            }
        }
    }
}

/// A host's position in its class: free CPU, then free memory, then a fixed scramble of
/// the id (so hosts with equal free capacity, e.g. a fresh fleet, are visited in an order
/// unrelated to racks, which keeps bounded candidate samples diverse for spread), then
/// the id itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FreeKey {
    pub(crate) cpu: u64,
    pub(crate) mem: u64,
    pub(crate) scramble: u32,
    pub(crate) host: u32,
}

/// A bijection on u32 (multiplication by an odd constant), used as the scramble.
pub(crate) fn scramble(id: u32, seed: u32) -> u32 {
    (id ^ seed).wrapping_mul(0x9E37_79B1).rotate_left(13)
}

impl FreeKey {
    /// The smallest key with room for `demand`'s CPU and memory: where a range
    /// query for hosts that may take it starts.
    pub(crate) fn lowest(demand: &Resources) -> FreeKey {
        FreeKey {
            cpu: demand.cpu_milli,
            mem: demand.memory_mib,
            scramble: 0,
            host: 0,
        }
    }

    pub(crate) fn of(id: HostId, host: &Host, seed: u32) -> FreeKey {
        FreeKey {
            cpu: host.free.cpu_milli,
            mem: host.free.memory_mib,
            scramble: scramble(id.0, seed),
            host: id.0,
        }
    }
}

/// One equivalence class.
#[derive(Debug, Clone)]
pub(crate) struct Class {
    pub(crate) key: ClassKey,
    pub(crate) hosts: BTreeSet<FreeKey>,
}

/// All classes, and which classes each owner has.
#[derive(Debug, Clone)]
pub(crate) struct ClassIndex {
    seed: u32,
    pub(crate) classes: Vec<Class>,
    /// Class ids by key; ids come in creation order, so an id is a position in `classes`.
    pub(crate) keys: Interner<ClassKey>,
    /// Up classes per owner, in creation order: the only classes placement looks at.
    up_by_owner: BTreeMap<Owner, Vec<u32>>,
}

impl ClassIndex {
    pub(crate) fn new(seed: u64) -> ClassIndex {
        ClassIndex {
            // Folding the seed to 32 bits is the point: it only permutes host ids.
            #[allow(clippy::cast_possible_truncation)]
            seed: (seed ^ (seed >> 32)) as u32,
            classes: Vec::new(),
            keys: Interner::default(),
            up_by_owner: BTreeMap::new(),
        }
    }

    /// The class for `key`, creating it if new.
    pub(crate) fn class_for(&mut self, key: ClassKey) -> Result<u32, Bookkeeping> {
        let known = self.classes.len();
        let c = self
            .keys
            .intern(&key)
            .ok_or(Bookkeeping::ClassIdsExhausted)?;
        if c as usize == known {
            self.classes.push(Class {
                key,
                hosts: BTreeSet::new(),
            });
            if key.state == HostState::Up {
                self.up_by_owner.entry(key.owner).or_default().push(c);
            }
        }
        Ok(c)
    }

    /// Up classes of `owner`. Every id in `up_by_owner` was pushed by `class_for` next
    /// to its class, and classes are never removed, so each one resolves.
    pub(crate) fn up_classes(&self, owner: Owner) -> impl Iterator<Item = &Class> {
        self.up_by_owner
            .get(&owner)
            .into_iter()
            .flatten()
            .filter_map(|&c| self.classes.get(c as usize))
    }

    /// Puts a host into the class its properties say, at the position its free says.
    pub(crate) fn insert(&mut self, id: HostId, host: &mut Host) -> Result<(), Bookkeeping> {
        let c = self.class_for(ClassKey::of(host))?;
        host.class = c;
        let class = self
            .classes
            .get_mut(c as usize)
            .ok_or(Bookkeeping::NotIndexed)?;
        class.hosts.insert(FreeKey::of(id, host, self.seed));
        Ok(())
    }

    /// Takes a host out of the index; call before changing its free capacity or any
    /// class property, then [`ClassIndex::insert`] again.
    pub(crate) fn remove(&mut self, id: HostId, host: &Host) -> Result<(), Bookkeeping> {
        let class = self.classes.get_mut(host.class as usize);
        match class.map(|class| class.hosts.remove(&FreeKey::of(id, host, self.seed))) {
            Some(true) => Ok(()),
            _ => Err(Bookkeeping::NotIndexed),
        }
    }

    /// Recomputes the index from the hosts and compares.
    #[cfg(feature = "test-util")]
    pub(crate) fn check(&self, hosts: &[Host]) -> Result<(), String> {
        let mut expected: BTreeMap<ClassKey, BTreeSet<FreeKey>> = BTreeMap::new();
        for (i, h) in hosts.iter().enumerate() {
            let id = HostId(u32::try_from(i).map_err(|e| e.to_string())?);
            let key = ClassKey::of(h);
            let class = self
                .classes
                .get(h.class as usize)
                .ok_or_else(|| format!("{id}: class {} does not exist", h.class))?;
            if class.key != key {
                return Err(format!(
                    "{id}: in class {:?}, should be {:?}",
                    class.key, key
                ));
            }
            expected
                .entry(key)
                .or_default()
                .insert(FreeKey::of(id, h, self.seed));
        }
        for class in &self.classes {
            let want = expected.remove(&class.key).unwrap_or_default();
            if want != class.hosts {
                return Err(format!(
                    "class {:?}: index holds {} hosts, recomputation {}",
                    class.key,
                    class.hosts.len(),
                    want.len()
                ));
            }
            if self
                .keys
                .get(&class.key)
                .and_then(|c| self.classes.get(c as usize))
                .map(|c| &c.key)
                != Some(&class.key)
            {
                return Err(format!("class {:?} missing from the key map", class.key));
            }
        }
        if let Some((key, _)) = expected.into_iter().next() {
            return Err(format!("hosts of class {key:?} have no class"));
        }
        Ok(())
    }
}

//! Resource vectors and GPUs as individual devices.
//!
//! A host's capacity and a task's demand are vectors over CPU (millicores),
//! memory (MiB) and up to [`MAX_EXTRA`] extensible named resources, plus GPUs,
//! which are not a number but devices: a task asks for a share of one device
//! (thousandths, as the openb trace does) or for whole devices. Treating a host's
//! GPUs as one pool over-promises: eight 600-milli shares fit in 8 x 1000 milli
//! of pool but only on eight devices, never on seven.

use smallvec::SmallVec;

/// How many extensible named resources a vector carries besides CPU and memory.
pub const MAX_EXTRA: usize = 4;

/// Milli-units in one whole GPU device.
pub const GPU_MILLI: u16 = 1000;

/// A resource vector: CPU, memory and named extras (their names live in [`crate::ResourceNames`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_milli: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Extensible resources by index.
    pub extra: [u64; MAX_EXTRA],
}

impl Resources {
    /// CPU and memory only.
    pub const fn new(cpu_milli: u64, memory_mib: u64) -> Resources {
        Resources {
            cpu_milli,
            memory_mib,
            extra: [0; MAX_EXTRA],
        }
    }

    /// Every dimension, CPU and memory first.
    pub fn dims(&self) -> [u64; 2 + MAX_EXTRA] {
        let mut d = [0; 2 + MAX_EXTRA];
        d[0] = self.cpu_milli;
        d[1] = self.memory_mib;
        d[2..].copy_from_slice(&self.extra);
        d
    }

    fn zip(&self, other: &Resources, f: impl Fn(u64, u64) -> Option<u64>) -> Option<Resources> {
        let mut extra = [0; MAX_EXTRA];
        for (i, e) in extra.iter_mut().enumerate() {
            *e = f(self.extra[i], other.extra[i])?;
        }
        Some(Resources {
            cpu_milli: f(self.cpu_milli, other.cpu_milli)?,
            memory_mib: f(self.memory_mib, other.memory_mib)?,
            extra,
        })
    }

    /// Whether `self` fits in `free` in every dimension.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_milli <= free.cpu_milli
            && self.memory_mib <= free.memory_mib
            && self.extra.iter().zip(&free.extra).all(|(d, f)| d <= f)
    }

    /// `self - other`, or `None` if any dimension would go negative.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        self.zip(other, u64::checked_sub)
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        self.zip(other, u64::checked_add)
    }
}

/// Dimensions packing and scoring look at: CPU, memory, the extras, GPU milli (as a total).
pub(crate) const DIMS: usize = 3 + MAX_EXTRA;

/// `resources` in every dimension, with `gpu_milli` last.
pub(crate) fn dims(resources: &Resources, gpu_milli: u64) -> [u64; DIMS] {
    let mut d = [0; DIMS];
    d[..2 + MAX_EXTRA].copy_from_slice(&resources.dims());
    d[DIMS - 1] = gpu_milli;
    d
}

/// `amounts` as fractions of `capacity`, per dimension (0 where there is no capacity).
pub(crate) fn fractions(amounts: &[u64; DIMS], capacity: &[u64; DIMS]) -> [f64; DIMS] {
    let mut r = [0.0; DIMS];
    for k in 0..DIMS {
        if capacity[k] > 0 {
            #[allow(clippy::cast_precision_loss)] // ratios of resource amounts; f64 is ample
            let x = amounts[k] as f64 / capacity[k] as f64;
            r[k] = x;
        }
    }
    r
}

/// What a task asks of GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GpuDemand {
    /// No GPU.
    #[default]
    None,
    /// A share of one device, in thousandths (1..=999); shares stack on a device up to 1000.
    Shared(u16),
    /// This many whole devices, unused by anyone else.
    Whole(u8),
}

impl GpuDemand {
    /// The demand in GPU milli, as if the host's GPUs were one pool.
    pub fn milli(self) -> u64 {
        match self {
            GpuDemand::None => 0,
            GpuDemand::Shared(m) => u64::from(m),
            GpuDemand::Whole(n) => u64::from(n) * u64::from(GPU_MILLI),
        }
    }
}

/// What one task asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Demand {
    /// CPU, memory and extras.
    pub resources: Resources,
    /// GPUs.
    pub gpu: GpuDemand,
}

/// Which devices (and how much of each) a placed task holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GpuGrant {
    /// `(device index, milli)` pairs.
    pub devices: SmallVec<[(u8, u16); 2]>,
}

impl GpuGrant {
    /// Device indexes, e.g. for an assignments file.
    pub fn indexes(&self) -> impl Iterator<Item = u8> + '_ {
        self.devices.iter().map(|(i, _)| *i)
    }
}

/// The free thousandths of each GPU device of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GpuDevices {
    free: SmallVec<[u16; 8]>,
}

impl GpuDevices {
    /// `count` idle devices (at most 255).
    pub fn new(count: u8) -> GpuDevices {
        GpuDevices {
            free: smallvec::smallvec![GPU_MILLI; usize::from(count)],
        }
    }

    /// Number of devices.
    pub fn count(&self) -> usize {
        self.free.len()
    }

    /// Free milli per device.
    pub fn free(&self) -> &[u16] {
        &self.free
    }

    /// Free milli over all devices.
    pub fn free_milli(&self) -> u64 {
        self.free.iter().map(|&f| u64::from(f)).sum()
    }

    /// Devices with nothing on them.
    pub fn idle(&self) -> usize {
        self.free.iter().filter(|&&f| f == GPU_MILLI).count()
    }

    /// Whether `demand` fits on these devices.
    pub fn fits(&self, demand: GpuDemand) -> bool {
        match demand {
            GpuDemand::None => true,
            GpuDemand::Shared(m) => self.free.iter().any(|&f| f >= m),
            GpuDemand::Whole(n) => self.idle() >= usize::from(n),
        }
    }

    /// Takes `demand`: a share goes to the fullest device it fits on (best fit, so idle
    /// devices stay idle for whole-device tasks); whole devices are the lowest idle ones.
    pub fn take(&mut self, demand: GpuDemand) -> Option<GpuGrant> {
        let mut grant = GpuGrant::default();
        match demand {
            GpuDemand::None => {}
            GpuDemand::Shared(m) => {
                let (i, _) = self
                    .free
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| **f >= m)
                    .min_by_key(|(_, f)| **f)?;
                self.free[i] -= m;
                grant.devices.push((u8::try_from(i).ok()?, m));
            }
            GpuDemand::Whole(n) => {
                if self.idle() < usize::from(n) {
                    return None;
                }
                for (i, f) in self
                    .free
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, f)| **f == GPU_MILLI)
                    .take(usize::from(n))
                {
                    *f = 0;
                    grant.devices.push((u8::try_from(i).ok()?, GPU_MILLI));
                }
            }
        }
        Some(grant)
    }

    /// Takes exactly the devices of `grant` (to restore a task where it was); `None`,
    /// and nothing taken, if one of them is missing or short.
    pub(crate) fn take_exact(&mut self, grant: &GpuGrant) -> Option<()> {
        let mut free = self.free.clone();
        for &(i, m) in &grant.devices {
            let f = free.get_mut(usize::from(i))?;
            *f = f.checked_sub(m)?;
        }
        self.free = free;
        Some(())
    }

    /// Returns a grant taken from these devices, checked: the first device of the grant
    /// that is not on this host or would hold more than [`GPU_MILLI`] free is an error,
    /// and then nothing changed. A grant holds each device once (a share is one device,
    /// whole devices are distinct), so each device can be checked on its own.
    pub(crate) fn give_back(&mut self, grant: &GpuGrant) -> Result<(), u8> {
        let bad = grant.devices.iter().find(|&&(i, m)| {
            self.free
                .get(usize::from(i))
                .is_none_or(|&f| u32::from(f) + u32::from(m) > u32::from(GPU_MILLI))
        });
        if let Some(&(device, _)) = bad {
            return Err(device);
        }
        self.give(grant);
        Ok(())
    }

    /// Returns a grant taken from these devices.
    pub fn give(&mut self, grant: &GpuGrant) {
        for &(i, m) in &grant.devices {
            if let Some(f) = self.free.get_mut(usize::from(i)) {
                *f = (*f + m).min(GPU_MILLI);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_stack_per_device_not_per_pool() {
        let mut gpus = GpuDevices::new(2);
        assert!(gpus.take(GpuDemand::Shared(600)).is_some());
        assert!(gpus.take(GpuDemand::Shared(600)).is_some());
        // 800 milli free in the pool, but no device has 600.
        assert_eq!(gpus.free_milli(), 800);
        assert!(!gpus.fits(GpuDemand::Shared(600)));
        assert!(gpus.take(GpuDemand::Shared(400)).is_some());
        assert!(!gpus.fits(GpuDemand::Whole(1)));
    }

    #[test]
    fn shares_prefer_used_devices() {
        let mut gpus = GpuDevices::new(2);
        let a = gpus.take(GpuDemand::Shared(300)).unwrap();
        let b = gpus.take(GpuDemand::Shared(300)).unwrap();
        assert_eq!(
            a.devices[0].0, b.devices[0].0,
            "best fit keeps the other device idle"
        );
        assert!(gpus.fits(GpuDemand::Whole(1)));
        gpus.give(&a);
        gpus.give(&b);
        assert_eq!(gpus.idle(), 2);
    }

    #[test]
    fn vectors() {
        let free = Resources::new(1000, 2048);
        assert!(Resources::new(1000, 2048).fits_in(&free));
        assert!(!Resources::new(1001, 1).fits_in(&free));
        assert_eq!(
            free.checked_sub(&Resources::new(1, 1)),
            Some(Resources::new(999, 2047))
        );
        assert_eq!(free.checked_sub(&Resources::new(1, 4096)), None);
    }
}

//! An independent check of a packing: per-host sums recomputed from the placements and
//! the trace rows alone. It shares nothing with the packer's bookkeeping (no bins, no
//! device ledger, no shapes), so a slip there shows up here.

use std::collections::{BTreeMap, BTreeSet};

use super::{Dimension, Hosts, Packing};
use crate::resources::{GPU_MILLI, GpuDemand, MAX_EXTRA, Resources};
use crate::trace::TracePod;

/// How the checked packing treated GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuMode {
    /// As devices, as placement must: a share fits on one device, whole devices are unshared.
    Devices,
    /// As one pool per host ([`super::pool_gpus`]): only the sum of GPU milli per host counts.
    Pooled,
}

/// What [`verify`] counted itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// Pods with a placement.
    pub placed: usize,
    /// Distinct hosts holding at least one pod.
    pub hosts_used: usize,
}

/// A packing that breaks a rule; names the pod, the host and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The placements do not match the pods one to one.
    #[error("{placements} placements for {pods} pods")]
    Length {
        /// Pods given.
        pods: usize,
        /// Placements in the packing.
        placements: usize,
    },
    /// A pod is on a host that does not exist.
    #[error("pod {pod}: host #{host} does not exist ({hosts} nodes listed)")]
    NoSuchHost {
        /// The pod's name.
        pod: String,
        /// The host index.
        host: usize,
        /// Listed nodes.
        hosts: usize,
    },
    /// A pod is on a host whose GPU model it does not accept.
    #[error("pod {pod}: accepts GPU models {accepts:?}, host #{host} has {model}")]
    WrongGpuModel {
        /// The pod's name.
        pod: String,
        /// The host index.
        host: usize,
        /// The pod's `gpu_spec`.
        accepts: Vec<String>,
        /// The host's model.
        model: String,
    },
    /// A host holds more than its capacity in a dimension.
    #[error("host #{host}: {dimension} {used} over capacity {capacity} once pod {pod} is added")]
    OverCapacity {
        /// The host index.
        host: usize,
        /// The pod that tipped it over.
        pod: String,
        /// The dimension.
        dimension: Dimension,
        /// The sum of demands on the host.
        used: u128,
        /// The host's capacity.
        capacity: u64,
    },
    /// A pod's GPU grant does not match what it asked for.
    #[error("pod {pod} on host #{host}: granted {granted:?} (device, milli), asked {asked:?}")]
    WrongGrant {
        /// The pod's name.
        pod: String,
        /// The host index.
        host: usize,
        /// The grant.
        granted: Vec<(u8, u16)>,
        /// The demand.
        asked: GpuDemand,
    },
    /// A grant names a device the host does not have.
    #[error("pod {pod}: GPU device {device} on host #{host}, which has {devices}")]
    NoSuchDevice {
        /// The pod's name.
        pod: String,
        /// The host index.
        host: usize,
        /// The device index.
        device: u8,
        /// Devices the host has.
        devices: u8,
    },
    /// A device holds more than 1000 milli.
    #[error("host #{host}: GPU device {device} over 1000 milli once pod {pod} is added")]
    DeviceOverCommitted {
        /// The host index.
        host: usize,
        /// The device index.
        device: u8,
        /// The pod that tipped it over.
        pod: String,
    },
    /// A device granted whole to a pod also holds another pod.
    #[error("host #{host}: GPU device {device} is granted whole but shared")]
    WholeDeviceShared {
        /// The host index.
        host: usize,
        /// The device index.
        device: u8,
    },
    /// The packing reports a different host count than its placements use.
    #[error("{counted} hosts hold pods, the packing reports {reported}")]
    HostCount {
        /// Distinct hosts in the placements.
        counted: usize,
        /// `Packing::hosts_used`.
        reported: usize,
    },
    /// Placed and reported-unplaced pods do not add up to all pods.
    #[error("{placed} placed + {unplaced} reported unplaced != {pods} pods")]
    Unaccounted {
        /// Pods with a placement.
        placed: usize,
        /// Sum of `Packing::unplaced_reasons`.
        unplaced: usize,
        /// Pods given.
        pods: usize,
    },
}

/// What one host holds, summed from the placements.
#[derive(Default)]
struct Load {
    /// CPU, memory, extras, then GPU milli (pooled mode only).
    sums: [u128; 3 + MAX_EXTRA],
    /// Per device: milli held, pods holding it, whether any holds it whole.
    devices: BTreeMap<u8, (u32, u32, bool)>,
}

/// Checks `packing` of `pods` (as read from the trace) onto `hosts` (before any
/// [`super::pool_gpus`]): every placed pod on an existing host whose GPU model it
/// accepts, no host over capacity in CPU, memory or any extra, GPUs per `mode`
/// (devices: each grant exactly the demand, on existing devices, no device over 1000
/// milli, whole devices unshared; pooled: the host's GPU milli summed), the reported
/// host count right, and every pod placed or reported unplaced.
pub fn verify(
    hosts: &Hosts,
    pods: &[TracePod],
    packing: &Packing,
    mode: GpuMode,
) -> Result<Verified, Violation> {
    if packing.placements.len() != pods.len() {
        return Err(Violation::Length {
            pods: pods.len(),
            placements: packing.placements.len(),
        });
    }
    let mut loads: BTreeMap<usize, Load> = BTreeMap::new();
    for (pod, placement) in pods.iter().zip(&packing.placements) {
        let Some(placement) = placement else { continue };
        let host = placement.host;
        let (capacity, gpus, model): (&Resources, u8, Option<&String>) = match hosts {
            Hosts::Identical {
                capacity,
                gpus,
                gpu_model,
            } => (capacity, *gpus, gpu_model.as_ref()),
            Hosts::Listed(nodes) => {
                let node = nodes.get(host).ok_or_else(|| Violation::NoSuchHost {
                    pod: pod.name.clone(),
                    host,
                    hosts: nodes.len(),
                })?;
                (&node.capacity, node.gpus, node.gpu_model.as_ref())
            }
        };
        if let Some(model) = model
            && !pod.gpu_spec.is_empty()
            && !pod.gpu_spec.contains(model)
        {
            return Err(Violation::WrongGpuModel {
                pod: pod.name.clone(),
                host,
                accepts: pod.gpu_spec.clone(),
                model: model.clone(),
            });
        }
        let load = loads.entry(host).or_default();
        let mut need = [0u64; 3 + MAX_EXTRA];
        need[..2 + MAX_EXTRA].copy_from_slice(&pod.demand.resources.dims());
        let mut have = [0u64; 3 + MAX_EXTRA];
        have[..2 + MAX_EXTRA].copy_from_slice(&capacity.dims());
        if mode == GpuMode::Pooled {
            need[2 + MAX_EXTRA] = pod.demand.gpu.milli();
            have[2 + MAX_EXTRA] = u64::from(gpus) * u64::from(GPU_MILLI);
        }
        for k in 0..3 + MAX_EXTRA {
            load.sums[k] += u128::from(need[k]);
            if load.sums[k] > u128::from(have[k]) {
                return Err(Violation::OverCapacity {
                    host,
                    pod: pod.name.clone(),
                    dimension: if k < 2 + MAX_EXTRA {
                        Dimension::of_resource(k)
                    } else {
                        Dimension::Gpu
                    },
                    used: load.sums[k],
                    capacity: have[k],
                });
            }
        }
        let granted = &placement.gpus.devices;
        let grant_matches = match (mode, pod.demand.gpu) {
            (GpuMode::Pooled, _) | (GpuMode::Devices, GpuDemand::None) => granted.is_empty(),
            (GpuMode::Devices, GpuDemand::Shared(m)) => granted.len() == 1 && granted[0].1 == m,
            (GpuMode::Devices, GpuDemand::Whole(n)) => {
                granted.len() == usize::from(n)
                    && granted.iter().all(|&(_, m)| m == GPU_MILLI)
                    && granted
                        .iter()
                        .map(|&(d, _)| d)
                        .collect::<BTreeSet<_>>()
                        .len()
                        == granted.len()
            }
        };
        if !grant_matches {
            return Err(Violation::WrongGrant {
                pod: pod.name.clone(),
                host,
                granted: granted.to_vec(),
                asked: pod.demand.gpu,
            });
        }
        let whole = matches!(pod.demand.gpu, GpuDemand::Whole(_));
        for &(device, milli) in granted {
            if device >= gpus {
                return Err(Violation::NoSuchDevice {
                    pod: pod.name.clone(),
                    host,
                    device,
                    devices: gpus,
                });
            }
            let (held, holders, any_whole) = load.devices.entry(device).or_default();
            *held += u32::from(milli);
            *holders += 1;
            *any_whole |= whole;
            if *held > u32::from(GPU_MILLI) {
                return Err(Violation::DeviceOverCommitted {
                    host,
                    device,
                    pod: pod.name.clone(),
                });
            }
        }
    }
    for (&host, load) in &loads {
        if let Some((&device, _)) = load
            .devices
            .iter()
            .find(|(_, (_, holders, whole))| *whole && *holders > 1)
        {
            return Err(Violation::WholeDeviceShared { host, device });
        }
    }
    if loads.len() != packing.hosts_used {
        return Err(Violation::HostCount {
            counted: loads.len(),
            reported: packing.hosts_used,
        });
    }
    let placed = packing.placements.iter().flatten().count();
    let unplaced: usize = packing.unplaced_reasons.values().sum();
    if placed + unplaced != pods.len() {
        return Err(Violation::Unaccounted {
            placed,
            unplaced,
            pods: pods.len(),
        });
    }
    Ok(Verified {
        placed,
        hosts_used: loads.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::Placement;
    use crate::resources::GpuGrant;
    use crate::trace::TraceNode;

    fn pod(name: &str, cpu: u64, gpu: GpuDemand) -> TracePod {
        crate::pack::test_pod(name, cpu, 1, gpu)
    }

    fn on(host: usize, devices: &[(u8, u16)]) -> Option<Placement> {
        Some(Placement {
            host,
            gpus: GpuGrant {
                devices: devices.iter().copied().collect(),
            },
        })
    }

    fn packing(placements: Vec<Option<Placement>>, hosts_used: usize) -> Packing {
        Packing {
            placements,
            hosts_used,
            lower_bound: 1,
            unplaced_reasons: BTreeMap::new(),
        }
    }

    /// Each rule, broken once by a hand-made packing, is caught and named.
    #[test]
    fn every_rule_is_checked() {
        let hosts = Hosts::Identical {
            capacity: Resources::new(1000, 10),
            gpus: 2,
            gpu_model: None,
        };
        let share = |name| pod(name, 100, GpuDemand::Shared(600));
        let whole = pod("w", 100, GpuDemand::Whole(1));
        let fine = packing(vec![on(0, &[(0, 600)]), on(0, &[(1, 1000)])], 1);
        let ok = verify(
            &hosts,
            &[share("a"), whole.clone()],
            &fine,
            GpuMode::Devices,
        );
        assert_eq!(ok.map(|v| (v.placed, v.hosts_used)), Ok((2, 1)));

        let cases: Vec<(Vec<TracePod>, Packing, &str)> = vec![
            (
                vec![
                    pod("a", 600, GpuDemand::None),
                    pod("b", 600, GpuDemand::None),
                ],
                packing(vec![on(0, &[]), on(0, &[])], 1),
                "host #0: cpu 1200 over capacity 1000 once pod b is added",
            ),
            (
                vec![share("a"), share("b")],
                packing(vec![on(0, &[(0, 600)]), on(0, &[(0, 600)])], 1),
                "host #0: GPU device 0 over 1000 milli once pod b is added",
            ),
            (
                vec![share("a"), whole.clone()],
                packing(vec![on(0, &[(0, 600)]), on(0, &[(0, 1000)])], 1),
                "host #0: GPU device 0 over 1000 milli once pod w is added",
            ),
            (
                vec![share("a")],
                packing(vec![on(0, &[(0, 500)])], 1),
                "pod a on host #0: granted [(0, 500)] (device, milli), asked Shared(600)",
            ),
            (
                vec![share("a")],
                packing(vec![on(0, &[(2, 600)])], 1),
                "pod a: GPU device 2 on host #0, which has 2",
            ),
            (
                vec![share("a")],
                packing(vec![on(0, &[(0, 600)])], 2),
                "1 hosts hold pods, the packing reports 2",
            ),
            (
                vec![share("a"), share("b")],
                packing(vec![on(0, &[(0, 600)]), None], 1),
                "1 placed + 0 reported unplaced != 2 pods",
            ),
        ];
        for (pods, p, want) in cases {
            let got = verify(&hosts, &pods, &p, GpuMode::Devices).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()));
        }
    }

    #[test]
    fn listed_hosts_models_and_pools() {
        let hosts = Hosts::Listed(vec![TraceNode {
            name: "n".into(),
            capacity: Resources::new(1000, 10),
            gpus: 1,
            gpu_model: Some("T4".into()),
        }]);
        let mut v100 = pod("v", 1, GpuDemand::Shared(100));
        v100.gpu_spec = vec!["V100".into()];
        let got = verify(
            &hosts,
            &[v100],
            &packing(vec![on(0, &[(0, 100)])], 1),
            GpuMode::Devices,
        );
        assert_eq!(
            got.map_err(|e| e.to_string()),
            Err(r#"pod v: accepts GPU models ["V100"], host #0 has T4"#.to_owned())
        );
        let a = pod("a", 1, GpuDemand::None);
        let got = verify(
            &hosts,
            &[a],
            &packing(vec![on(1, &[])], 1),
            GpuMode::Devices,
        );
        assert_eq!(
            got.map_err(|e| e.to_string()),
            Err("pod a: host #1 does not exist (1 nodes listed)".to_owned())
        );
        // Pooled: shares are summed per host, not per device, and hold no device.
        let shares = [share_of(600, "a"), share_of(400, "b"), share_of(100, "c")];
        let pooled = packing(vec![on(0, &[]), on(0, &[])], 1);
        assert!(verify(&hosts, &shares[..2], &pooled, GpuMode::Pooled).is_ok());
        let over = packing(vec![on(0, &[]), on(0, &[]), on(0, &[])], 1);
        assert_eq!(
            verify(&hosts, &shares, &over, GpuMode::Pooled).map_err(|e| e.to_string()),
            Err("host #0: gpu 1100 over capacity 1000 once pod c is added".to_owned())
        );
    }

    fn share_of(milli: u16, name: &str) -> TracePod {
        pod(name, 1, GpuDemand::Shared(milli))
    }
}

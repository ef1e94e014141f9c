//! twine's packing policy: bin-centric L2 fill, then compaction.
//!
//! The classic heuristics are item-centric: they fix the task order up front
//! (largest first) and put each task where a score likes it best. On workloads
//! whose demands are anti-correlated, as in the openb GPU trace (GPU-heavy tasks
//! with little CPU beside CPU-only tasks), that strands capacity: hosts run out of
//! GPU devices with CPU still free, and first-fit-decreasing needs 1.19x the lower
//! bound.
//!
//! 1. **Fill** (`fill_bins`): open one host at a time and keep adding the task
//!    *shape* (tasks are grouped into equivalence classes of identical demand)
//!    whose normalized demand is closest, in L2, to the host's remaining hole,
//!    until nothing fits. A fresh host takes a large task first; once its devices
//!    are spoken for it takes CPU-only tasks; small GPU shares fill device
//!    fragments. L2 beats the dot product here: the dot product favours large
//!    tasks, not tasks that match the hole.
//! 2. **Compact** (`compact`): Borg's cell compaction as local search. Take the
//!    least-loaded hosts (load weights the bottleneck dimension double) and try to
//!    empty one by moving its tasks, largest first, to the best-fitting other
//!    host, or by a one-step swap (evict a task from a host so the moving task fits
//!    there, and put the evicted task on a third host). A host that empties is
//!    closed; one that does not is restored exactly. Repeat until no candidate
//!    empties.
//!
//! Measured on the openb trace (8,147 placeable pods, 96-core/384 GiB/8-GPU hosts):
//! fill alone 921 hosts (1.042x the lower bound of 884), with compaction 902
//! (1.020x); see docs/BENCHMARKS.md. Deterministic: no clock, no randomness, ties
//! broken by index.

use crate::pack::{Bin, DIMS, NodeShape, Opener, shape_of, spec_accepts};
use crate::resources::Demand;
use crate::trace::TracePod;

/// Tasks with the same demand and GPU constraint: placed interchangeably.
struct Class {
    /// A representative task.
    first: usize,
    /// Tasks of this class not yet placed, last placed first.
    left: Vec<usize>,
}

fn classes(pods: &[TracePod], indexes: &[usize]) -> Vec<Class> {
    // Classes are numbered in input order, so the map's own order never shows.
    let mut by_shape: std::collections::HashMap<(Demand, &[String]), usize> =
        std::collections::HashMap::new();
    let mut classes: Vec<Class> = Vec::new();
    for &i in indexes {
        let key = (pods[i].demand, pods[i].gpu_spec.as_slice());
        let c = *by_shape.entry(key).or_insert_with(|| {
            classes.push(Class {
                first: i,
                left: Vec::new(),
            });
            classes.len() - 1
        });
        classes[c].left.push(i);
    }
    // Place in input order within a class.
    for class in &mut classes {
        class.left.reverse();
    }
    classes
}

fn accepts(bin: &Bin, shapes: &[NodeShape], pod: &TracePod) -> bool {
    bin.fits(&pod.demand) && spec_accepts(pod, shape_of(shapes, bin))
}

/// Stage 1. Fills new bins from `opener` with the tasks `indexes`; returns how many
/// tasks found no bin (possible only with a limited node list).
pub(crate) fn fill_bins(
    pods: &[TracePod],
    indexes: &[usize],
    shapes: &[NodeShape],
    opener: &mut Opener<'_>,
    bins: &mut Vec<Bin>,
) -> usize {
    let mut classes = classes(pods, indexes);
    let mut left = indexes.len();
    while left > 0 {
        let open = opener.open_where(|bin, _| {
            classes
                .iter()
                .any(|c| !c.left.is_empty() && accepts(bin, shapes, &pods[c.first]))
        });
        let Some(mut bin) = open else { break };
        loop {
            let best = classes
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.left.is_empty() && accepts(&bin, shapes, &pods[c.first]))
                .map(|(k, c)| (k, bin.l2_fit(&pods[c.first].demand)))
                .fold(None, |best: Option<(usize, f64)>, (k, s)| match best {
                    Some((_, b)) if b >= s => best,
                    _ => Some((k, s)),
                });
            let Some((k, _)) = best else { break };
            let Some(i) = classes[k].left.pop() else {
                break;
            };
            if !bin.put(i, &pods[i].demand) {
                classes[k].left.push(i);
                break;
            }
            left -= 1;
        }
        bins.push(bin);
    }
    left
}

/// How many of the least-loaded hosts each compaction round tries to empty.
pub const COMPACTION_CANDIDATES: usize = 20;

/// Stage 2. Empties the least-loaded bins into the others while that works.
pub(crate) fn compact(bins: &mut Vec<Bin>, pods: &[TracePod], shapes: &[NodeShape]) {
    bins.retain(|b| b.tasks > 0);
    let weights = bottleneck_weights(bins);
    let load = |b: &Bin| {
        b.residual()
            .iter()
            .zip(&weights)
            .map(|(r, w)| w * (1.0 - r))
            .sum::<f64>()
    };
    // Every success removes a bin, so this ends after at most bins.len() rounds.
    'rounds: loop {
        let mut candidates: Vec<usize> = (0..bins.len()).collect();
        candidates.sort_by(|&a, &b| load(&bins[a]).total_cmp(&load(&bins[b])).then(a.cmp(&b)));
        for &v in candidates.iter().take(COMPACTION_CANDIDATES) {
            let snapshot = bins.clone();
            let mut moving: Vec<usize> = bins[v].members.iter().map(|(i, _)| *i).collect();
            moving.sort_by(|&a, &b| {
                let (da, db) = (
                    bins[v].normalize(&pods[a].demand),
                    bins[v].normalize(&pods[b].demand),
                );
                (db.iter().sum::<f64>())
                    .total_cmp(&da.iter().sum::<f64>())
                    .then(a.cmp(&b))
            });
            let emptied = moving.iter().all(|&i| insert(bins, pods, shapes, i, v));
            if emptied {
                bins.swap_remove(v);
                continue 'rounds;
            }
            *bins = snapshot;
        }
        break;
    }
}

/// Load weights: the dimension with the largest total use counts double; dimensions
/// no bin has count nothing.
fn bottleneck_weights(bins: &[Bin]) -> [f64; DIMS] {
    let mut used = [0.0; DIMS];
    let mut present = [false; DIMS];
    for b in bins {
        let (r, cap) = (b.residual(), b.capacity_dims());
        for k in 0..DIMS {
            if cap[k] > 0 {
                used[k] += 1.0 - r[k];
                present[k] = true;
            }
        }
    }
    let top = (0..DIMS)
        .max_by(|&a, &b| used[a].total_cmp(&used[b]))
        .unwrap_or(0);
    let mut w = [0.0; DIMS];
    for k in 0..DIMS {
        if present[k] {
            w[k] = if k == top { 2.0 } else { 1.0 };
        }
    }
    w
}

/// Moves task `i` (already off bin `skip`) onto another bin: the best L2 fit, else a
/// one-step swap. Returns false, with the bins unchanged, if neither works.
fn insert(
    bins: &mut [Bin],
    pods: &[TracePod],
    shapes: &[NodeShape],
    i: usize,
    skip: usize,
) -> bool {
    let pod = &pods[i];
    // Take it off `skip` first (it may still be there).
    if let Some(pos) = bins[skip].members.iter().position(|(m, _)| *m == i) {
        bins[skip].remove_at(pos, pods);
    }
    if let Some(j) = best_bin(bins, shapes, pod, &[skip]) {
        return bins[j].put(i, &pod.demand);
    }
    for g in 0..bins.len() {
        if g == skip {
            continue;
        }
        for pos in 0..bins[g].members.len() {
            let q = bins[g].members[pos].0;
            let qd = &pods[q].demand;
            let room = &bins[g].free;
            // Cheap necessary condition before cloning: CPU and memory must suffice once q leaves.
            if pods[q].demand == pod.demand
                || room.cpu_milli + qd.resources.cpu_milli < pod.demand.resources.cpu_milli
                || room.memory_mib + qd.resources.memory_mib < pod.demand.resources.memory_mib
            {
                continue;
            }
            let mut without = bins[g].clone();
            without.remove_at(pos, pods);
            if !accepts(&without, shapes, pod) {
                continue;
            }
            if let Some(k) = best_bin(bins, shapes, &pods[q], &[skip, g])
                && without.put(i, &pod.demand)
                && bins[k].put(q, &pods[q].demand)
            {
                bins[g] = without;
                return true;
            }
        }
    }
    false
}

fn best_bin(bins: &[Bin], shapes: &[NodeShape], pod: &TracePod, skip: &[usize]) -> Option<usize> {
    bins.iter()
        .enumerate()
        .filter(|(j, b)| !skip.contains(j) && accepts(b, shapes, pod))
        .map(|(j, b)| (j, b.l2_fit(&pod.demand)))
        .fold(None, |best: Option<(usize, f64)>, (j, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((j, s)),
        })
        .map(|(j, _)| j)
}

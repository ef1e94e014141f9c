//! twine's policy: bin-centric L2 fill, then compaction (the design is in the
//! docs of [`crate::pack`]).

use super::PackError;
use super::bins::{Bin, NodeShape, Opener, accepts, best_by_score};
use crate::resources::{DIMS, Demand};
use crate::trace::TracePod;

/// Packs the tasks `placeable` into new bins (fill, then compaction); returns the bins
/// and the tasks no host could take (possible only with a limited node list).
pub(super) fn pack(
    pods: &[TracePod],
    placeable: &[usize],
    shapes: &[NodeShape],
    opener: &mut Opener<'_>,
) -> Result<(Vec<Bin>, Vec<usize>), PackError> {
    let (mut bins, left_over) = fill_bins(pods, placeable, shapes, opener)?;
    compact(&mut bins, pods, shapes)?;
    Ok((bins, left_over))
}

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

/// Stage 1. Fills new bins from `opener` with the tasks `indexes`; returns the bins and
/// the tasks no host could take. Ends by itself: every host it opens accepts some
/// remaining task, so each round places at least one (else an error names the host).
fn fill_bins(
    pods: &[TracePod],
    indexes: &[usize],
    shapes: &[NodeShape],
    opener: &mut Opener<'_>,
) -> Result<(Vec<Bin>, Vec<usize>), PackError> {
    let mut classes = classes(pods, indexes);
    let mut bins = Vec::new();
    loop {
        let waiting = |c: &&Class| !c.left.is_empty();
        let open = opener.open_where(|bin| {
            classes
                .iter()
                .filter(waiting)
                .any(|c| accepts(bin, shapes, &pods[c.first]))
        });
        let Some(mut bin) = open else { break };
        while let Some(k) = best_by_score(
            classes
                .iter()
                .enumerate()
                .filter(|(_, c)| waiting(c) && accepts(&bin, shapes, &pods[c.first]))
                .map(|(k, c)| (k, bin.l2_fit(&pods[c.first].demand))),
        ) {
            // `waiting` kept only classes with a task left.
            let Some(i) = classes[k].left.pop() else {
                break;
            };
            bin.put(i, &pods[i].demand)?;
        }
        if bin.members.is_empty() {
            return Err(PackError::NoProgress { host: bin.node });
        }
        bins.push(bin);
    }
    let left_over = classes.into_iter().flat_map(|c| c.left).collect();
    Ok((bins, left_over))
}

/// How many of the least-loaded hosts each compaction round tries to empty.
const COMPACTION_CANDIDATES: usize = 20;

/// Stage 2. Empties the least-loaded bins into the others while that works.
fn compact(bins: &mut Vec<Bin>, pods: &[TracePod], shapes: &[NodeShape]) -> Result<(), PackError> {
    bins.retain(|b| !b.members.is_empty());
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
            let mut emptied = true;
            for &i in &moving {
                if !insert(bins, pods, shapes, i, v)? {
                    emptied = false;
                    break;
                }
            }
            if emptied {
                bins.swap_remove(v);
                continue 'rounds;
            }
            *bins = snapshot;
        }
        return Ok(());
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
    // The last of equal maxima, as `max_by` would.
    let top = (0..DIMS).fold(0, |top, k| {
        if used[k].total_cmp(&used[top]).is_ge() {
            k
        } else {
            top
        }
    });
    let mut w = [0.0; DIMS];
    for k in 0..DIMS {
        if present[k] {
            w[k] = if k == top { 2.0 } else { 1.0 };
        }
    }
    w
}

/// Moves task `i` (already off bin `skip`) onto another bin: the best L2 fit, else a
/// one-step swap. Returns false if neither works (the caller restores the bins).
fn insert(
    bins: &mut [Bin],
    pods: &[TracePod],
    shapes: &[NodeShape],
    i: usize,
    skip: usize,
) -> Result<bool, PackError> {
    let pod = &pods[i];
    // Take it off `skip` first (it may still be there).
    if let Some(pos) = bins[skip].members.iter().position(|(m, _)| *m == i) {
        bins[skip].remove_at(pos, pods)?;
    }
    if let Some(j) = best_bin(bins, shapes, pod, &[skip]) {
        bins[j].put(i, &pod.demand)?;
        return Ok(true);
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
            let short = |room: u64, freed: u64, need: u64| {
                u128::from(room) + u128::from(freed) < u128::from(need)
            };
            if pods[q].demand == pod.demand
                || short(
                    room.cpu_milli,
                    qd.resources.cpu_milli,
                    pod.demand.resources.cpu_milli,
                )
                || short(
                    room.memory_mib,
                    qd.resources.memory_mib,
                    pod.demand.resources.memory_mib,
                )
            {
                continue;
            }
            let mut without = bins[g].clone();
            without.remove_at(pos, pods)?;
            if !accepts(&without, shapes, pod) {
                continue;
            }
            if let Some(k) = best_bin(bins, shapes, &pods[q], &[skip, g]) {
                without.put(i, &pod.demand)?;
                bins[k].put(q, &pods[q].demand)?;
                bins[g] = without;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn best_bin(bins: &[Bin], shapes: &[NodeShape], pod: &TracePod, skip: &[usize]) -> Option<usize> {
    best_by_score(
        bins.iter()
            .enumerate()
            .filter(|(j, b)| !skip.contains(j) && accepts(b, shapes, pod))
            .map(|(j, b)| (j, b.l2_fit(&pod.demand))),
    )
}

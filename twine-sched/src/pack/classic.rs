//! The classic item-centric heuristics: tasks largest first, each onto the open host
//! a [`Policy`] scores highest, a new host when none fits.

use super::PackError;
use super::bins::{Bin, NodeShape, Opener, accepts, best_by_score, size};
use crate::score::Policy;
use crate::trace::TracePod;

/// Packs the tasks `placeable` into new bins; returns the bins and the tasks no host
/// could take (possible only with a limited node list).
pub(super) fn pack(
    pods: &[TracePod],
    placeable: &[usize],
    shapes: &[NodeShape],
    opener: &mut Opener<'_>,
    reference: &Bin,
    policy: Policy,
) -> Result<(Vec<Bin>, Vec<usize>), PackError> {
    let mut order = placeable.to_vec();
    order.sort_by(|&a, &b| {
        size(&pods[b].demand, reference)
            .total_cmp(&size(&pods[a].demand, reference))
            .then(a.cmp(&b))
    });
    let mut bins: Vec<Bin> = Vec::new();
    let mut left_over = Vec::new();
    for i in order {
        let pod = &pods[i];
        let best = best_by_score(
            bins.iter()
                .enumerate()
                .filter(|(_, b)| accepts(b, shapes, pod))
                .map(|(j, b)| (j, policy.score(&b.fit(&pod.demand)))),
        );
        let bin = match best {
            Some(j) => &mut bins[j],
            None => match opener.open_where(|b| accepts(b, shapes, pod)) {
                Some(bin) => {
                    bins.push(bin);
                    let last = bins.len() - 1;
                    &mut bins[last]
                }
                None => {
                    left_over.push(i);
                    continue;
                }
            },
        };
        bin.put(i, &pod.demand)?;
    }
    Ok((bins, left_over))
}

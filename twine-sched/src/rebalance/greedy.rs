//! The default solver, [`Greedy`].

use std::collections::HashSet;

use super::{Cost, Gain, Goal, Plan, PlannedMove, Proposal, Purpose, RebalanceError, Solver};
use crate::allocator::{AllocError, Allocator};
use crate::fleet::{FaultLevel, Host, HostId, HostState, Owner};
use crate::request::{JobId, TaskId};
use crate::resources::{DIMS, GPU_MILLI, dims};

/// The default solver: greedy local search on a scratch copy of the allocator.
///
/// **Emptying.** Hosts of entitlements are ranked by load (their fullest dimension as a
/// fraction of capacity, then task count), least loaded first. For each, the solver
/// tries to move every task onto another host of the same entitlement: best fit under
/// the task's own rules and policy, never onto a host emptied or being emptied this
/// round, never into the free pool. If every task finds a place within the budget, the
/// host is emptied (it goes back to the pool); else its trial moves are undone. A host
/// that took tasks this round is not emptied again, so no task moves twice.
///
/// **Spread.** Then, for jobs whose preference spreads them over a fault-domain level,
/// one task at a time moves from the job's fullest domain to a domain at least two
/// below it, while the gap is two or more; like a placement with a spread preference, it
/// may take a host from the free pool (within quota) to do so. Emptying never moves a
/// task of such a job into a domain that already holds as many of its tasks as the
/// domain it leaves, so the two never undo each other.
///
/// Every trial move goes through [`Allocator::move_task`] on the scratch copy, so the
/// plan is valid move by move by the allocator's own rules. Cost: a clone of the
/// allocator, a sort of the entitlement hosts, then one bounded candidate search per
/// task tried; [`Greedy::max_sources`] bounds the hosts tried per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Greedy {
    /// Hosts tried for emptying per round, at most.
    pub max_sources: usize,
    /// Whether to even out spread after emptying.
    pub respread: bool,
}

impl Default for Greedy {
    fn default() -> Self {
        Greedy {
            max_sources: 4096,
            respread: true,
        }
    }
}

impl Greedy {
    /// Sets the hosts tried per round.
    pub fn with_max_sources(mut self, n: usize) -> Self {
        self.max_sources = n;
        self
    }
}

/// A host's fullest dimension as a fraction of its capacity.
fn load(h: &Host) -> f64 {
    let gpu_cap = h.gpus.count() as u64 * u64::from(GPU_MILLI);
    let cap = dims(&h.capacity, gpu_cap);
    let free = dims(&h.free, h.gpus.free_milli());
    (0..DIMS)
        .filter(|&k| cap[k] > 0)
        .map(|k| {
            #[allow(clippy::cast_precision_loss)] // a ratio of amounts; f64 is ample
            let used = (cap[k] - free[k].min(cap[k])) as f64 / cap[k] as f64;
            used
        })
        .fold(0.0, f64::max)
}

/// A task's demand, largest dimension first, for ordering: hard tasks are tried first.
fn size(alloc: &Allocator, t: TaskId, host: &Host) -> Result<f64, AllocError> {
    let v = alloc.task_view(t)?;
    let gpu_cap = host.gpus.count() as u64 * u64::from(GPU_MILLI);
    let cap = dims(&host.capacity, gpu_cap);
    let d = dims(&v.demand.resources, v.demand.gpu.milli());
    Ok((0..DIMS)
        .filter(|&k| cap[k] > 0)
        .map(|k| {
            #[allow(clippy::cast_precision_loss)] // a ratio of amounts; f64 is ample
            let x = d[k] as f64 / cap[k] as f64;
            x
        })
        .fold(0.0, f64::max))
}

fn host(alloc: &Allocator, id: HostId) -> Result<&Host, AllocError> {
    alloc
        .hosts
        .get(id.0 as usize)
        .ok_or(AllocError::UnknownHost(id))
}

/// The cost of moving `moves` (read before they are made). The tasks of a proposal
/// share one host or are one task, so their sums fit in that host's capacity; an
/// overflow would be a bug.
fn cost(alloc: &Allocator, moves: &[PlannedMove]) -> Result<Cost, RebalanceError> {
    let overflow = || RebalanceError::Solver {
        solver: "greedy",
        message: "the cost of a proposal overflowed (a bug)".to_owned(),
    };
    let mut c = Cost::default();
    for m in moves {
        let v = alloc.task_view(m.task)?;
        c.moves = c.moves.checked_add(1).ok_or_else(overflow)?;
        c.resources = c
            .resources
            .checked_add(&v.demand.resources)
            .ok_or_else(overflow)?;
        c.gpu_milli = c
            .gpu_milli
            .checked_add(v.demand.gpu.milli())
            .ok_or_else(overflow)?;
    }
    Ok(c)
}

struct Search<'a> {
    work: Allocator,
    original: &'a Allocator,
    budget: usize,
    moves: usize,
    /// Hosts emptied this round, and hosts that took tasks: neither is a source again.
    emptied: HashSet<HostId>,
    received: HashSet<HostId>,
    proposals: Vec<Proposal>,
}

impl Search<'_> {
    /// Tries to empty `src`; on success records the proposal, else undoes the trial.
    fn try_empty(&mut self, src: HostId) -> Result<(), RebalanceError> {
        let h = host(&self.work, src)?;
        let mut tasks: Vec<(f64, TaskId)> = h
            .tasks
            .iter()
            .map(|&t| Ok((size(&self.work, t, h)?, t)))
            .collect::<Result<_, AllocError>>()?;
        if tasks.is_empty() || self.moves + tasks.len() > self.budget {
            return Ok(());
        }
        tasks.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut done: Vec<PlannedMove> = Vec::with_capacity(tasks.len());
        // The devices each task held on `src`, to put it back exactly.
        let mut grants = Vec::with_capacity(tasks.len());
        for &(_, t) in &tasks {
            let target = {
                let emptied = &self.emptied;
                let worse = self.worsens_spread(t)?;
                self.work.move_target(t, false, &|h: HostId| {
                    h == src || emptied.contains(&h) || worse(h)
                })?
            };
            let Some(to) = target else { break };
            grants.push(self.work.task_view(t)?.gpus.clone());
            self.work.move_task(t, to)?;
            done.push(PlannedMove {
                task: t,
                from: src,
                to,
            });
        }
        if done.len() < tasks.len() {
            // Undo, last first: each task goes back onto the very devices it left, so
            // the scratch copy is as before (a share put back best-fit could take the
            // device a whole-GPU task needs).
            for (m, grant) in done.iter().zip(&grants).rev() {
                self.work.undo_move(m.task, m.from, grant)?;
            }
            return Ok(());
        }
        self.moves += done.len();
        self.emptied.insert(src);
        self.received.extend(done.iter().map(|m| m.to));
        let cost = cost(self.original, &done)?;
        self.proposals.push(Proposal {
            purpose: Purpose::EmptyHost { host: src },
            moves: done,
            gain: Gain {
                hosts_freed: 1,
                spread: 0,
            },
            cost,
        });
        Ok(())
    }

    /// For a task of a job that spreads over a fault-domain level: which destinations
    /// would widen its spread (a domain already holding at least as many of its tasks as
    /// the task's own, which it leaves). Emptying never undoes what respreading did.
    fn worsens_spread(&self, t: TaskId) -> Result<impl Fn(HostId) -> bool + '_, AllocError> {
        let w = &self.work;
        let rec = w.tasks.get(&t).ok_or(AllocError::UnknownTask(t))?;
        let rule = match rec.constraints.prefs.spread {
            Some(level) => {
                let l = level.index();
                let jr = w.jobs.get(&rec.job);
                let own = host(w, rec.host)?.domains[l];
                let count = move |d| jr.map_or(0, |j| j.in_domain(l, d));
                Some((l, own, count(own), count))
            }
            None => None,
        };
        Ok(move |h: HostId| {
            let Some((l, own, own_count, count)) = rule else {
                return false;
            };
            w.hosts
                .get(h.0 as usize)
                .is_some_and(|x| x.domains[l] != own && count(x.domains[l]) >= own_count)
        })
    }

    /// Entitlement hosts that may be emptied, least loaded first.
    fn sources(&self, machine_type: Option<&str>) -> Vec<HostId> {
        let mut v: Vec<(f64, usize, HostId)> = self
            .work
            .host_records()
            .filter(|(_, h)| {
                matches!(h.owner, Owner::Entitlement(_))
                    && h.state == HostState::Up
                    && !h.tasks.is_empty()
                    && machine_type.is_none_or(|m| self.work.names.resolve(h.machine_type) == m)
            })
            .map(|(id, h)| (load(h), h.tasks.len(), id))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        v.into_iter().map(|(_, _, id)| id).collect()
    }

    fn empty_hosts(
        &mut self,
        max_sources: usize,
        want: Option<usize>,
        machine_type: Option<&str>,
    ) -> Result<(), RebalanceError> {
        for src in self.sources(machine_type).into_iter().take(max_sources) {
            if self.moves >= self.budget || want.is_some_and(|n| self.emptied.len() >= n) {
                break;
            }
            if !self.received.contains(&src) {
                self.try_empty(src)?;
            }
        }
        Ok(())
    }

    /// One task at a time from a job's fullest domain to its emptiest, while the gap
    /// is two or more.
    fn respread(&mut self) -> Result<(), RebalanceError> {
        let mut jobs: Vec<(JobId, FaultLevel)> = self
            .work
            .tasks
            .values()
            .filter_map(|t| t.constraints.prefs.spread.map(|l| (t.job, l)))
            .collect();
        jobs.sort_unstable();
        jobs.dedup();
        for (job, level) in jobs {
            while self.moves < self.budget {
                let Some(m) = self.respread_one(job, level)? else {
                    break;
                };
                let cost = cost(&self.work, std::slice::from_ref(&m))?;
                self.work.move_task(m.task, m.to)?;
                self.moves += 1;
                self.received.insert(m.to);
                self.proposals.push(Proposal {
                    purpose: Purpose::Respread { job, level },
                    moves: vec![m],
                    gain: Gain {
                        hosts_freed: 0,
                        spread: 1,
                    },
                    cost,
                });
            }
        }
        Ok(())
    }

    /// A move that narrows `job`'s gap between fullest and emptiest domain at `level`.
    fn respread_one(
        &self,
        job: JobId,
        level: FaultLevel,
    ) -> Result<Option<PlannedMove>, RebalanceError> {
        let w = &self.work;
        let l = level.index();
        let Some(jr) = w.jobs.get(&job) else {
            return Ok(None);
        };
        // Every domain at the level counts, touched or not.
        let mut counts: Vec<(u32, crate::fleet::Name)> = w.domains_at[l]
            .iter()
            .map(|&d| (jr.in_domain(l, d), d))
            .collect();
        counts.sort_unstable();
        let (Some(&(low, _)), Some(&(high, full))) = (counts.first(), counts.last()) else {
            return Ok(None);
        };
        if high < low + 2 {
            return Ok(None);
        }
        let mut from_full: Vec<TaskId> = w
            .tasks
            .iter()
            .filter(|(_, t)| t.job == job)
            .filter(|(_, t)| {
                w.hosts
                    .get(t.host.0 as usize)
                    .is_some_and(|h| h.domains[l] == full)
            })
            .map(|(&id, _)| id)
            .collect();
        from_full.sort_unstable();
        for t in from_full {
            let from = w.task_view(t)?.host;
            let hosts = &w.hosts;
            // Only domains below the gap's top minus one take it, so the gap narrows.
            let target = w.move_target(t, true, &|h: HostId| {
                hosts
                    .get(h.0 as usize)
                    .is_none_or(|x| jr.in_domain(l, x.domains[l]) + 1 >= high)
            })?;
            if let Some(to) = target {
                return Ok(Some(PlannedMove { task: t, from, to }));
            }
        }
        Ok(None)
    }
}

impl Solver for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    fn plan(&self, alloc: &Allocator, goal: &Goal, budget: usize) -> Result<Plan, RebalanceError> {
        let mut s = Search {
            work: alloc.clone(),
            original: alloc,
            budget,
            moves: 0,
            emptied: HashSet::new(),
            received: HashSet::new(),
            proposals: Vec::new(),
        };
        match goal {
            Goal::Compact => {
                s.empty_hosts(self.max_sources, None, None)?;
                if self.respread {
                    s.respread()?;
                }
            }
            Goal::FreeHosts {
                count,
                machine_type,
            } => s.empty_hosts(self.max_sources, Some(*count), machine_type.as_deref())?,
        }
        Ok(Plan {
            proposals: s.proposals,
        })
    }
}

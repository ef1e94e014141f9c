//! The MIP solver of the ReBalancer (feature `lp`). See [`Mip`].

use std::collections::{HashMap, HashSet};

use microlp::{ComparisonOp, LinearExpr, OptimizationDirection, Problem, SolveOptions, Variable};

use super::{Cost, Gain, Goal, Plan, PlannedMove, Proposal, Purpose, RebalanceError, Solver};
use crate::allocator::{AllocError, Allocator};
use crate::entitlement::EntitlementId;
use crate::fleet::{Host, HostId, HostState, Owner};
use crate::request::{JobId, TaskId};
use crate::resources::{DIMS, GPU_MILLI, GpuDemand, dims};

/// A mixed-integer solver for emptying hosts (feature `lp`): which hosts to empty, and
/// where each of their tasks goes, decided together rather than one host at a time.
///
/// [`Greedy`](super::Greedy) empties the least-loaded host it can, task by task, best
/// fit; a task that takes the last good slot on a host may leave no room for a task of
/// the next host. [`Mip`] looks at the [`Mip::max_sources`] least-loaded entitlement
/// hosts at once (the *sources*) and the [`Mip::max_destinations`] other hosts of each
/// entitlement with the most free room (the *destinations*; sources never receive).
///
/// # The model
///
/// Binary `y_s` (source `s` is emptied) and `x_td` (task `t` of a source moves to
/// destination `d`), the latter only for pairs [`Allocator::move_task`] would accept
/// now, each move on its own (every hard requirement, the job's limits, and room).
///
/// ```text
/// maximise   sum_s (1 - n_s / (B + 1)) y_s                 n_s tasks on s, B the budget
/// subject to sum_d x_td = y_s(t)                           every task t of a source
///            sum_t a_tk x_td <= free_dk                    every destination d, dimension k
///            sum_t whole_t x_td <= idle_d                  idle devices of d
///            sum_t (whole_t + [share_t > 500]) x_td <= big_d   devices of d with > 500 free
///            sum_{t of job j} x_td <= k_j - on_host_j(d)   jobs with at most k_j per host
///            sum_s n_s y_s <= B                            the move budget
///            sum_s y_s <= count                            with Goal::FreeHosts
/// ```
///
/// The weights make one more emptied host worth more than any number of saved moves
/// (fewer moves break ties). Rows that cannot bind (the candidates' total fits anyway)
/// are left out. The device rows are necessary conditions, not sufficient ones: which
/// device a share lands on is not modelled, nor are the per-rack limits. So the plan is
/// then **replayed** through [`Allocator::move_task`] on a scratch copy, source by
/// source, whole-device tasks first. A move the allocator refuses is *repaired* once: the
/// task goes to the best other host of its entitlement by its own policy (never a host
/// being emptied), as Greedy would place it; if there is none, that source is dropped
/// whole and its moves undone. Repairs and drops are counted in [`MipRound`], never
/// hidden. The result is therefore always a valid plan by the allocator's own rules.
///
/// Mip only empties hosts; it does not even out spread (use [`Greedy`](super::Greedy)
/// for that), and [`Goal::Compact`] means "empty as many as the budget allows".
///
/// # Why microlp, and its limits
///
/// `microlp` is a pure-Rust simplex with branch and bound: no system solver, no C or C++
/// toolchain, so this builds wherever `cargo` does, CI included. The model is built on
/// microlp directly rather than through `good_lp` (which the [`pack`](crate::pack) LP
/// uses) because microlp's *node limit* is deterministic and `good_lp` 1.15 passes only
/// a wall-clock limit: a plan that depended on the machine's speed would break this
/// crate's promise that the same input gives the same output. The search starts from the
/// empty plan (a feasible point), so at the node limit there is always an answer, the best
/// found; [`MipRound::proven_optimal`] says whether it was proven best.
///
/// Instance size is the limit: about `sources x tasks per source x destinations` binary
/// variables (32 x 10 x 256 is about 80,000). microlp's simplex is single-threaded and
/// its branch and bound is plain: on a fragmented 400-host fleet a round took 18 ms to
/// 2.5 s (release build, default limits; most of it at the node limit, see the
/// `rebalance_solvers` example), where Greedy takes under a millisecond. For tens of
/// thousands of candidate moves a round, a stronger solver (HiGHS through `good_lp`)
/// would be the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mip {
    /// Least-loaded entitlement hosts considered for emptying per round.
    pub max_sources: usize,
    /// Destinations per entitlement, at most: the hosts with the most free room.
    pub max_destinations: usize,
    /// Branch-and-bound nodes per round, at most (deterministic, unlike a time limit).
    pub node_limit: u64,
}

impl Default for Mip {
    fn default() -> Self {
        Mip {
            max_sources: 32,
            max_destinations: 256,
            node_limit: 2_000,
        }
    }
}

impl Mip {
    /// Sets the sources considered per round.
    pub fn with_max_sources(mut self, n: usize) -> Self {
        self.max_sources = n;
        self
    }
    /// Sets the destinations per entitlement.
    pub fn with_max_destinations(mut self, n: usize) -> Self {
        self.max_destinations = n;
        self
    }
    /// Sets the branch-and-bound node limit per round.
    pub fn with_node_limit(mut self, nodes: u64) -> Self {
        self.node_limit = nodes;
        self
    }
}

/// What a [`Mip`] round found, besides its plan.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MipRound {
    /// The proposals (one per emptied host), valid move by move in order.
    pub plan: Plan,
    /// Sources in the model (every task of each has at least one destination).
    pub sources: usize,
    /// Sources left out: a task of theirs had no destination.
    pub unmovable: usize,
    /// Destinations in the model, over all entitlements.
    pub destinations: usize,
    /// Variables in the model.
    pub variables: usize,
    /// Constraints in the model.
    pub constraints: usize,
    /// Sources the solver chose to empty.
    pub chosen: usize,
    /// Chosen sources dropped in the replay (a move refused and not repairable).
    pub dropped: usize,
    /// Moves refused in the replay and repaired by a best-fit placement.
    pub repaired: usize,
    /// Whether the solver proved its choice best for the model (else the node limit hit).
    pub proven_optimal: bool,
    /// Branch-and-bound nodes solved.
    pub nodes: u64,
}

/// Why a [`Mip`] round failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MipError {
    /// The allocator refused a read or a move on the scratch copy (a bug there or here).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// microlp failed (its own words); the model's size helps reproduce it.
    #[error(
        "mip: the solver failed on {variables} variables and {constraints} constraints: {message}"
    )]
    Solver {
        /// What the solver said.
        message: String,
        /// Variables in the model.
        variables: usize,
        /// Constraints in the model.
        constraints: usize,
    },
    /// The solver's answer breaks the model it was given (a bug in the solver or here).
    #[error("mip: the solver's answer breaks the model: {what}")]
    BadSolution {
        /// What is wrong.
        what: String,
    },
    /// Summing the cost of a proposal overflowed (a bug: the tasks shared one host).
    #[error("mip: the cost of a proposal overflowed (a bug)")]
    CostOverflow,
}

/// A source host in the model.
struct Source {
    host: HostId,
    /// Its tasks, each with its candidate destinations (indexes into `dests`).
    tasks: Vec<(TaskId, Vec<usize>)>,
}

/// A host's fullest dimension as a fraction of its capacity (as Greedy ranks sources).
fn load(h: &Host) -> f64 {
    let cap = dims(&h.capacity, h.gpus.count() as u64 * u64::from(GPU_MILLI));
    let free = dims(&h.free, h.gpus.free_milli());
    (0..DIMS)
        .filter(|&k| cap[k] > 0)
        .map(|k| ratio(cap[k] - free[k].min(cap[k]), cap[k]))
        .fold(0.0, f64::max)
}

/// Free room over every dimension, as fractions of capacity summed.
fn room(h: &Host) -> f64 {
    let cap = dims(&h.capacity, h.gpus.count() as u64 * u64::from(GPU_MILLI));
    let free = dims(&h.free, h.gpus.free_milli());
    (0..DIMS)
        .filter(|&k| cap[k] > 0)
        .map(|k| ratio(free[k], cap[k]))
        .sum()
}

#[allow(clippy::cast_precision_loss)] // ratios of resource amounts; f64 is ample
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

#[allow(clippy::cast_precision_loss)] // counts and amounts far below 2^52
fn float(x: u64) -> f64 {
    x as f64
}

/// Devices a task holds against every other whole-device task or big share.
fn exclusive_devices(gpu: GpuDemand) -> u64 {
    match gpu {
        GpuDemand::None => 0,
        GpuDemand::Shared(m) => u64::from(m > GPU_MILLI / 2),
        GpuDemand::Whole(n) => u64::from(n),
    }
}

fn host(alloc: &Allocator, id: HostId) -> Result<&Host, AllocError> {
    alloc
        .hosts
        .get(id.0 as usize)
        .ok_or(AllocError::UnknownHost(id))
}

/// Builds the model, row by row, counting what it adds.
struct Model {
    problem: Problem,
    vars: Vec<Variable>,
    constraints: usize,
}

impl Model {
    fn binary(&mut self, objective: f64) -> Variable {
        let v = self.problem.add_binary_var(objective);
        self.vars.push(v);
        v
    }

    /// `sum terms <= rhs`, only if the terms can exceed it (else the row cannot bind).
    fn at_most(&mut self, terms: &[(Variable, f64)], rhs: f64) {
        if terms.iter().map(|t| t.1).sum::<f64>() > rhs {
            self.problem
                .add_constraint(terms.iter().copied(), ComparisonOp::Le, rhs);
            self.constraints += 1;
        }
    }
}

impl Mip {
    /// Sources, least loaded first: up entitlement hosts with tasks, of `machine_type`
    /// if given, with no more tasks than the budget.
    fn rank_sources(
        alloc: &Allocator,
        machine_type: Option<&str>,
        budget: usize,
    ) -> Vec<(HostId, EntitlementId)> {
        let mut v: Vec<(f64, usize, HostId, EntitlementId)> = alloc
            .host_records()
            .filter_map(|(id, h)| match h.owner {
                Owner::Entitlement(e)
                    if h.state == HostState::Up
                        && !h.tasks.is_empty()
                        && h.tasks.len() <= budget
                        && machine_type
                            .is_none_or(|m| alloc.names.resolve(h.machine_type) == m) =>
                {
                    Some((load(h), h.tasks.len(), id, e))
                }
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        v.into_iter().map(|(_, _, id, e)| (id, e)).collect()
    }

    /// One round: the model, its solution, the replay, the proposals. Pure and
    /// deterministic.
    pub fn solve(
        &self,
        alloc: &Allocator,
        goal: &Goal,
        budget: usize,
    ) -> Result<MipRound, MipError> {
        let (want, machine_type) = match goal {
            Goal::Compact => (None, None),
            Goal::FreeHosts {
                count,
                machine_type,
            } => (Some(*count), machine_type.as_deref()),
        };
        let mut round = MipRound::default();
        if budget == 0 || want == Some(0) {
            round.proven_optimal = true;
            return Ok(round);
        }
        let ranked: Vec<(HostId, EntitlementId)> = Self::rank_sources(alloc, machine_type, budget)
            .into_iter()
            .take(self.max_sources)
            .collect();
        let is_source: HashSet<HostId> = ranked.iter().map(|&(h, _)| h).collect();

        // Destinations per entitlement: its other up hosts, most free room first.
        let mut dests: Vec<HostId> = Vec::new();
        let mut dests_of: HashMap<EntitlementId, std::ops::Range<usize>> = HashMap::new();
        for &(_, ent) in &ranked {
            if dests_of.contains_key(&ent) {
                continue;
            }
            let mut mine: Vec<(f64, HostId)> = alloc
                .entitlement(ent)?
                .hosts
                .iter()
                .filter(|h| !is_source.contains(h))
                .map(|&id| Ok((host(alloc, id)?, id)))
                .collect::<Result<Vec<_>, AllocError>>()?
                .into_iter()
                .filter(|(h, _)| h.state == HostState::Up)
                .map(|(h, id)| (room(h), id))
                .collect();
            mine.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let start = dests.len();
            dests.extend(
                mine.into_iter()
                    .take(self.max_destinations)
                    .map(|(_, id)| id),
            );
            // Sources receive too, as long as they are not emptied themselves.
            dests.extend(ranked.iter().filter(|r| r.1 == ent).map(|r| r.0));
            dests_of.insert(ent, start..dests.len());
        }

        // Candidate pairs: moves the allocator would accept now, one at a time.
        let mut sources: Vec<Source> = Vec::new();
        'sources: for &(src, ent) in &ranked {
            let range = dests_of.get(&ent).cloned().unwrap_or(0..0);
            let mut tasks = Vec::new();
            for &t in &host(alloc, src)?.tasks {
                let mut cands = Vec::new();
                for di in range.clone() {
                    if dests[di] != src && alloc.move_refusal(t, dests[di])?.is_none() {
                        cands.push(di);
                    }
                }
                if cands.is_empty() {
                    round.unmovable += 1;
                    continue 'sources;
                }
                tasks.push((t, cands));
            }
            sources.push(Source { host: src, tasks });
        }
        round.sources = sources.len();
        round.destinations = dests.len();
        if sources.is_empty() {
            round.proven_optimal = true;
            return Ok(round);
        }

        let mut m = Model {
            problem: Problem::new(OptimizationDirection::Maximize),
            vars: Vec::new(),
            constraints: 0,
        };
        let epsilon = 1.0 / (float(budget as u64) + 1.0);
        // y per source; x per (source, task, candidate), in the same nesting.
        let mut y: Vec<Variable> = Vec::with_capacity(sources.len());
        let mut x: Vec<Vec<Vec<Variable>>> = Vec::with_capacity(sources.len());
        // Per destination: (variable, task) of every candidate move onto it.
        let mut onto: Vec<Vec<(Variable, TaskId)>> = vec![Vec::new(); dests.len()];
        for s in &sources {
            let ys = m.binary(1.0 - float(s.tasks.len() as u64) * epsilon);
            y.push(ys);
            let mut xs = Vec::with_capacity(s.tasks.len());
            for (t, cands) in &s.tasks {
                let vars: Vec<Variable> = cands
                    .iter()
                    .map(|&di| {
                        let v = m.binary(0.0);
                        onto[di].push((v, *t));
                        v
                    })
                    .collect();
                // Every task goes somewhere exactly when its host is emptied.
                let mut link = LinearExpr::empty();
                for &v in &vars {
                    link.add(v, 1.0);
                }
                link.add(ys, -1.0);
                m.problem.add_constraint(link, ComparisonOp::Eq, 0.0);
                m.constraints += 1;
                xs.push(vars);
            }
            x.push(xs);
        }
        let y_of: HashMap<HostId, Variable> = sources
            .iter()
            .map(|s| s.host)
            .zip(y.iter().copied())
            .collect();
        for (di, moves) in onto.iter().enumerate() {
            if moves.is_empty() {
                continue;
            }
            if let Some(&yd) = y_of.get(&dests[di]) {
                // A host being emptied takes nothing: sum x + n y <= n.
                let n = float(moves.len() as u64);
                let mut row: Vec<(Variable, f64)> = moves.iter().map(|&(v, _)| (v, 1.0)).collect();
                row.push((yd, n));
                m.problem.add_constraint(row, ComparisonOp::Le, n);
                m.constraints += 1;
            }
            let h = host(alloc, dests[di])?;
            let free = dims(&h.free, h.gpus.free_milli());
            let demand = |t: TaskId| -> Result<_, AllocError> { Ok(alloc.task_view(t)?.demand) };
            for (k, &room) in free.iter().enumerate() {
                let mut terms = Vec::new();
                for &(v, t) in moves {
                    let d = demand(t)?;
                    let a = dims(&d.resources, d.gpu.milli())[k];
                    if a > 0 {
                        // Each candidate fits on its own, so `room` is positive here.
                        terms.push((v, ratio(a, room)));
                    }
                }
                m.at_most(&terms, 1.0);
            }
            let big = h.gpus.free().iter().filter(|&&f| f > GPU_MILLI / 2).count() as u64;
            let mut whole = Vec::new();
            let mut exclusive = Vec::new();
            for &(v, t) in moves {
                let g = demand(t)?.gpu;
                if let GpuDemand::Whole(n) = g {
                    whole.push((v, f64::from(n)));
                }
                let e = exclusive_devices(g);
                if e > 0 {
                    exclusive.push((v, float(e)));
                }
            }
            m.at_most(&whole, float(h.gpus.idle() as u64));
            m.at_most(&exclusive, float(big));
            // Per-host limits of the jobs moving here.
            let mut per_job: HashMap<JobId, (u32, Vec<(Variable, f64)>)> = HashMap::new();
            for &(v, t) in moves {
                let rec = alloc.tasks.get(&t).ok_or(AllocError::UnknownTask(t))?;
                if let Some(k) = rec.constraints.prefs.max_per_host {
                    let e = per_job.entry(rec.job).or_insert((k, Vec::new()));
                    e.0 = e.0.max(k);
                    e.1.push((v, 1.0));
                }
            }
            let mut jobs: Vec<_> = per_job.into_iter().collect();
            jobs.sort_by_key(|(j, _)| *j);
            for (job, (k, terms)) in jobs {
                let on = alloc.jobs.get(&job).map_or(0, |jr| jr.on_host(dests[di]));
                m.at_most(&terms, f64::from(k.saturating_sub(on)));
            }
        }
        let sizes: Vec<(Variable, f64)> = sources
            .iter()
            .zip(&y)
            .map(|(s, &v)| (v, float(s.tasks.len() as u64)))
            .collect();
        m.at_most(&sizes, float(budget as u64));
        if let Some(count) = want {
            let ones: Vec<(Variable, f64)> = y.iter().map(|&v| (v, 1.0)).collect();
            m.at_most(&ones, float(count as u64));
        }
        round.variables = m.vars.len();
        round.constraints = m.constraints;

        let mut options = SolveOptions::default();
        options.node_limit = Some(self.node_limit);
        // Start from a feasible point (at worst the empty plan), so the search always
        // has an answer and never returns less than best fit within the model.
        let start = self.warm_start(alloc, &sources, &dests, &y, &x, budget, want)?;
        let mut values: Vec<(Variable, f64)> = m.vars.iter().map(|&v| (v, 0.0)).collect();
        for v in start {
            if let Some(slot) = values.get_mut(v.idx()) {
                slot.1 = 1.0;
            }
        }
        options.warm_start = Some(values);
        let solver_error = |message: String| MipError::Solver {
            message,
            variables: round.variables,
            constraints: round.constraints,
        };
        let outcome = m
            .problem
            .solve_with(options)
            .map_err(|e| solver_error(format!("{e:?}")))?;
        let stats = outcome.stats();
        round.nodes = stats.nodes_solved;
        round.proven_optimal = outcome.is_optimal();
        let solution = outcome
            .solution()
            .ok_or_else(|| solver_error("no solution, not even the empty plan".to_owned()))?;
        let on = |v: Variable| solution.var_value(v) > 0.5;

        // The chosen sources with their moves, in the model's order (least loaded first).
        let mut chosen: Vec<(usize, Vec<PlannedMove>)> = Vec::new();
        for (si, s) in sources.iter().enumerate() {
            if !on(y[si]) {
                continue;
            }
            let mut moves = Vec::with_capacity(s.tasks.len());
            for ((t, cands), vars) in s.tasks.iter().zip(&x[si]) {
                let picked: Vec<usize> = cands
                    .iter()
                    .zip(vars)
                    .filter(|(_, v)| on(**v))
                    .map(|(&di, _)| di)
                    .collect();
                let [di] = picked[..] else {
                    return Err(MipError::BadSolution {
                        what: format!(
                            "task {t:?} of emptied host {:?} has {} destinations",
                            s.host,
                            picked.len()
                        ),
                    });
                };
                moves.push(PlannedMove {
                    task: *t,
                    from: s.host,
                    to: dests[di],
                });
            }
            chosen.push((si, moves));
        }
        round.chosen = chosen.len();
        let planned: usize = chosen.iter().map(|(_, m)| m.len()).sum();
        if planned > budget {
            return Err(MipError::BadSolution {
                what: format!("{planned} moves with a budget of {budget}"),
            });
        }

        // Replay on a scratch copy: the allocator has the last word on every move.
        let mut work = alloc.clone();
        let emptying: HashSet<HostId> = chosen.iter().map(|(si, _)| sources[*si].host).collect();
        for (si, mut moves) in chosen {
            let src = sources[si].host;
            // Whole devices and big shares first, while the devices they need are idle.
            let mut keyed = Vec::with_capacity(moves.len());
            for mv in moves.drain(..) {
                let g = alloc.task_view(mv.task)?.demand.gpu;
                keyed.push(((exclusive_devices(g), g.milli()), mv));
            }
            keyed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.task.cmp(&b.1.task)));
            moves.extend(keyed.into_iter().map(|(_, mv)| mv));
            let mut done: Vec<PlannedMove> = Vec::with_capacity(moves.len());
            let mut repaired = 0;
            for mv in moves {
                let to = match work.move_task(mv.task, mv.to) {
                    Ok(_) => mv.to,
                    Err(AllocError::MoveRefused { .. }) => {
                        let exclude = |h: HostId| emptying.contains(&h);
                        match work.move_target(mv.task, false, &exclude)? {
                            Some(to) => {
                                work.move_task(mv.task, to)?;
                                repaired += 1;
                                to
                            }
                            None => break,
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                done.push(PlannedMove { to, ..mv });
            }
            if done.len() < sources[si].tasks.len() {
                // Undo, last first: each task goes back to the host that held it.
                for mv in done.iter().rev() {
                    work.move_task(mv.task, mv.from)?;
                }
                round.dropped += 1;
                continue;
            }
            round.repaired += repaired;
            let cost = cost(alloc, &done)?;
            round.plan.proposals.push(Proposal {
                purpose: Purpose::EmptyHost { host: src },
                moves: done,
                gain: Gain {
                    hosts_freed: 1,
                    spread: 0,
                },
                cost,
            });
        }
        Ok(round)
    }
}

/// What is left of a destination in the model's terms, for the warm start.
struct Residual {
    free: [u64; DIMS],
    capacity: [u64; DIMS],
    idle: u64,
    big: u64,
    /// Tasks with a per-host limit planned onto it, per job.
    limited: HashMap<JobId, u32>,
    /// A source the warm start empties (it then takes nothing).
    emptied: bool,
    /// A source that took a task (it is then not emptied).
    received: bool,
}

impl Mip {
    /// A feasible point of the model: sources in rank order, each emptied if every task
    /// finds a best-fit candidate within the model's rows (resources, devices, per-host
    /// limits) and the budget. Returns the variables set to 1.
    #[allow(clippy::too_many_arguments)]
    fn warm_start(
        &self,
        alloc: &Allocator,
        sources: &[Source],
        dests: &[HostId],
        y: &[Variable],
        x: &[Vec<Vec<Variable>>],
        budget: usize,
        want: Option<usize>,
    ) -> Result<Vec<Variable>, AllocError> {
        let mut res: Vec<Residual> = Vec::with_capacity(dests.len());
        for &d in dests {
            let h = host(alloc, d)?;
            res.push(Residual {
                free: dims(&h.free, h.gpus.free_milli()),
                capacity: dims(&h.capacity, h.gpus.count() as u64 * u64::from(GPU_MILLI)),
                idle: h.gpus.idle() as u64,
                big: h.gpus.free().iter().filter(|&&f| f > GPU_MILLI / 2).count() as u64,
                limited: HashMap::new(),
                emptied: false,
                received: false,
            });
        }
        let index: HashMap<HostId, usize> =
            dests.iter().enumerate().map(|(i, &d)| (d, i)).collect();
        let (mut on, mut moves, mut emptied) = (Vec::new(), 0usize, 0usize);
        for (si, s) in sources.iter().enumerate() {
            if moves + s.tasks.len() > budget || want.is_some_and(|n| emptied >= n) {
                continue;
            }
            if index.get(&s.host).is_some_and(|&i| res[i].received) {
                continue;
            }
            let mut order: Vec<(usize, (u64, u64, u64))> = Vec::with_capacity(s.tasks.len());
            for (ti, (t, _)) in s.tasks.iter().enumerate() {
                let d = alloc.task_view(*t)?.demand;
                order.push((
                    ti,
                    (
                        exclusive_devices(d.gpu),
                        d.gpu.milli(),
                        d.resources.cpu_milli,
                    ),
                ));
            }
            order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            // Trial assignments: (task index, candidate index, destination index).
            let mut trial: Vec<(usize, usize, usize)> = Vec::new();
            let mut ok = true;
            for (ti, _) in order {
                let (t, cands) = &s.tasks[ti];
                let rec = alloc.tasks.get(t).ok_or(AllocError::UnknownTask(*t))?;
                let d = rec.demand;
                let a = dims(&d.resources, d.gpu.milli());
                let whole = match d.gpu {
                    GpuDemand::Whole(n) => u64::from(n),
                    _ => 0,
                };
                let excl = exclusive_devices(d.gpu);
                let limit = rec.constraints.prefs.max_per_host;
                let mut best: Option<(f64, usize, usize)> = None;
                for (ci, &di) in cands.iter().enumerate() {
                    let r = &res[di];
                    let on_host = alloc
                        .jobs
                        .get(&rec.job)
                        .map_or(0, |jr| jr.on_host(dests[di]));
                    let planned = r.limited.get(&rec.job).copied().unwrap_or(0);
                    let fits = !r.emptied
                        && dests[di] != s.host
                        && (0..DIMS).all(|k| a[k] <= r.free[k])
                        && whole <= r.idle
                        && excl <= r.big
                        && limit.is_none_or(|k| on_host + planned < k);
                    if !fits {
                        continue;
                    }
                    let left: f64 = (0..DIMS)
                        .filter(|&k| r.capacity[k] > 0)
                        .map(|k| ratio(r.free[k] - a[k], r.capacity[k]))
                        .sum();
                    if best.is_none_or(|b| left < b.0) {
                        best = Some((left, ci, di));
                    }
                }
                let Some((_, ci, di)) = best else {
                    ok = false;
                    break;
                };
                let r = &mut res[di];
                // `fits` checked every amount against what is left.
                for (f, x) in r.free.iter_mut().zip(a) {
                    *f -= x;
                }
                r.idle -= whole;
                r.big -= excl;
                if limit.is_some() {
                    *r.limited.entry(rec.job).or_default() += 1;
                }
                trial.push((ti, ci, di));
            }
            if !ok {
                // Give the trial back.
                for &(ti, _, di) in &trial {
                    let rec = alloc
                        .tasks
                        .get(&s.tasks[ti].0)
                        .ok_or(AllocError::UnknownTask(s.tasks[ti].0))?;
                    let d = rec.demand;
                    let a = dims(&d.resources, d.gpu.milli());
                    let r = &mut res[di];
                    for (f, x) in r.free.iter_mut().zip(a) {
                        *f += x;
                    }
                    r.idle += match d.gpu {
                        GpuDemand::Whole(n) => u64::from(n),
                        _ => 0,
                    };
                    r.big += exclusive_devices(d.gpu);
                    if rec.constraints.prefs.max_per_host.is_some()
                        && let Some(n) = r.limited.get_mut(&rec.job)
                    {
                        *n -= 1;
                    }
                }
                continue;
            }
            if let Some(&i) = index.get(&s.host) {
                res[i].emptied = true;
            }
            for &(ti, ci, di) in &trial {
                res[di].received = true;
                on.push(x[si][ti][ci]);
            }
            on.push(y[si]);
            moves += s.tasks.len();
            emptied += 1;
        }
        Ok(on)
    }
}

/// The cost of `moves`, read on the allocator before they are made.
fn cost(alloc: &Allocator, moves: &[PlannedMove]) -> Result<Cost, MipError> {
    let mut c = Cost::default();
    for m in moves {
        let v = alloc.task_view(m.task)?;
        c.moves = c.moves.checked_add(1).ok_or(MipError::CostOverflow)?;
        c.resources = c
            .resources
            .checked_add(&v.demand.resources)
            .ok_or(MipError::CostOverflow)?;
        c.gpu_milli = c
            .gpu_milli
            .checked_add(v.demand.gpu.milli())
            .ok_or(MipError::CostOverflow)?;
    }
    Ok(c)
}

impl Solver for Mip {
    fn name(&self) -> &'static str {
        "mip"
    }

    fn plan(&self, alloc: &Allocator, goal: &Goal, budget: usize) -> Result<Plan, RebalanceError> {
        Ok(self.solve(alloc, goal, budget)?.plan)
    }
}

//! The ReBalancer: keeps the fleet packed while jobs come and go, by proposing task
//! moves the allocator's quick placements left undone.
//!
//! Twine's allocator decides fast and best-effort; a separate ReBalancer keeps
//! improving placement (§3.2 of the paper). Each round, a [`Solver`] looks at the
//! allocator's state and proposes [`Proposal`]s, each with its [`Gain`] (hosts freed,
//! spread evened out) and its [`Cost`] (tasks moved, what they hold). A host emptied by
//! a proposal goes back to the free pool (a machine move out of its entitlement),
//! where another entitlement can take it or the profiles side can switch it.
//!
//! Moves are destructive (a task is stopped and started elsewhere), so every round has a
//! move budget and the ReBalancer holds a token bucket over time: the rate limit on
//! destructive operations of Twine's reliability principles (§4). Nothing moves without
//! the application's consent: [`ReBalancer::execute`] asks for it per proposal (the
//! TaskControl protocol gives that answer, see [`crate::taskcontrol`]), and every move is
//! applied through [`Allocator::move_task`], which checks it against every rule a
//! placement obeys, whoever proposed it.
//!
//! ```
//! use twine_sched::*;
//! use twine_sched::rebalance::{Goal, ReBalancer, RebalanceConfig};
//!
//! let mut alloc = Allocator::new(AllocatorConfig::default());
//! for _ in 0..3 {
//!     alloc.add_host(&HostSpec::new(Resources::new(10_000, 10_000)))?;
//! }
//! let ent = alloc.add_entitlement("batch", Quota::Units(Resources::new(100_000, 100_000)))?;
//! let demand = |cpu| Demand { resources: Resources::new(cpu, 1_000), gpu: GpuDemand::None };
//! // Three big tasks take three hosts; three small ones fill the gaps; the big ones end.
//! let big = Request::new(ent, JobId(1))
//!     .allocate(TaskId(1), demand(7_000)).allocate(TaskId(2), demand(7_000)).allocate(TaskId(3), demand(7_000));
//! alloc.apply(&big)?;
//! let small = Request::new(ent, JobId(2))
//!     .allocate(TaskId(4), demand(3_000)).allocate(TaskId(5), demand(3_000)).allocate(TaskId(6), demand(3_000));
//! alloc.apply(&small)?;
//! alloc.apply(&Request::new(ent, JobId(1)).free(TaskId(1)).free(TaskId(2)).free(TaskId(3)))?;
//! assert_eq!(alloc.entitlement_hosts(ent)?.len(), 3);
//!
//! let mut rebalancer = ReBalancer::greedy(RebalanceConfig::default())?;
//! let round = rebalancer.round(&mut alloc, &Goal::Compact, 0)?;
//! assert_eq!(round.moved.len(), 2);
//! assert_eq!(alloc.entitlement_hosts(ent)?.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The default solver is [`Greedy`], a local search (empty the least-loaded hosts into
//! the others, best fit under each task's own rules; even out spread one task at a
//! time). Another solver plugs in through the [`Solver`] trait.

pub(crate) mod budget;
mod greedy;
#[cfg(feature = "lp")]
mod mip;

use std::fmt;

use crate::allocator::{AllocError, Allocator, Moved};
use crate::fleet::{FaultLevel, HostId};
use crate::request::{JobId, TaskId};
use crate::resources::Resources;

pub use budget::RateLimit;
use budget::TokenBucket;
pub use greedy::Greedy;
#[cfg(feature = "lp")]
pub use mip::{Mip, MipError, MipRound};

/// What a round aims at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Goal {
    /// Empty lightly loaded hosts into the others, so fewer hosts are in use; then even
    /// out the spread of jobs that ask for it.
    Compact,
    /// Empty `count` hosts (of `machine_type`, if given) so they go back to the free pool,
    /// for example to switch their host profile.
    FreeHosts {
        /// How many hosts.
        count: usize,
        /// Only hosts of this machine type.
        machine_type: Option<String>,
    },
}

/// Why a proposal is worth making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// The moves empty `host`, which then leaves its entitlement for the free pool.
    EmptyHost {
        /// The host emptied.
        host: HostId,
    },
    /// The move evens out the job's spread over the fault domains at `level`.
    Respread {
        /// The job.
        job: JobId,
        /// The level its spread preference names.
        level: FaultLevel,
    },
}

/// One task to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedMove {
    /// The task.
    pub task: TaskId,
    /// Where it runs.
    pub from: HostId,
    /// Where it goes.
    pub to: HostId,
}

/// What a proposal gains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gain {
    /// Hosts that go back to the free pool.
    pub hosts_freed: u32,
    /// How much the gap between a job's fullest and emptiest fault domain shrinks.
    pub spread: u32,
}

/// What a proposal costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Tasks moved (each one stopped and started elsewhere).
    pub moves: u32,
    /// What the moved tasks hold, summed.
    pub resources: Resources,
    /// GPU thousandths the moved tasks hold, summed.
    pub gpu_milli: u64,
}

/// A set of moves that only makes sense whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Why.
    pub purpose: Purpose,
    /// The moves, in the order they must be made (each fits when made in order).
    pub moves: Vec<PlannedMove>,
    /// What it gains.
    pub gain: Gain,
    /// What it costs.
    pub cost: Cost,
}

/// A solver's answer for one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Proposals in the order to carry them out; their moves never exceed the budget.
    pub proposals: Vec<Proposal>,
}

impl Plan {
    /// Moves over all proposals.
    pub fn moves(&self) -> usize {
        self.proposals.iter().map(|p| p.moves.len()).sum()
    }
}

/// A rebalancing algorithm: reads the allocator, proposes moves. It must not propose
/// more than `budget` moves; each proposal's moves must be valid when made in order
/// after the proposals before it (the ReBalancer checks both).
pub trait Solver: fmt::Debug + Send {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// Proposals toward `goal` with at most `budget` moves.
    fn plan(&self, alloc: &Allocator, goal: &Goal, budget: usize) -> Result<Plan, RebalanceError>;
}

/// A round's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebalanceConfig {
    /// Moves per round, at most.
    pub move_budget: usize,
    /// Moves over time, at most (a token bucket); `None` for no limit beyond the budget.
    pub rate_limit: Option<RateLimit>,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            move_budget: 100,
            rate_limit: None,
        }
    }
}

impl RebalanceConfig {
    /// Sets the moves per round.
    pub fn with_move_budget(mut self, moves: usize) -> Self {
        self.move_budget = moves;
        self
    }
    /// Sets the rate limit.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }
}

/// What went wrong in a round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RebalanceError {
    /// The allocator refused a call (an internal error there is a bug).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A setting that cannot work.
    #[error("rebalance config: {field}: {problem} (got {value})")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Time went backwards between two calls.
    #[error("time went backwards: {now_ms} ms after {last_ms} ms")]
    TimeWentBack {
        /// The time of this call.
        now_ms: u64,
        /// The time of the call before.
        last_ms: u64,
    },
    /// A solver proposed more moves than its budget: a bug in the solver.
    #[error(
        "solver {solver} proposed {moves} moves with a budget of {budget} (a bug in the solver)"
    )]
    OverBudget {
        /// The solver.
        solver: &'static str,
        /// Moves proposed.
        moves: usize,
        /// The budget it had.
        budget: usize,
    },
    /// A move was made with no token left: a bug in the ReBalancer's own accounting.
    #[error("the rate limit was overdrawn (a bug in twine-sched)")]
    RateLimitOverdrawn,
    /// The [`Mip`] solver failed.
    #[cfg(feature = "lp")]
    #[error(transparent)]
    Mip(#[from] MipError),
    /// A solver failed.
    #[error("solver {solver}: {message}")]
    Solver {
        /// The solver.
        solver: &'static str,
        /// What it said.
        message: String,
    },
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Proposals the solver made.
    pub proposed: usize,
    /// Proposals carried out whole.
    pub carried_out: usize,
    /// Proposals skipped: refused by consent, or no longer valid by the time they came up.
    pub skipped: usize,
    /// The moves made, in order.
    pub moved: Vec<Moved>,
    /// Hosts that went back to the free pool.
    pub hosts_released: Vec<HostId>,
    /// Hosts that joined an entitlement from the free pool (respreading only).
    pub hosts_joined: Vec<HostId>,
    /// The budget the round had (the smaller of the move budget and the rate limit).
    pub budget: usize,
}

/// Runs rounds of a [`Solver`] under a move budget and a rate limit.
#[derive(Debug)]
pub struct ReBalancer {
    config: RebalanceConfig,
    solver: Box<dyn Solver>,
    bucket: Option<TokenBucket>,
    last_ms: Option<u64>,
}

impl ReBalancer {
    /// A ReBalancer with `solver`; the config is checked here.
    pub fn new(
        config: RebalanceConfig,
        solver: Box<dyn Solver>,
    ) -> Result<ReBalancer, RebalanceError> {
        let bucket = config.rate_limit.map(TokenBucket::new).transpose()?;
        Ok(ReBalancer {
            config,
            solver,
            bucket,
            last_ms: None,
        })
    }

    /// A ReBalancer with the default [`Greedy`] solver.
    pub fn greedy(config: RebalanceConfig) -> Result<ReBalancer, RebalanceError> {
        ReBalancer::new(config, Box::new(Greedy::default()))
    }

    /// The solver's name.
    pub fn solver(&self) -> &'static str {
        self.solver.name()
    }

    fn tick(&mut self, now_ms: u64) -> Result<(), RebalanceError> {
        if let Some(last_ms) = self.last_ms
            && now_ms < last_ms
        {
            return Err(RebalanceError::TimeWentBack { now_ms, last_ms });
        }
        self.last_ms = Some(now_ms);
        if let Some(b) = &mut self.bucket {
            b.refill(now_ms);
        }
        Ok(())
    }

    /// Moves a round may make at `now_ms`: the move budget, or fewer if the rate limit
    /// has fewer tokens left.
    pub fn budget(&mut self, now_ms: u64) -> Result<usize, RebalanceError> {
        self.tick(now_ms)?;
        Ok(self.bucket.as_ref().map_or(self.config.move_budget, |b| {
            b.whole().min(self.config.move_budget)
        }))
    }

    /// The solver's proposals at `now_ms`, within the budget; nothing changes.
    pub fn propose(
        &mut self,
        alloc: &Allocator,
        goal: &Goal,
        now_ms: u64,
    ) -> Result<Plan, RebalanceError> {
        let budget = self.budget(now_ms)?;
        if budget == 0 {
            return Ok(Plan::default());
        }
        let plan = self.solver.plan(alloc, goal, budget)?;
        if plan.moves() > budget {
            return Err(RebalanceError::OverBudget {
                solver: self.solver.name(),
                moves: plan.moves(),
                budget,
            });
        }
        Ok(plan)
    }

    /// Carries out `plan` at `now_ms`. A proposal goes ahead only if `consent` accepts
    /// every one of its moves (asked before any is made) and the rate limit still has a
    /// token for each; else it is skipped whole. A move the allocator refuses (the
    /// fleet changed since the plan) ends its proposal; moves already made stay, as
    /// each was valid on its own.
    pub fn execute(
        &mut self,
        alloc: &mut Allocator,
        plan: &Plan,
        now_ms: u64,
        mut consent: impl FnMut(&Proposal) -> bool,
    ) -> Result<Round, RebalanceError> {
        let budget = self.budget(now_ms)?;
        let mut round = Round {
            proposed: plan.proposals.len(),
            budget,
            ..Round::default()
        };
        let mut left = budget;
        for proposal in &plan.proposals {
            if proposal.moves.len() > left || !consent(proposal) {
                round.skipped += 1;
                continue;
            }
            let mut whole = true;
            for m in &proposal.moves {
                match alloc.move_task(m.task, m.to) {
                    Ok(r) => {
                        left -= 1;
                        if let Some(b) = &mut self.bucket
                            && !b.take_one()
                        {
                            return Err(RebalanceError::RateLimitOverdrawn);
                        }
                        round.moved.push(r.moved);
                        round.hosts_released.extend(r.host_released);
                        round.hosts_joined.extend(r.host_joined);
                    }
                    Err(AllocError::MoveRefused { .. } | AllocError::UnknownTask(_)) => {
                        whole = false;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if whole {
                round.carried_out += 1;
            } else {
                round.skipped += 1;
            }
        }
        Ok(round)
    }

    /// Proposes and carries out every proposal (for callers without a TaskControl step).
    pub fn round(
        &mut self,
        alloc: &mut Allocator,
        goal: &Goal,
        now_ms: u64,
    ) -> Result<Round, RebalanceError> {
        let plan = self.propose(alloc, goal, now_ms)?;
        self.execute(alloc, &plan, now_ms, |_| true)
    }
}

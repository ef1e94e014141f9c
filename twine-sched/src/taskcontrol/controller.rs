//! A reference TaskController for a sharded, replicated service (the paper's ZooKeeper
//! and cache examples): no shard ever has two replicas down at once, and tasks that lead a
//! shard go last, so a release costs each shard at most one leader failover.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::protocol::{OpId, OpKind, Operation, Outcome, TaskControlRequest, TaskControlResponse};
use crate::request::TaskId;

/// A shard, by the service's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Where a shard's replicas live. A task may hold replicas of many shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Its id.
    pub id: ShardId,
    /// The tasks holding a replica, each once.
    pub replicas: Vec<TaskId>,
    /// The task holding the leader replica; one of `replicas`.
    pub leader: TaskId,
}

/// Why a shard layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardLayoutError {
    /// Two shards have this id.
    #[error("{0} is listed twice")]
    DuplicateShard(ShardId),
    /// A shard lists a task twice among its replicas.
    #[error("{shard} lists {task} twice among its replicas")]
    ReplicaTwice {
        /// The shard.
        shard: ShardId,
        /// The task.
        task: TaskId,
    },
    /// A shard's leader is not one of its replicas.
    #[error("{shard}: leader {leader} is not one of its replicas")]
    LeaderNotReplica {
        /// The shard.
        shard: ShardId,
        /// The leader it names.
        leader: TaskId,
    },
}

/// The application's side of TaskControl for a replicated service.
///
/// It counts a task *down* if it is listed unhealthy in the request, if an operation this
/// controller acked on it has not been reported ended (started or still waiting for the
/// scheduler's budget), or if a Stop on it completed (its replicas are gone until an
/// operation on it completes again). It learns ends from each request's `completed`; an
/// operation it acked that shows up again as pending is one whose ack never landed (a
/// refused response), and it forgets that ack.
///
/// [`process`](Self::process) acks pending operations in request order, each only if its
/// task is already down or no shard it holds a replica of has a replica down; each ack makes
/// its task down for the rest of the pass. A task that leads any shard is a *leader task*.
/// Operations on leader tasks are considered only after those on the other tasks, and only
/// when no operation on a non-leader task is acked and outstanding and every pending one
/// left is *blocked by failures*: a replica of one of its shards is down for a reason the
/// controller did not cause (unhealthy, force-stopped, or stopped), so no amount of waiting
/// for its own acks would let it go. Leader tasks are acked with the same one-down rule.
///
/// Without failures this never lets two replicas of a shard be down at once (failures can
/// take a shard there by themselves; acking a task that is already down never adds to it),
/// and in a full restart every leader task starts after every other task has completed.
/// The shard layout is fixed: a service that re-replicates builds a new controller.
#[derive(Debug, Clone)]
pub struct ReplicatedService {
    shards: Vec<Shard>,
    /// For each task, the shards (indices into `shards`) it holds a replica of.
    holds: BTreeMap<TaskId, Vec<usize>>,
    leaders: BTreeSet<TaskId>,
    /// Operations acked and not reported ended, with their task.
    acked: BTreeMap<OpId, TaskId>,
    /// Tasks whose Stop completed.
    gone: BTreeSet<TaskId>,
}

impl ReplicatedService {
    /// A controller for this layout, with nothing acked.
    ///
    /// Refused if two shards share an id, a shard lists a replica twice, or a shard's
    /// leader is not one of its replicas.
    pub fn new(shards: Vec<Shard>) -> Result<Self, ShardLayoutError> {
        let mut ids = BTreeSet::new();
        let mut holds: BTreeMap<TaskId, Vec<usize>> = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            if !ids.insert(shard.id) {
                return Err(ShardLayoutError::DuplicateShard(shard.id));
            }
            let mut seen = BTreeSet::new();
            for &task in &shard.replicas {
                if !seen.insert(task) {
                    return Err(ShardLayoutError::ReplicaTwice {
                        shard: shard.id,
                        task,
                    });
                }
                holds.entry(task).or_default().push(i);
            }
            if !seen.contains(&shard.leader) {
                return Err(ShardLayoutError::LeaderNotReplica {
                    shard: shard.id,
                    leader: shard.leader,
                });
            }
        }
        let leaders = shards.iter().map(|s| s.leader).collect();
        Ok(ReplicatedService {
            shards,
            holds,
            leaders,
            acked: BTreeMap::new(),
            gone: BTreeSet::new(),
        })
    }

    /// Whether `task` leads any shard.
    pub fn is_leader(&self, task: TaskId) -> bool {
        self.leaders.contains(&task)
    }

    /// Answers a request: learns what ended, then acks what the rules above allow.
    pub fn process(&mut self, req: &TaskControlRequest) -> TaskControlResponse {
        for c in &req.completed {
            self.acked.remove(&c.op.id);
            if c.outcome == Outcome::Completed {
                if c.op.kind == OpKind::Stop {
                    self.gone.insert(c.op.task);
                } else {
                    self.gone.remove(&c.op.task);
                }
            }
        }
        for op in &req.request {
            self.acked.remove(&op.id);
        }
        let failed: BTreeSet<TaskId> = req.unhealthy.iter().chain(&self.gone).copied().collect();
        let failed_per_shard = self.down_per_shard(&failed);
        let mut down: BTreeSet<TaskId> =
            failed.iter().chain(self.acked.values()).copied().collect();
        let mut down_per_shard = self.down_per_shard(&down);

        let (leader_ops, follower_ops): (Vec<Operation>, Vec<Operation>) =
            req.request.iter().partition(|op| self.is_leader(op.task));
        let mut ack = Vec::new();
        let mut left_behind = Vec::new();
        for op in follower_ops {
            if self.may_go(op.task, &down, &down_per_shard) {
                self.take_down(op.task, &mut down, &mut down_per_shard);
                self.acked.insert(op.id, op.task);
                ack.push(op.id);
            } else {
                left_behind.push(op.task);
            }
        }
        let followers_busy = self.acked.values().any(|&t| !self.is_leader(t));
        let followers_blocked = left_behind.iter().all(|&t| {
            self.holds
                .get(&t)
                .is_some_and(|shards| shards.iter().any(|&s| failed_per_shard[s] > 0))
        });
        if !followers_busy && followers_blocked {
            for op in leader_ops {
                if self.may_go(op.task, &down, &down_per_shard) {
                    self.take_down(op.task, &mut down, &mut down_per_shard);
                    self.acked.insert(op.id, op.task);
                    ack.push(op.id);
                }
            }
        }
        TaskControlResponse {
            sequence: req.sequence,
            ack,
        }
    }

    /// How many replicas of each shard are on `down` tasks.
    fn down_per_shard(&self, down: &BTreeSet<TaskId>) -> Vec<usize> {
        let mut per_shard = vec![0; self.shards.len()];
        for task in down {
            for &s in self.holds.get(task).map_or(&[][..], Vec::as_slice) {
                per_shard[s] += 1;
            }
        }
        per_shard
    }

    fn may_go(&self, task: TaskId, down: &BTreeSet<TaskId>, per_shard: &[usize]) -> bool {
        down.contains(&task)
            || self
                .holds
                .get(&task)
                .is_none_or(|shards| shards.iter().all(|&s| per_shard[s] == 0))
    }

    fn take_down(&self, task: TaskId, down: &mut BTreeSet<TaskId>, per_shard: &mut [usize]) {
        if down.insert(task) {
            for &s in self.holds.get(&task).map_or(&[][..], Vec::as_slice) {
                per_shard[s] += 1;
            }
        }
    }
}

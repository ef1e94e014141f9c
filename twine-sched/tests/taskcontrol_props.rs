//! TaskControl against a shadow model the test holds itself, and the reference controller
//! against the test's own record of what is down. The case-by-case tests are the unit
//! tests in `src/taskcontrol/tests.rs`.
//!
//! The shadow keeps its own records of every operation, unhealthy and force-stopped task,
//! open notice and unreported end, updated from the calls the test makes, never read back
//! from the machine. After each call it checks the machine's answer against the protocol's
//! rules:
//!
//! 1. an operation starts only if it was acked (and not withdrawn), and never while a
//!    notice whose deadline has passed still covers its task;
//! 2. each tick force-stops exactly the remaining running tasks of every notice due;
//! 3. a start never takes the job over its budget unless its task was unavailable already,
//!    and waiting operations start in ack order as soon as the budget allows;
//! 4. sequence numbers strictly increase, and every end is reported exactly once;
//! 5. the same calls give the same answers;
//! 6. a refused call is refused with the error the shadow expects, and changes nothing.
//!
//! Cases: 256 by default, `PROPTEST_CASES` for more.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use twine_sched::taskcontrol::{
    Forced, JobPolicy, Notice, NoticeId, OpId, OpKind, Operation, Outcome, ReplicatedService,
    Shard, ShardId, Started, TaskControl, TaskControlError, TaskControlRequest,
    TaskControlResponse, Tick,
};
use twine_sched::{HostId, JobId, TaskId};

// ---- the machine against a shadow model ----

#[derive(Debug, Clone)]
enum Action {
    Offer {
        task: u64,
        kind: u8,
        reuse: Option<Index>,
    },
    Request,
    /// A round trip: a request, then a response to it (as `Respond`).
    Exchange {
        mode: u8,
        picks: Vec<Index>,
        dt: u64,
    },
    /// `seq`: 0..8 the latest request, 8 the one before, 9 one not issued yet. `mode`: 0..7
    /// acks among the ops awaiting approval, 7..9 among any id ever offered and a bogus
    /// one, 9 a valid ack list with its first id repeated.
    Respond {
        seq: u8,
        mode: u8,
        picks: Vec<Index>,
        dt: u64,
        back: bool,
    },
    /// `any`: pick among every id ever offered, else among started ops.
    Complete {
        pick: Index,
        any: bool,
        dt: u64,
        back: bool,
    },
    Health {
        task: u64,
        unhealthy: bool,
    },
    Notice {
        tasks: Vec<u64>,
        in_ms: i64,
        reuse: Option<Index>,
    },
    Tick {
        dt: u64,
        back: bool,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let back = || proptest::bool::weighted(0.05);
    prop_oneof![
        4 => (0u64..6, 0u8..3, proptest::option::weighted(0.1, any::<Index>()))
            .prop_map(|(task, kind, reuse)| Action::Offer { task, kind, reuse }),
        1 => Just(Action::Request),
        5 => (0u8..10, prop::collection::vec(any::<Index>(), 0..4), 0u64..40)
            .prop_map(|(mode, picks, dt)| Action::Exchange { mode, picks, dt }),
        2 => (0u8..10, 0u8..10, prop::collection::vec(any::<Index>(), 0..4), 0u64..40, back())
            .prop_map(|(seq, mode, picks, dt, back)| Action::Respond { seq, mode, picks, dt, back }),
        5 => (any::<Index>(), proptest::bool::weighted(0.1), 0u64..40, back())
            .prop_map(|(pick, any, dt, back)| Action::Complete { pick, any, dt, back }),
        1 => (0u64..6, any::<bool>()).prop_map(|(task, unhealthy)| Action::Health { task, unhealthy }),
        1 => (prop::collection::vec(0u64..6, 0..4), -20i64..200, proptest::option::weighted(0.15, any::<Index>()))
            .prop_map(|(tasks, in_ms, reuse)| Action::Notice { tasks, in_ms, reuse }),
        2 => (0u64..60, back()).prop_map(|(dt, back)| Action::Tick { dt, back }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SState {
    Offered,
    /// Acked, waiting; the number orders acks.
    Acked(u64),
    /// In flight; `admitted` if it was not on an already unavailable task.
    Started {
        admitted: bool,
    },
}

#[derive(Debug, Clone)]
struct SOp {
    op: Operation,
    state: SState,
}

#[derive(Debug, Clone)]
struct SNotice {
    notice: Notice,
    remaining: BTreeSet<TaskId>,
}

/// The test's own view of the job.
#[derive(Debug, Clone, Default)]
struct Shadow {
    max: usize,
    last_ms: u64,
    ops: BTreeMap<OpId, SOp>,
    acks: u64,
    unhealthy: BTreeSet<TaskId>,
    down: BTreeSet<TaskId>,
    notices: BTreeMap<NoticeId, SNotice>,
    unreported: Vec<(Operation, Outcome)>,
    issued: u64,
    awaiting: Option<(u64, BTreeSet<OpId>)>,
    ended: usize,
    reported: usize,
}

impl Shadow {
    fn unavailable(&self) -> usize {
        let started = self
            .ops
            .values()
            .filter(|o| matches!(o.state, SState::Started { .. }))
            .map(|o| o.op.task);
        let all: BTreeSet<TaskId> = started
            .chain(self.unhealthy.iter().copied())
            .chain(self.down.iter().copied())
            .collect();
        all.len()
    }

    fn exempt(&self, task: TaskId) -> bool {
        self.unhealthy.contains(&task) || self.down.contains(&task)
    }

    fn covered(&self, task: TaskId, now: u64) -> bool {
        self.notices
            .values()
            .any(|n| n.notice.deadline_ms <= now && n.remaining.contains(&task))
    }

    fn startable(&self, o: &SOp, now: u64) -> bool {
        !self.covered(o.op.task, now) && (self.exempt(o.op.task) || self.unavailable() < self.max)
    }

    fn check_time(&self, now: u64) -> Result<(), TaskControlError> {
        if now < self.last_ms {
            return Err(TaskControlError::TimeWentBack {
                now_ms: now,
                last_ms: self.last_ms,
            });
        }
        Ok(())
    }

    /// Invariants 1 and 3 on each start, in the order the machine gave them, then that
    /// nothing startable was left waiting.
    fn started(&mut self, started: &[Started], now: u64) -> Result<(), TestCaseError> {
        for s in started {
            let o = self.ops.get(&s.op.id).cloned();
            let Some(o) = o else {
                return Err(TestCaseError::fail(format!(
                    "{:?} started but is not outstanding",
                    s.op
                )));
            };
            prop_assert_eq!(o.op, s.op);
            let SState::Acked(k) = o.state else {
                return Err(TestCaseError::fail(format!(
                    "{:?} started from {:?}",
                    s.op, o.state
                )));
            };
            prop_assert!(
                !self.covered(o.op.task, now),
                "{:?} started past a covering deadline",
                s.op
            );
            for e in self.ops.values() {
                if matches!(e.state, SState::Acked(j) if j < k) {
                    prop_assert!(
                        !self.startable(e, now),
                        "{:?} started before {:?}, acked earlier",
                        s.op,
                        e.op
                    );
                }
            }
            let exempt = self.exempt(o.op.task);
            prop_assert!(
                exempt || self.unavailable() < self.max,
                "{:?} started over the budget",
                s.op
            );
            if let Some(x) = self.ops.get_mut(&s.op.id) {
                x.state = SState::Started { admitted: !exempt };
            }
            if matches!(o.op.kind, OpKind::Move { .. } | OpKind::Stop) {
                for n in self.notices.values_mut() {
                    n.remaining.remove(&o.op.task);
                }
            }
            let admitted = self
                .ops
                .values()
                .filter(|o| o.state == SState::Started { admitted: true })
                .count();
            prop_assert!(
                admitted <= self.max,
                "{} admitted ops in flight, budget {}",
                admitted,
                self.max
            );
        }
        for e in self.ops.values() {
            if matches!(e.state, SState::Acked(_)) {
                prop_assert!(
                    !self.startable(e, now),
                    "{:?} left waiting with budget free",
                    e.op
                );
            }
        }
        Ok(())
    }

    /// Invariant 2: fires the due notices and returns the forced stops they must give.
    fn fire(&mut self, now: u64) -> Vec<Forced> {
        let mut due: Vec<SNotice> = Vec::new();
        self.notices.retain(|_, n| {
            let keep = n.notice.deadline_ms > now;
            if !keep {
                due.push(n.clone());
            }
            keep
        });
        due.sort_by_key(|n| (n.notice.deadline_ms, n.notice.id));
        let mut forced = Vec::new();
        for n in due {
            for &task in &n.remaining {
                if self.down.contains(&task) {
                    continue;
                }
                let op = self.ops.values().find(|o| o.op.task == task).map(|o| o.op);
                if let Some(op) = op {
                    self.ops.remove(&op.id);
                    self.unreported.push((
                        op,
                        Outcome::Withdrawn {
                            notice: n.notice.id,
                        },
                    ));
                    self.ended += 1;
                }
                self.down.insert(task);
                forced.push(Forced {
                    task,
                    notice: n.notice.id,
                });
            }
        }
        forced
    }
}

struct Run {
    tc: TaskControl,
    sh: Shadow,
    next_op: u64,
    next_notice: u64,
    ever_ops: Vec<OpId>,
    ever_notices: Vec<NoticeId>,
    transcript: Vec<String>,
}

/// Invariant 6: the call was refused as expected and changed nothing.
fn refused<T: std::fmt::Debug>(
    tc: &mut TaskControl,
    want: TaskControlError,
    call: impl FnOnce(&mut TaskControl) -> Result<T, TaskControlError>,
) -> Result<String, TestCaseError> {
    let before = format!("{tc:?}");
    let got = call(tc);
    prop_assert_eq!(got.as_ref().err(), Some(&want), "answer {:?}", got);
    prop_assert_eq!(format!("{tc:?}"), before, "state changed on {}", want);
    Ok(want.to_string())
}

fn time(now: u64, dt: u64, back: bool) -> u64 {
    if back && now > 0 { now - 1 } else { now + dt }
}

impl Run {
    fn new(max: u32) -> Self {
        Run {
            tc: TaskControl::new(
                JobId(1),
                JobPolicy {
                    max_unavailable: max,
                },
            ),
            sh: Shadow {
                max: usize::try_from(max).expect("a u32 fits a usize"),
                ..Shadow::default()
            },
            next_op: 100,
            next_notice: 1,
            ever_ops: Vec::new(),
            ever_notices: Vec::new(),
            transcript: Vec::new(),
        }
    }

    fn step(&mut self, a: &Action) -> Result<(), TestCaseError> {
        let line = match a {
            Action::Offer { task, kind, reuse } => self.offer(*task, *kind, reuse.as_ref())?,
            Action::Request => self.request()?,
            Action::Exchange { mode, picks, dt } => {
                let req = self.request()?;
                let now = self.sh.last_ms + dt;
                format!("{req}\n{}", self.respond(0, *mode, picks, now)?)
            }
            Action::Respond {
                seq,
                mode,
                picks,
                dt,
                back,
            } => {
                let now = time(self.sh.last_ms, *dt, *back);
                self.respond(*seq, *mode, picks, now)?
            }
            Action::Complete {
                pick,
                any,
                dt,
                back,
            } => {
                let now = time(self.sh.last_ms, *dt, *back);
                self.complete(pick, *any, now)?
            }
            Action::Health { task, unhealthy } => {
                self.tc.set_unhealthy(TaskId(*task), *unhealthy);
                if *unhealthy {
                    self.sh.unhealthy.insert(TaskId(*task));
                } else {
                    self.sh.unhealthy.remove(&TaskId(*task));
                }
                String::new()
            }
            Action::Notice {
                tasks,
                in_ms,
                reuse,
            } => self.notice(tasks, *in_ms, reuse.as_ref())?,
            Action::Tick { dt, back } => {
                let now = time(self.sh.last_ms, *dt, *back);
                self.tick(now)?
            }
        };
        self.transcript.push(line);
        Ok(())
    }

    fn offer(
        &mut self,
        task: u64,
        kind: u8,
        reuse: Option<&Index>,
    ) -> Result<String, TestCaseError> {
        let id = match reuse {
            Some(i) if !self.ever_ops.is_empty() => *i.get(&self.ever_ops),
            _ => {
                self.next_op += 1;
                OpId(self.next_op)
            }
        };
        let kind = match kind {
            0 => OpKind::Restart,
            1 => OpKind::Move { to: HostId(7) },
            _ => OpKind::Stop,
        };
        let op = Operation {
            id,
            task: TaskId(task),
            kind,
        };
        let busy = self
            .sh
            .ops
            .values()
            .find(|o| o.op.task == op.task)
            .map(|o| o.op.id);
        if self.sh.ops.contains_key(&id) || self.sh.unreported.iter().any(|(o, _)| o.id == id) {
            return refused(&mut self.tc, TaskControlError::DuplicateOp(id), |tc| {
                tc.offer(op)
            });
        }
        if let Some(other) = busy {
            let want = TaskControlError::TaskBusy {
                task: op.task,
                op: other,
            };
            return refused(&mut self.tc, want, |tc| tc.offer(op));
        }
        let got = self.tc.offer(op);
        prop_assert!(got.is_ok(), "{:?} refused: {:?}", op, got);
        self.sh.ops.insert(
            id,
            SOp {
                op,
                state: SState::Offered,
            },
        );
        self.ever_ops.push(id);
        Ok(format!("{got:?}"))
    }

    /// Invariant 4 and the request's contents against the shadow.
    fn request(&mut self) -> Result<String, TestCaseError> {
        let req = self.tc.request();
        prop_assert!(
            req.sequence > self.sh.issued,
            "sequence {} after {}",
            req.sequence,
            self.sh.issued
        );
        self.sh.issued = req.sequence;
        let ends: Vec<(Operation, Outcome)> =
            req.completed.iter().map(|c| (c.op, c.outcome)).collect();
        prop_assert_eq!(&ends, &self.sh.unreported, "ends reported");
        self.sh.reported += ends.len();
        self.sh.unreported.clear();
        let offered: Vec<Operation> = self
            .sh
            .ops
            .values()
            .filter(|o| o.state == SState::Offered)
            .map(|o| o.op)
            .collect();
        prop_assert_eq!(&req.request, &offered);
        let unhealthy: BTreeSet<TaskId> = self.sh.unhealthy.union(&self.sh.down).copied().collect();
        prop_assert_eq!(
            req.unhealthy.iter().copied().collect::<BTreeSet<_>>(),
            unhealthy
        );
        prop_assert_eq!(
            req.unhealthy.len(),
            req.unhealthy.iter().collect::<BTreeSet<_>>().len()
        );
        let notices: Vec<&Notice> = self.sh.notices.values().map(|n| &n.notice).collect();
        prop_assert_eq!(req.advance_notices.iter().collect::<Vec<_>>(), notices);
        self.sh.awaiting = Some((req.sequence, req.request.iter().map(|o| o.id).collect()));
        Ok(format!("{req:?}"))
    }

    fn expect_respond(&self, resp: &TaskControlResponse, now: u64) -> Result<(), TaskControlError> {
        self.sh.check_time(now)?;
        let listed = match &self.sh.awaiting {
            Some((s, listed)) if *s == resp.sequence => listed,
            other => {
                return Err(TaskControlError::UnexpectedSequence {
                    got: resp.sequence,
                    awaited: other.as_ref().map(|(s, _)| *s),
                });
            }
        };
        let mut seen = BTreeSet::new();
        for &id in &resp.ack {
            if !seen.insert(id) {
                return Err(TaskControlError::DuplicateAck(id));
            }
            match self.sh.ops.get(&id).map(|o| o.state) {
                None if listed.contains(&id) => return Err(TaskControlError::WithdrawnOp(id)),
                None => return Err(TaskControlError::UnknownOp(id)),
                Some(SState::Acked(_)) => return Err(TaskControlError::AlreadyAcked(id)),
                Some(SState::Started { .. }) => return Err(TaskControlError::AlreadyStarted(id)),
                Some(SState::Offered) if !listed.contains(&id) => {
                    return Err(TaskControlError::NotInRequest {
                        op: id,
                        sequence: resp.sequence,
                    });
                }
                Some(SState::Offered) => {}
            }
        }
        Ok(())
    }

    fn respond(
        &mut self,
        seq: u8,
        mode: u8,
        picks: &[Index],
        now: u64,
    ) -> Result<String, TestCaseError> {
        let sequence = match seq {
            0..8 => self.sh.issued,
            8 => self.sh.issued.saturating_sub(1),
            _ => self.sh.issued + 1,
        };
        let valid: Vec<OpId> = match &self.sh.awaiting {
            Some((_, listed)) => listed
                .iter()
                .filter(|id| {
                    self.sh
                        .ops
                        .get(id)
                        .is_some_and(|o| o.state == SState::Offered)
                })
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let mut ack: Vec<OpId> = Vec::new();
        if mode < 7 || mode == 9 {
            if !valid.is_empty() {
                for p in picks {
                    let id = *p.get(&valid);
                    if !ack.contains(&id) {
                        ack.push(id);
                    }
                }
            }
            if mode == 9 && !ack.is_empty() {
                ack.push(ack[0]);
            }
        } else {
            let mut any = self.ever_ops.clone();
            any.push(OpId(9_999));
            ack = picks.iter().map(|p| *p.get(&any)).collect();
        }
        let resp = TaskControlResponse { sequence, ack };
        if let Err(want) = self.expect_respond(&resp, now) {
            return refused(&mut self.tc, want, |tc| tc.respond(resp, now));
        }
        let got = self.tc.respond(resp.clone(), now);
        prop_assert!(got.is_ok(), "{:?} refused: {:?}", resp, got);
        let started = got.unwrap_or_default();
        self.sh.last_ms = now;
        self.sh.awaiting = None;
        for id in &resp.ack {
            self.sh.acks += 1;
            if let Some(o) = self.sh.ops.get_mut(id) {
                o.state = SState::Acked(self.sh.acks);
            }
        }
        self.sh.started(&started, now)?;
        Ok(format!("{started:?}"))
    }

    fn complete(&mut self, pick: &Index, any: bool, now: u64) -> Result<String, TestCaseError> {
        let in_flight: Vec<OpId> = self
            .sh
            .ops
            .values()
            .filter(|o| matches!(o.state, SState::Started { .. }))
            .map(|o| o.op.id)
            .collect();
        let id = if any || in_flight.is_empty() {
            match self.ever_ops.is_empty() {
                true => OpId(9_999),
                false => *pick.get(&self.ever_ops),
            }
        } else {
            *pick.get(&in_flight)
        };
        let want = self
            .sh
            .check_time(now)
            .and_then(|()| match self.sh.ops.get(&id) {
                None => Err(TaskControlError::UnknownOp(id)),
                Some(o) if !matches!(o.state, SState::Started { .. }) => {
                    Err(TaskControlError::NotStarted(id))
                }
                Some(_) => Ok(()),
            });
        if let Err(want) = want {
            return refused(&mut self.tc, want, |tc| tc.complete(id, now));
        }
        let got = self.tc.complete(id, now);
        prop_assert!(got.is_ok(), "completing {} refused: {:?}", id, got);
        let started = got.unwrap_or_default();
        self.sh.last_ms = now;
        if let Some(o) = self.sh.ops.remove(&id) {
            self.sh.down.remove(&o.op.task);
            if o.op.kind == OpKind::Stop {
                self.sh.unhealthy.remove(&o.op.task);
            }
            self.sh.unreported.push((o.op, Outcome::Completed));
            self.sh.ended += 1;
        }
        self.sh.started(&started, now)?;
        Ok(format!("{started:?}"))
    }

    fn notice(
        &mut self,
        tasks: &[u64],
        in_ms: i64,
        reuse: Option<&Index>,
    ) -> Result<String, TestCaseError> {
        let id = match reuse {
            Some(i) if !self.ever_notices.is_empty() => *i.get(&self.ever_notices),
            _ => {
                self.next_notice += 1;
                NoticeId(self.next_notice)
            }
        };
        let deadline_ms = self.sh.last_ms.saturating_add_signed(in_ms);
        let notice = Notice {
            id,
            tasks: tasks.iter().map(|&t| TaskId(t)).collect(),
            deadline_ms,
            reason: "power row maintenance".to_owned(),
        };
        if self.sh.notices.contains_key(&id) {
            return refused(&mut self.tc, TaskControlError::DuplicateNotice(id), |tc| {
                tc.notice(notice)
            });
        }
        let mut remaining = BTreeSet::new();
        for &task in &notice.tasks {
            if !remaining.insert(task) {
                let want = TaskControlError::NoticeTaskTwice { notice: id, task };
                return refused(&mut self.tc, want, |tc| tc.notice(notice));
            }
        }
        for o in self.sh.ops.values() {
            if matches!(o.state, SState::Started { .. })
                && matches!(o.op.kind, OpKind::Move { .. } | OpKind::Stop)
            {
                remaining.remove(&o.op.task);
            }
        }
        let got = self.tc.notice(notice.clone());
        prop_assert!(got.is_ok(), "{:?} refused: {:?}", notice, got);
        self.sh.notices.insert(id, SNotice { notice, remaining });
        self.ever_notices.push(id);
        Ok(format!("{got:?}"))
    }

    fn tick(&mut self, now: u64) -> Result<String, TestCaseError> {
        if let Err(want) = self.sh.check_time(now) {
            return refused(&mut self.tc, want, |tc| tc.tick(now));
        }
        let got = self.tc.tick(now);
        prop_assert!(got.is_ok(), "tick at {} refused: {:?}", now, got);
        let Tick { forced, started } = got.unwrap_or_default();
        self.sh.last_ms = now;
        let want = self.sh.fire(now);
        prop_assert_eq!(&forced, &want, "forced stops at {}", now);
        self.sh.started(&started, now)?;
        Ok(format!("{forced:?} {started:?}"))
    }

    /// A last request reports every end not yet reported.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.request()?;
        prop_assert_eq!(self.sh.ended, self.sh.reported);
        Ok(())
    }
}

/// Mostly a budget that lets work through; sometimes none at all.
fn budget() -> impl Strategy<Value = u32> {
    prop_oneof![1 => Just(0u32), 6 => 1u32..4]
}

fn run(max: u32, actions: &[Action]) -> Result<Vec<String>, TestCaseError> {
    let mut r = Run::new(max);
    for a in actions {
        r.step(a)?;
    }
    r.finish()?;
    Ok(r.transcript)
}

proptest! {
    #[test]
    fn machine_keeps_the_protocol_against_a_shadow(
        max in budget(),
        actions in prop::collection::vec(action(), 1..120),
    ) {
        run(max, &actions)?;
    }

    #[test]
    fn same_calls_same_answers(
        max in budget(),
        actions in prop::collection::vec(action(), 1..80),
    ) {
        prop_assert_eq!(run(max, &actions)?, run(max, &actions)?);
    }
}

// ---- the reference controller against the test's record of what is down ----

#[derive(Debug, Clone)]
struct Layout {
    tasks: u64,
    shards: Vec<Shard>,
}

fn layout() -> impl Strategy<Value = Layout> {
    (2u64..12)
        .prop_flat_map(|n| {
            let k = 3.min(usize::try_from(n).expect("a few tasks"));
            let shard = (
                proptest::sample::subsequence((0..n).collect::<Vec<u64>>(), 1..=k),
                any::<Index>(),
            );
            (Just(n), prop::collection::vec(shard, 1..20))
        })
        .prop_map(|(tasks, shards)| Layout {
            tasks,
            shards: shards
                .into_iter()
                .zip(0u64..)
                .map(|((replicas, leader), id)| Shard {
                    id: ShardId(id),
                    leader: TaskId(*leader.get(&replicas)),
                    replicas: replicas.into_iter().map(TaskId).collect(),
                })
                .collect(),
        })
}

/// Failures: (step, task, unhealthy); all heal at step `HEAL`.
const HEAL: usize = 40;

fn failures() -> impl Strategy<Value = Vec<(usize, u64, bool)>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec((0..HEAL, 0u64..12, any::<bool>()), 0..6),
    ]
}

/// Checks one response against the rules, with the test's own records: `acked` (acked by
/// the controller, not yet completed) and `unhealthy`.
fn check_acks(
    layout: &Layout,
    leaders: &BTreeSet<TaskId>,
    req: &TaskControlRequest,
    resp: &TaskControlResponse,
    acked: &BTreeMap<OpId, TaskId>,
    unhealthy: &BTreeSet<TaskId>,
) -> Result<(), TestCaseError> {
    let task_of: BTreeMap<OpId, TaskId> = req.request.iter().map(|o| (o.id, o.task)).collect();
    let mut down: BTreeSet<TaskId> = unhealthy.iter().chain(acked.values()).copied().collect();
    for id in &resp.ack {
        let task = task_of[id];
        if !down.contains(&task) {
            for s in layout.shards.iter().filter(|s| s.replicas.contains(&task)) {
                let other = s.replicas.iter().find(|t| down.contains(t));
                prop_assert!(
                    other.is_none(),
                    "{} acked while {:?} of {} is down",
                    task,
                    other,
                    s.id
                );
            }
        }
        down.insert(task);
    }
    if resp.ack.iter().any(|id| leaders.contains(&task_of[id])) {
        let follower_acked = resp.ack.iter().any(|id| !leaders.contains(&task_of[id]))
            || acked.values().any(|t| !leaders.contains(t));
        prop_assert!(
            !follower_acked,
            "a leader acked while a follower is outstanding"
        );
        for o in req
            .request
            .iter()
            .filter(|o| !leaders.contains(&o.task) && !resp.ack.contains(&o.id))
        {
            let blocked = layout
                .shards
                .iter()
                .filter(|s| s.replicas.contains(&o.task))
                .any(|s| s.replicas.iter().any(|t| unhealthy.contains(t)));
            prop_assert!(blocked, "a leader acked while {} could still go", o.task);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn controller_restarts_any_layout_one_replica_at_a_time_leaders_last(
        layout in layout(),
        budget in 1u32..4,
        failures in failures(),
        picks in prop::collection::vec(any::<Index>(), 1..16),
    ) {
        let leaders: BTreeSet<TaskId> = layout.shards.iter().map(|s| s.leader).collect();
        let mut tc = TaskControl::new(JobId(1), JobPolicy { max_unavailable: budget });
        let mut svc = ReplicatedService::new(layout.shards.clone()).unwrap();
        for t in 0..layout.tasks {
            tc.offer(Operation { id: OpId(t), task: TaskId(t), kind: OpKind::Restart }).unwrap();
        }
        let mut unhealthy = BTreeSet::new();
        let mut acked: BTreeMap<OpId, TaskId> = BTreeMap::new();
        let mut in_flight: Vec<Operation> = Vec::new();
        let mut done: BTreeSet<TaskId> = BTreeSet::new();
        let limit = HEAL + 6 * usize::try_from(layout.tasks).unwrap() + 10;
        let mut step = 0;
        while done.len() < usize::try_from(layout.tasks).unwrap() {
            step += 1;
            prop_assert!(step < limit, "not finished after {} steps", step);
            for &(at, task, sick) in &failures {
                if at == step {
                    tc.set_unhealthy(TaskId(task), sick);
                    if sick { unhealthy.insert(TaskId(task)); } else { unhealthy.remove(&TaskId(task)); }
                }
            }
            if step == HEAL {
                for t in std::mem::take(&mut unhealthy) {
                    tc.set_unhealthy(t, false);
                }
            }
            let now = 10 * u64::try_from(step).unwrap();
            let req = tc.request();
            let resp = svc.process(&req);
            check_acks(&layout, &leaders, &req, &resp, &acked, &unhealthy)?;
            for id in &resp.ack {
                acked.insert(*id, TaskId(id.0));
            }
            let mut started = tc.respond(resp, now).unwrap();
            if !in_flight.is_empty() {
                let i = picks[step % picks.len()].index(in_flight.len());
                let op = in_flight.remove(i);
                started.extend(tc.complete(op.id, now).unwrap());
                acked.remove(&op.id);
                done.insert(op.task);
            }
            for s in &started {
                if failures.is_empty() && leaders.contains(&s.op.task) {
                    let pending = (0..layout.tasks).map(TaskId).find(|t| !leaders.contains(t) && !done.contains(t));
                    prop_assert!(pending.is_none(), "leader {} started before {:?}", s.op.task, pending);
                }
                in_flight.push(s.op);
            }
            if failures.is_empty() {
                let down: BTreeSet<TaskId> = in_flight.iter().map(|o| o.task).collect();
                for s in &layout.shards {
                    let n = s.replicas.iter().filter(|t| down.contains(t)).count();
                    prop_assert!(n <= 1, "{} replicas of {} down at step {}", n, s.id, step);
                }
            }
        }
    }
}

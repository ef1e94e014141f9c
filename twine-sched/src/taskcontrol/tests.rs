//! Case-by-case tests of the machine and the reference controller; the random ones are in
//! `tests/taskcontrol_props.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::fleet::HostId;

fn op(id: u64, task: u64, kind: OpKind) -> Operation {
    Operation {
        id: OpId(id),
        task: TaskId(task),
        kind,
    }
}

fn restart(id: u64, task: u64) -> Operation {
    op(id, task, OpKind::Restart)
}

fn machine(max_unavailable: u32) -> TaskControl {
    TaskControl::new(JobId(1), JobPolicy { max_unavailable })
}

fn ack(seq: u64, ids: &[u64]) -> TaskControlResponse {
    TaskControlResponse {
        sequence: seq,
        ack: ids.iter().map(|&i| OpId(i)).collect(),
    }
}

fn ids(started: &[Started]) -> Vec<u64> {
    started.iter().map(|s| s.op.id.0).collect()
}

fn notice(id: u64, tasks: &[u64], deadline_ms: u64) -> Notice {
    Notice {
        id: NoticeId(id),
        tasks: tasks.iter().map(|&t| TaskId(t)).collect(),
        deadline_ms,
        reason: "rack switch upgrade".to_owned(),
    }
}

/// Asserts the call failed with `want` and left the machine as it was.
fn refused<T: std::fmt::Debug>(
    tc: &mut TaskControl,
    want: TaskControlError,
    call: impl FnOnce(&mut TaskControl) -> Result<T, TaskControlError>,
) {
    let before = format!("{tc:?}");
    assert_eq!(call(tc).unwrap_err(), want);
    assert_eq!(format!("{tc:?}"), before, "state changed on {want}");
}

#[test]
fn sequence_increases_and_each_end_is_reported_once() {
    let mut tc = machine(1);
    tc.offer(restart(1, 1)).unwrap();
    let r1 = tc.request();
    assert_eq!(r1.sequence, 1);
    assert_eq!(r1.request, [restart(1, 1)]);
    assert_eq!(ids(&tc.respond(ack(1, &[1]), 0).unwrap()), [1]);
    assert!(tc.complete(OpId(1), 5).unwrap().is_empty());
    let r2 = tc.request();
    assert_eq!(r2.sequence, 2);
    assert!(r2.request.is_empty());
    assert_eq!(r2.completed.len(), 1);
    assert_eq!(r2.completed[0].op, restart(1, 1));
    assert_eq!(r2.completed[0].outcome, Outcome::Completed);
    let r3 = tc.request();
    assert_eq!(r3.sequence, 3);
    assert!(r3.completed.is_empty());
}

#[test]
fn only_the_latest_request_may_be_answered_and_only_once() {
    let mut tc = machine(1);
    tc.offer(restart(1, 1)).unwrap();
    let want = TaskControlError::UnexpectedSequence {
        got: 1,
        awaited: None,
    };
    refused(&mut tc, want, |tc| tc.respond(ack(1, &[1]), 0));
    tc.request();
    tc.request();
    let stale = TaskControlError::UnexpectedSequence {
        got: 1,
        awaited: Some(2),
    };
    refused(&mut tc, stale, |tc| tc.respond(ack(1, &[1]), 0));
    tc.respond(ack(2, &[]), 0).unwrap();
    let answered = TaskControlError::UnexpectedSequence {
        got: 2,
        awaited: None,
    };
    refused(&mut tc, answered, |tc| tc.respond(ack(2, &[1]), 0));
}

#[test]
fn acks_over_the_budget_wait_and_start_in_ack_order() {
    let mut tc = machine(1);
    for i in 1..=3 {
        tc.offer(restart(i, i)).unwrap();
    }
    tc.request();
    assert_eq!(ids(&tc.respond(ack(1, &[3, 1, 2]), 0).unwrap()), [3]);
    assert_eq!(tc.unavailable(), 1);
    // Acked ops are no longer offered for approval.
    assert!(tc.request().request.is_empty());
    assert_eq!(ids(&tc.complete(OpId(3), 1).unwrap()), [1]);
    assert_eq!(ids(&tc.complete(OpId(1), 2).unwrap()), [2]);
    assert!(tc.complete(OpId(2), 3).unwrap().is_empty());
    assert_eq!(tc.unavailable(), 0);
}

#[test]
fn bad_acks_name_the_op_and_change_nothing() {
    let mut tc = machine(1);
    for i in 1..=3 {
        tc.offer(restart(i, i)).unwrap();
    }
    tc.request();
    tc.respond(ack(1, &[1, 2]), 0).unwrap(); // 1 starts, 2 waits
    tc.offer(restart(4, 4)).unwrap(); // after the request
    tc.request();
    let cases = [
        (ack(2, &[9]), TaskControlError::UnknownOp(OpId(9))),
        (ack(2, &[3, 3]), TaskControlError::DuplicateAck(OpId(3))),
        (ack(2, &[3, 1]), TaskControlError::AlreadyStarted(OpId(1))),
        (ack(2, &[2]), TaskControlError::AlreadyAcked(OpId(2))),
    ];
    for (resp, want) in cases {
        refused(&mut tc, want, |tc| tc.respond(resp, 0));
    }
    tc.offer(restart(5, 5)).unwrap();
    let late = TaskControlError::NotInRequest {
        op: OpId(5),
        sequence: 2,
    };
    refused(&mut tc, late, |tc| tc.respond(ack(2, &[5]), 0));
    assert!(tc.respond(ack(2, &[3, 4]), 0).unwrap().is_empty());
}

#[test]
fn offers_refuse_a_used_id_or_a_busy_task_until_the_end_is_reported() {
    let mut tc = machine(1);
    tc.offer(restart(1, 1)).unwrap();
    refused(&mut tc, TaskControlError::DuplicateOp(OpId(1)), |tc| {
        tc.offer(restart(1, 2))
    });
    let busy = TaskControlError::TaskBusy {
        task: TaskId(1),
        op: OpId(1),
    };
    refused(&mut tc, busy, |tc| tc.offer(op(2, 1, OpKind::Stop)));
    tc.request();
    tc.respond(ack(1, &[1]), 0).unwrap();
    tc.complete(OpId(1), 0).unwrap();
    // Ended but not reported: still taken. The task is free.
    refused(&mut tc, TaskControlError::DuplicateOp(OpId(1)), |tc| {
        tc.offer(restart(1, 3))
    });
    tc.offer(restart(2, 1)).unwrap();
    tc.request();
    tc.offer(restart(1, 3)).unwrap();
}

#[test]
fn completing_what_has_not_started_is_refused() {
    let mut tc = machine(0);
    tc.offer(restart(1, 1)).unwrap();
    refused(&mut tc, TaskControlError::NotStarted(OpId(1)), |tc| {
        tc.complete(OpId(1), 0)
    });
    tc.request();
    assert!(tc.respond(ack(1, &[1]), 0).unwrap().is_empty()); // budget 0
    refused(&mut tc, TaskControlError::NotStarted(OpId(1)), |tc| {
        tc.complete(OpId(1), 0)
    });
    refused(&mut tc, TaskControlError::UnknownOp(OpId(2)), |tc| {
        tc.complete(OpId(2), 0)
    });
}

#[test]
fn time_must_not_go_back() {
    let mut tc = machine(1);
    tc.tick(100).unwrap();
    let back = TaskControlError::TimeWentBack {
        now_ms: 99,
        last_ms: 100,
    };
    refused(&mut tc, back.clone(), |tc| tc.tick(99));
    tc.request();
    refused(&mut tc, back, |tc| tc.respond(ack(1, &[]), 99));
}

#[test]
fn unhealthy_tasks_use_the_budget_but_their_own_restart_may_go() {
    let mut tc = machine(1);
    tc.set_unhealthy(TaskId(1), true);
    tc.offer(restart(1, 1)).unwrap();
    tc.offer(restart(2, 2)).unwrap();
    let req = tc.request();
    assert_eq!(req.unhealthy, [TaskId(1)]);
    // Task 2 would make two unavailable; task 1 is unavailable already.
    assert_eq!(ids(&tc.respond(ack(1, &[2, 1]), 0).unwrap()), [1]);
    assert_eq!(tc.unavailable(), 1);
    tc.complete(OpId(1), 1).unwrap();
    // Still reported unhealthy: only the scheduler's report clears it.
    assert_eq!(tc.unavailable(), 1);
    tc.set_unhealthy(TaskId(1), false);
    // Budget freed without a timed call: starts at the next one.
    assert_eq!(ids(&tc.tick(2).unwrap().started), [2]);
}

#[test]
fn a_completed_stop_takes_its_task_out_of_the_job() {
    let mut tc = machine(1);
    tc.set_unhealthy(TaskId(1), true);
    tc.offer(op(1, 1, OpKind::Stop)).unwrap();
    tc.request();
    tc.respond(ack(1, &[1]), 0).unwrap();
    tc.complete(OpId(1), 1).unwrap();
    assert_eq!(tc.unavailable(), 0);
    assert!(tc.request().unhealthy.is_empty());
}

#[test]
fn the_deadline_force_stops_each_unhandled_task_once() {
    let mut tc = machine(1);
    let to = HostId(9);
    tc.offer(op(1, 1, OpKind::Move { to })).unwrap(); // acked in time: handled
    tc.offer(op(2, 2, OpKind::Stop)).unwrap(); // never acked
    tc.offer(op(3, 4, OpKind::Move { to })).unwrap(); // acked, no budget left
    tc.notice(notice(1, &[1, 2, 3, 4], 100)).unwrap();
    let req = tc.request();
    assert_eq!(req.advance_notices, [notice(1, &[1, 2, 3, 4], 100)]);
    assert_eq!(ids(&tc.respond(ack(1, &[1, 3]), 10).unwrap()), [1]);
    assert_eq!(tc.tick(99).unwrap(), Tick::default());
    let t = tc.tick(100).unwrap();
    let forced: Vec<u64> = t.forced.iter().map(|f| f.task.0).collect();
    assert_eq!(forced, [2, 3, 4]);
    assert!(t.forced.iter().all(|f| f.notice == NoticeId(1)));
    assert!(t.started.is_empty());
    // Forced stops ignore the budget: the move in flight plus three stopped tasks.
    assert_eq!(tc.unavailable(), 4);
    assert_eq!(tc.tick(500).unwrap(), Tick::default());
    let req = tc.request();
    assert!(req.advance_notices.is_empty());
    assert_eq!(req.unhealthy, [TaskId(2), TaskId(3), TaskId(4)]);
    let withdrawn: Vec<(u64, Outcome)> = req
        .completed
        .iter()
        .map(|c| (c.op.id.0, c.outcome))
        .collect();
    let w = Outcome::Withdrawn {
        notice: NoticeId(1),
    };
    assert_eq!(withdrawn, [(2, w), (3, w)]);
    refused(&mut tc, TaskControlError::UnknownOp(OpId(3)), |tc| {
        tc.complete(OpId(3), 500)
    });
}

#[test]
fn an_ack_after_the_deadline_starts_nothing_even_before_the_tick() {
    let mut tc = machine(5);
    tc.offer(op(1, 1, OpKind::Stop)).unwrap();
    tc.offer(restart(2, 2)).unwrap();
    tc.notice(notice(1, &[1], 100)).unwrap();
    tc.request();
    // Task 2 is not covered; task 1's deadline has passed.
    assert_eq!(ids(&tc.respond(ack(1, &[1, 2]), 100).unwrap()), [2]);
    assert!(tc.complete(OpId(2), 150).unwrap().is_empty());
    let t = tc.tick(150).unwrap();
    assert_eq!(
        t.forced,
        [Forced {
            task: TaskId(1),
            notice: NoticeId(1)
        }]
    );
    assert!(t.started.is_empty());
}

#[test]
fn an_ack_racing_the_deadline_is_refused_as_withdrawn() {
    let mut tc = machine(5);
    tc.offer(op(1, 1, OpKind::Stop)).unwrap();
    tc.notice(notice(1, &[1], 100)).unwrap();
    tc.request();
    tc.tick(100).unwrap();
    refused(&mut tc, TaskControlError::WithdrawnOp(OpId(1)), |tc| {
        tc.respond(ack(1, &[1]), 100)
    });
}

#[test]
fn a_restart_in_flight_is_cut_short_and_a_stopped_task_comes_back_by_an_op() {
    let mut tc = machine(1);
    tc.offer(restart(1, 1)).unwrap();
    tc.request();
    tc.respond(ack(1, &[1]), 0).unwrap();
    tc.notice(notice(1, &[1, 2], 50)).unwrap();
    let t = tc.tick(50).unwrap();
    assert_eq!(t.forced.len(), 2);
    assert_eq!(
        tc.request().completed[0].outcome,
        Outcome::Withdrawn {
            notice: NoticeId(1)
        }
    );
    // Two force-stopped tasks, budget 1: a restart of a healthy task waits, bringing a
    // stopped one back goes.
    tc.offer(restart(2, 3)).unwrap();
    tc.offer(op(3, 1, OpKind::Move { to: HostId(4) })).unwrap();
    tc.request();
    assert_eq!(ids(&tc.respond(ack(3, &[2, 3]), 60).unwrap()), [3]);
    assert!(tc.complete(OpId(3), 70).unwrap().is_empty());
    assert_eq!(tc.request().unhealthy, [TaskId(2)]);
    // A notice due again later forces only tasks running by then.
    tc.notice(notice(2, &[1, 2], 80)).unwrap();
    let t = tc.tick(80).unwrap();
    assert_eq!(
        t.forced,
        [Forced {
            task: TaskId(1),
            notice: NoticeId(2)
        }]
    );
}

#[test]
fn a_move_in_flight_when_posted_handles_the_notice() {
    let mut tc = machine(1);
    tc.offer(op(1, 1, OpKind::Move { to: HostId(2) })).unwrap();
    tc.request();
    tc.respond(ack(1, &[1]), 0).unwrap();
    tc.notice(notice(1, &[1], 10)).unwrap();
    refused(
        &mut tc,
        TaskControlError::NoticeTaskTwice {
            notice: NoticeId(2),
            task: TaskId(3),
        },
        |tc| tc.notice(notice(2, &[3, 3], 10)),
    );
    refused(
        &mut tc,
        TaskControlError::DuplicateNotice(NoticeId(1)),
        |tc| tc.notice(notice(1, &[3], 10)),
    );
    assert!(tc.tick(10).unwrap().forced.is_empty());
}

// ---- the reference controller ----

fn shard(id: u64, replicas: &[u64], leader: u64) -> Shard {
    Shard {
        id: ShardId(id),
        replicas: replicas.iter().map(|&t| TaskId(t)).collect(),
        leader: TaskId(leader),
    }
}

#[test]
fn shard_layouts_are_validated() {
    let err = ReplicatedService::new(vec![shard(1, &[1, 2], 3)]).unwrap_err();
    assert_eq!(
        err,
        ShardLayoutError::LeaderNotReplica {
            shard: ShardId(1),
            leader: TaskId(3)
        }
    );
    assert_eq!(
        err.to_string(),
        "shard 1: leader task 3 is not one of its replicas"
    );
    let err = ReplicatedService::new(vec![shard(1, &[1], 1), shard(1, &[2], 2)]).unwrap_err();
    assert_eq!(err, ShardLayoutError::DuplicateShard(ShardId(1)));
    let err = ReplicatedService::new(vec![shard(1, &[1, 2, 1], 1)]).unwrap_err();
    assert_eq!(
        err,
        ShardLayoutError::ReplicaTwice {
            shard: ShardId(1),
            task: TaskId(1)
        }
    );
}

/// The paper's layout in small: 30 shards × 3 replicas on 10 tasks; tasks 0..3 lead ten
/// shards each, tasks 3..10 hold the followers.
fn paper_layout() -> Vec<Shard> {
    (0..30)
        .map(|s| shard(s, &[s % 3, 3 + s % 7, 3 + (s + 3) % 7], s % 3))
        .collect()
}

/// What happened while driving a rolling restart to the end.
struct Release {
    /// Each op's start and end, in driver steps.
    spans: BTreeMap<TaskId, (usize, usize)>,
    /// The most replicas of one shard in flight at once.
    worst: usize,
}

/// Restarts every task through the protocol: each round asks, acks, and completes the
/// oldest operation in flight. Unhealthy tasks stay so throughout.
fn rolling_restart(shards: &[Shard], tasks: u64, unhealthy: &[u64], budget: u32) -> Release {
    let mut tc = machine(budget);
    let mut svc = ReplicatedService::new(shards.to_vec()).unwrap();
    for &t in unhealthy {
        tc.set_unhealthy(TaskId(t), true);
    }
    for t in 0..tasks {
        tc.offer(restart(t, t)).unwrap();
    }
    let mut in_flight: Vec<Operation> = Vec::new();
    let mut spans = BTreeMap::new();
    let mut worst = 0;
    let mut step = 0;
    let mut now = 0;
    while spans.len() < usize::try_from(tasks).unwrap()
        || spans.values().any(|&(_, end)| end == usize::MAX)
    {
        step += 1;
        now += 10;
        assert!(step < 1_000, "the release does not finish");
        let req = tc.request();
        let resp = svc.process(&req);
        let mut started = tc.respond(resp, now).unwrap();
        if !in_flight.is_empty() {
            let done = in_flight.remove(0);
            started.extend(tc.complete(done.id, now).unwrap());
            spans
                .entry(done.task)
                .and_modify(|s: &mut (usize, usize)| s.1 = step);
        }
        for s in started {
            spans.insert(s.op.task, (step, usize::MAX));
            in_flight.push(s.op);
        }
        let down: BTreeSet<TaskId> = in_flight.iter().map(|o| o.task).collect();
        for sh in shards {
            worst = worst.max(sh.replicas.iter().filter(|t| down.contains(t)).count());
        }
    }
    Release { spans, worst }
}

#[test]
fn paper_rolling_restart_never_takes_two_replicas_and_restarts_leaders_last() {
    let shards = paper_layout();
    let release = rolling_restart(&shards, 10, &[], 3);
    assert_eq!(release.worst, 1);
    let last_follower_end = (3..10).map(|t| release.spans[&TaskId(t)].1).max().unwrap();
    for leader in 0..3 {
        assert!(release.spans[&TaskId(leader)].0 >= last_follower_end);
    }
}

#[test]
fn a_failure_mid_release_holds_back_only_the_shards_it_hit() {
    // Task 3 fails: every shard with a replica on it is one down already, so no other
    // replica of those shards may go; the rest of the release proceeds.
    let shards = paper_layout();
    let mut tc = machine(10);
    let mut svc = ReplicatedService::new(shards.clone()).unwrap();
    tc.set_unhealthy(TaskId(3), true);
    for t in 0..10 {
        tc.offer(restart(t, t)).unwrap();
    }
    let resp = svc.process(&tc.request());
    let hit: BTreeSet<usize> = (0..shards.len())
        .filter(|&s| shards[s].replicas.contains(&TaskId(3)))
        .collect();
    let acked: BTreeSet<TaskId> = resp.ack.iter().map(|id| TaskId(id.0)).collect();
    assert!(
        acked.contains(&TaskId(3)),
        "the failed task's own restart goes"
    );
    for &s in &hit {
        let others = shards[s].replicas.iter().filter(|&&t| t != TaskId(3));
        assert!(others.clone().all(|t| !acked.contains(t)), "{s}");
    }
    assert!(!acked.is_empty());
    // Leaders wait for followers that are not blocked by the failure.
    assert!((0..3).all(|t| !acked.contains(&TaskId(t))));
}

#[test]
fn an_ack_that_never_landed_is_forgotten() {
    let mut tc = machine(1);
    let mut svc = ReplicatedService::new(vec![shard(1, &[1, 2, 3], 1)]).unwrap();
    for t in 1..=3 {
        tc.offer(restart(t, t)).unwrap();
    }
    let first = tc.request();
    let resp = svc.process(&first);
    assert_eq!(resp.ack, [OpId(2)]);
    // Lost: the scheduler asked again before the answer arrived.
    let second = tc.request();
    assert!(tc.respond(resp, 0).is_err());
    assert_eq!(svc.process(&second).ack, [OpId(2)]);
}

#[test]
fn leaders_wait_for_a_follower_held_back_only_by_a_leader() {
    // Shard 1: leader 1, follower 2. Shard 2: leader 3, followers 2 and 4. Shard 3: leader
    // 5 alone. Task 4 fails: follower 2 is blocked by the failure, so leader 1 may go.
    let layout = vec![
        shard(1, &[1, 2], 1),
        shard(2, &[3, 2, 4], 3),
        shard(3, &[5], 5),
    ];
    let mut svc = ReplicatedService::new(layout).unwrap();
    let mut tc = machine(10);
    tc.set_unhealthy(TaskId(4), true);
    tc.offer(restart(2, 2)).unwrap();
    tc.offer(restart(1, 1)).unwrap();
    let resp = svc.process(&tc.request());
    assert_eq!(resp.ack, [OpId(1)]);
    assert_eq!(ids(&tc.respond(resp, 0).unwrap()), [1]);
    // Healed: now follower 2 is held back only by leader 1, which will end, so leader 5
    // waits behind it.
    tc.set_unhealthy(TaskId(4), false);
    tc.offer(restart(5, 5)).unwrap();
    let resp = svc.process(&tc.request());
    assert!(resp.ack.is_empty());
    tc.respond(resp, 1).unwrap();
    tc.complete(OpId(1), 2).unwrap();
    let resp = svc.process(&tc.request());
    assert_eq!(resp.ack, [OpId(2)]);
    tc.respond(resp, 3).unwrap();
    tc.complete(OpId(2), 4).unwrap();
    assert_eq!(svc.process(&tc.request()).ack, [OpId(5)]);
}

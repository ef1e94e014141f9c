//! The task lifecycle: invariants under random inputs, checked against an
//! independent model, plus the scenarios the agent depends on.

use proptest::prelude::*;
use twine_agent::lifecycle::{
    Event, EventKind, FailReason, Input, Lifecycle, MainExit, ServiceResult, TaskState,
    TransitionError,
};

fn result() -> impl Strategy<Value = ServiceResult> {
    prop_oneof![
        Just(ServiceResult::Success),
        Just(ServiceResult::ExitCode),
        Just(ServiceResult::Signal),
        Just(ServiceResult::CoreDump),
        Just(ServiceResult::OomKill),
        Just(ServiceResult::Timeout),
        Just(ServiceResult::Watchdog),
        Just(ServiceResult::StartLimitHit),
        "[a-z-]{1,12}".prop_map(|w| ServiceResult::parse(&w)),
    ]
}

fn exit() -> impl Strategy<Value = MainExit> {
    prop_oneof![
        (-1i32..256).prop_map(|code| MainExit::Code { code }),
        (1i32..65).prop_map(|signal| MainExit::Signal { signal }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => Just(Input::ContainerStarted),
        1 => ".{0,8}".prop_map(|message| Input::ContainerStartFailed { message }),
        3 => Just(Input::Ready),
        1 => Just(Input::ReadyTimeout),
        2 => ("[a-z]{1,6}\\.service", "[a-z]{1,8}", "[a-z]{1,8}", result()).prop_map(
            |(unit, active_state, sub_state, result)| Input::UnitChanged { unit, active_state, sub_state, result }
        ),
        4 => (exit(), result(), any::<bool>(), 0u32..20).prop_map(
            |(exit, result, will_restart, n_restarts)| Input::MainExited { exit, result, will_restart, n_restarts }
        ),
        1 => ("[a-z]{1,6}", result()).prop_map(|(unit, result)| Input::PrestartFailed { unit, result }),
        2 => Just(Input::StopRequested),
        1 => Just(Input::StopDeadlinePassed),
        1 => Just(Input::ContainerGone),
        1 => Just(Input::BusLost),
    ]
}

/// What the model expects an input to do.
#[derive(Debug, PartialEq)]
enum Expect {
    /// A state change to a state of this name.
    Move(&'static str),
    /// Events but no state change (restart, unit change).
    Stay,
    /// Nothing at all.
    Nothing,
    Impossible,
    AfterEnd,
}

/// An independent reading of the documented table, organised by input rather
/// than by state.
fn model(state: &str, input: &Input) -> Expect {
    use Expect::*;
    if state == "exited" || state == "failed" {
        return AfterEnd;
    }
    let live = matches!(state, "starting" | "running" | "stopping");
    match input {
        Input::ContainerStarted => {
            if state == "pending" {
                Move("starting")
            } else {
                Impossible
            }
        }
        Input::ContainerStartFailed { .. } => {
            if state == "pending" {
                Move("failed")
            } else {
                Impossible
            }
        }
        Input::Ready => match state {
            "starting" => Move("running"),
            "stopping" => Nothing,
            _ => Impossible,
        },
        Input::ReadyTimeout => match state {
            "starting" => Move("failed"),
            "stopping" => Nothing,
            _ => Impossible,
        },
        Input::UnitChanged { .. } => {
            if live {
                Stay
            } else {
                Impossible
            }
        }
        Input::MainExited {
            exit,
            result,
            will_restart,
            ..
        } => match state {
            "starting" | "running" if *will_restart => Stay,
            "starting" | "running" | "stopping" => {
                let clean = match (exit, result) {
                    (_, ServiceResult::OomKill) => false,
                    (_, ServiceResult::Timeout) => false,
                    (MainExit::Code { .. }, ServiceResult::Success | ServiceResult::ExitCode) => {
                        true
                    }
                    (MainExit::Signal { .. }, ServiceResult::Success) => state == "stopping",
                    _ => false,
                };
                Move(if clean { "exited" } else { "failed" })
            }
            _ => Impossible,
        },
        Input::PrestartFailed { .. } | Input::ContainerGone => {
            if live {
                Move("failed")
            } else {
                Impossible
            }
        }
        Input::StopRequested => match state {
            "pending" => Move("failed"),
            "starting" | "running" => Move("stopping"),
            _ => Nothing,
        },
        Input::StopDeadlinePassed => {
            if state == "stopping" {
                Move("failed")
            } else {
                Impossible
            }
        }
        Input::BusLost => match state {
            "starting" | "running" => Move("failed"),
            "stopping" => Nothing,
            _ => Impossible,
        },
        other => panic!("the model does not know {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_inputs_keep_the_invariants(inputs in proptest::collection::vec(input(), 0..40)) {
        let mut task = Lifecycle::new();
        let mut current = TaskState::Pending;
        let mut last_seq = 0u64;
        let mut last_restarts = 0u32;
        let mut all_events: Vec<Event> = Vec::new();
        for input in inputs {
            let before = task.clone();
            let expected = model(current.name(), &input);
            match task.apply(input.clone()) {
                Err(error) => {
                    prop_assert_eq!(&task, &before, "an error changed the task");
                    match error {
                        TransitionError::Impossible { .. } => prop_assert_eq!(expected, Expect::Impossible, "{:?} in {}", input, current),
                        TransitionError::AfterEnd { .. } => prop_assert_eq!(expected, Expect::AfterEnd, "{:?} in {}", input, current),
                        other => prop_assert!(false, "unknown error {other}"),
                    }
                }
                Ok(events) => {
                    let mut moved_to = None;
                    for event in &events {
                        prop_assert_eq!(event.seq, last_seq + 1, "seq not contiguous");
                        last_seq = event.seq;
                        match &event.kind {
                            EventKind::StateChanged { from, to } => {
                                prop_assert_eq!(from, &current, "from is not the previous to");
                                prop_assert!(!from.is_terminal(), "left a terminal state");
                                if *to == TaskState::Running {
                                    prop_assert_eq!(from, &TaskState::Starting, "Running not via Starting");
                                }
                                prop_assert_ne!(from, to, "a change that changes nothing");
                                current = to.clone();
                                moved_to = Some(to.name());
                            }
                            EventKind::Restarted { count, .. } => {
                                prop_assert!(*count > last_restarts, "restart count did not grow");
                                last_restarts = *count;
                            }
                            EventKind::UnitChanged { .. } => {}
                            other => prop_assert!(false, "unknown event {other:?}"),
                        }
                    }
                    let got = match (moved_to, events.is_empty()) {
                        (Some(to), _) => Expect::Move(to),
                        (None, false) => Expect::Stay,
                        (None, true) => Expect::Nothing,
                    };
                    prop_assert_eq!(got, expected, "{:?} in {}", input, before.state());
                    all_events.extend(events);
                }
            }
            prop_assert_eq!(task.state(), &current);
            prop_assert_eq!(task.last_seq(), last_seq);
            prop_assert_eq!(task.restarts(), last_restarts);
        }
        let json = serde_json::to_string(&task).expect("serialize");
        let back: Lifecycle = serde_json::from_str(&json).expect("deserialize");
        prop_assert_eq!(back, task);
        for event in all_events {
            let json = serde_json::to_string(&event).expect("serialize");
            let back: Event = serde_json::from_str(&json).expect("deserialize");
            prop_assert_eq!(back, event);
        }
    }
}

fn run(inputs: Vec<Input>) -> Lifecycle {
    let mut task = Lifecycle::new();
    for input in inputs {
        task.apply(input.clone())
            .unwrap_or_else(|e| panic!("{input:?}: {e}"));
    }
    task
}

fn main_exited(exit: MainExit, result: &str, will_restart: bool, n: u32) -> Input {
    Input::MainExited {
        exit,
        result: ServiceResult::parse(result),
        will_restart,
        n_restarts: n,
    }
}

#[test]
fn restarts_by_systemd_keep_the_task_running_and_are_counted() {
    let mut task = run(vec![Input::ContainerStarted, Input::Ready]);
    let events = task
        .apply(main_exited(
            MainExit::Code { code: 3 },
            "exit-code",
            true,
            1,
        ))
        .expect("restart");
    assert_eq!(task.state(), &TaskState::Running);
    assert!(matches!(
        events[0].kind,
        EventKind::Restarted { count: 1, .. }
    ));
    // systemd's NRestarts wins when it is ahead of ours.
    task.apply(main_exited(
        MainExit::Code { code: 3 },
        "exit-code",
        true,
        5,
    ))
    .expect("restart");
    assert_eq!(task.restarts(), 5);
}

#[test]
fn a_nonzero_exit_is_an_exit_and_oom_is_a_failure() {
    let task = run(vec![
        Input::ContainerStarted,
        Input::Ready,
        main_exited(MainExit::Code { code: 7 }, "exit-code", false, 0),
    ]);
    assert_eq!(task.state(), &TaskState::Exited { code: 7 });
    let task = run(vec![
        Input::ContainerStarted,
        Input::Ready,
        main_exited(MainExit::Signal { signal: 9 }, "oom-kill", false, 0),
    ]);
    assert_eq!(
        task.state(),
        &TaskState::Failed {
            reason: FailReason::OomKilled
        }
    );
    let task = run(vec![
        Input::ContainerStarted,
        Input::Ready,
        main_exited(MainExit::Signal { signal: 11 }, "core-dump", false, 0),
    ]);
    assert_eq!(
        task.state(),
        &TaskState::Failed {
            reason: FailReason::Signal { signal: 11 }
        }
    );
}

#[test]
fn a_stop_that_systemd_finishes_with_sigkill_is_a_stop_timeout() {
    let task = run(vec![
        Input::ContainerStarted,
        Input::Ready,
        Input::StopRequested,
        main_exited(MainExit::Signal { signal: 9 }, "timeout", false, 0),
    ]);
    assert_eq!(
        task.state(),
        &TaskState::Failed {
            reason: FailReason::StopTimedOut
        }
    );
}

#[test]
fn a_prestart_failure_names_the_unit() {
    let task = run(vec![
        Input::ContainerStarted,
        Input::PrestartFailed {
            unit: "web-pre-fetch.service".into(),
            result: ServiceResult::ExitCode,
        },
    ]);
    assert_eq!(
        task.state().to_string(),
        "failed: pre-start unit web-pre-fetch.service failed (result exit-code)"
    );
}

#[test]
fn impossible_and_late_inputs_are_typed_errors() {
    let mut task = Lifecycle::new();
    let error = task
        .apply(main_exited(MainExit::Code { code: 0 }, "success", false, 0))
        .expect_err("main exited while pending");
    assert_eq!(
        error.to_string(),
        "main exited is impossible while the task is pending"
    );
    let mut task = run(vec![Input::ContainerStarted, Input::ReadyTimeout]);
    let error = task.apply(Input::Ready).expect_err("ready after the end");
    assert!(matches!(error, TransitionError::AfterEnd { .. }), "{error}");
}

#[test]
fn events_and_states_have_a_stable_json_shape() {
    let mut task = run(vec![Input::ContainerStarted]);
    let events = task.apply(Input::Ready).expect("ready");
    let json = serde_json::to_value(&events[0]).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "seq": 2, "event": "state_changed",
            "from": {"state": "starting"}, "to": {"state": "running"}
        })
    );
    let failed = TaskState::Failed {
        reason: FailReason::PrestartFailed {
            unit: "a.service".into(),
            result: ServiceResult::ExitCode,
        },
    };
    assert_eq!(
        serde_json::to_value(&failed).expect("json"),
        serde_json::json!({"state": "failed", "reason": {"kind": "prestart_failed", "unit": "a.service", "result": "exit-code"}})
    );
}

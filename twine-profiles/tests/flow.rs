//! The switch flow: every path, and crash-anywhere-then-resume over a fake host.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use proptest::prelude::*;
use twine_profiles::change::{Change, Effect, Plan, Setting};
use twine_profiles::flow::{
    Applier, Drain, DrainRefusal, Event, Flow, FlowError, HookError, Progress, Reboot, Runner,
    Stage, State,
};

/// What the fake host looks like, and the script of how the hooks behave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct World {
    drained: bool,
    applied: bool,
    rolled_back: bool,
    boot_id: u32,
    reboot_requested: bool,
    drains: u32,
    // script
    refuse_drain: bool,
    fail_apply: bool,
    needs_reboot: bool,
    // crash injection: every hook ticks before and after its effect; panic at tick `crash_at`
    actions: u32,
    crash_at: Option<u32>,
}

#[derive(Clone)]
struct Host(Rc<RefCell<World>>);

/// Ticks when dropped: the "after the effect" crash point of a hook.
struct After<'a>(&'a Host);

impl Drop for After<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.0.tick();
        }
    }
}

impl Host {
    /// Ticks now (before the effect) and returns a guard that ticks after it.
    fn hook(&self) -> After<'_> {
        self.tick();
        After(self)
    }

    fn tick(&self) {
        let mut w = self.0.borrow_mut();
        w.actions += 1;
        if w.crash_at == Some(w.actions) {
            w.crash_at = None;
            drop(w);
            panic!("simulated crash");
        }
    }
}

impl Drain for Host {
    fn drain(&mut self) -> Result<(), DrainRefusal> {
        let _after = self.hook();
        let mut w = self.0.borrow_mut();
        if w.refuse_drain {
            return Err(DrainRefusal::TimedOut("job web/3 still running".into()));
        }
        w.drains += 1;
        w.drained = true;
        Ok(())
    }
    fn undrain(&mut self) -> Result<(), HookError> {
        let _after = self.hook();
        self.0.borrow_mut().drained = false;
        Ok(())
    }
}

impl Reboot for Host {
    fn request_reboot(&mut self) -> Result<(), HookError> {
        let _after = self.hook();
        self.0.borrow_mut().reboot_requested = true;
        Ok(())
    }
    fn boot_id(&mut self) -> Result<String, HookError> {
        Ok(format!("boot-{}", self.0.borrow().boot_id))
    }
}

impl Applier for Host {
    fn apply(&mut self, _plan: &Plan) -> Result<bool, HookError> {
        let _after = self.hook();
        let mut w = self.0.borrow_mut();
        if w.fail_apply {
            return Err("writing 1024 to /proc/sys/vm/nr_hugepages: busy".into());
        }
        w.applied = true;
        Ok(w.needs_reboot)
    }
    fn verify(&mut self, _plan: &Plan) -> Result<Vec<String>, HookError> {
        let _after = self.hook();
        let w = self.0.borrow();
        // a reboot-needing plan is pending until the boot id changed
        if w.needs_reboot && w.boot_id == 0 {
            Ok(vec!["cmdline isolcpus".into()])
        } else {
            Ok(vec![])
        }
    }
    fn rollback(&mut self) -> Result<(), HookError> {
        let _after = self.hook();
        let mut w = self.0.borrow_mut();
        w.applied = false;
        w.rolled_back = true;
        Ok(())
    }
}

fn plan(drain: bool, reboot: bool) -> Plan {
    let mut plan = Plan::default();
    plan.drain = drain;
    plan.reboot = reboot;
    plan.changes.push(Change::new(
        Setting::CpuGovernor,
        Some("powersave".into()),
        Some("performance".into()),
        Effect::Live,
    ));
    plan
}

fn runner(dir: &std::path::Path, host: &Host) -> Runner<Host, Host, Host> {
    Runner::new(dir, host.clone(), host.clone(), host.clone())
}

fn world(reboot: bool, refuse: bool, fail: bool) -> World {
    World {
        refuse_drain: refuse,
        fail_apply: fail,
        needs_reboot: reboot,
        ..World::default()
    }
}

/// Runs a flow to its end, rebooting (a new boot id) whenever one is requested; resumes
/// after every simulated crash. Returns the end state.
fn run_to_end(host: &Host, p: Plan) -> State {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut started = false;
    for _ in 0..50 {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut r = runner(dir.path(), host);
            if started {
                r.resume().map(|p| p.expect("a persisted flow"))
            } else {
                r.start("perf", p.clone())
            }
        }));
        started = true;
        match result {
            Err(_) => continue, // crashed: resume
            Ok(Ok(Progress::Finished(state))) => return state,
            Ok(Ok(Progress::AwaitingReboot)) => {
                let mut w = host.0.borrow_mut();
                w.boot_id += 1;
                w.reboot_requested = false;
            }
            Ok(Ok(other)) => panic!("unexpected progress {other:?}"),
            Ok(Err(e)) => panic!("runner error {e}"),
        }
    }
    panic!("the flow did not end")
}

#[test]
fn no_drain_no_reboot_applies_and_verifies() {
    let host = Host(Rc::new(RefCell::new(world(false, false, false))));
    assert_eq!(run_to_end(&host, plan(false, false)), State::Done);
    let w = host.0.borrow();
    assert!(w.applied && !w.drained && w.drains == 0 && w.boot_id == 0);
}

#[test]
fn drain_and_reboot_then_verify_after_boot_and_undrain() {
    let host = Host(Rc::new(RefCell::new(world(true, false, false))));
    assert_eq!(run_to_end(&host, plan(true, true)), State::Done);
    let w = host.0.borrow();
    assert!(w.applied && !w.drained && w.drains == 1 && w.boot_id == 1);
}

#[test]
fn refused_drain_fails_without_change_and_undrains() {
    let host = Host(Rc::new(RefCell::new(world(false, true, false))));
    let end = run_to_end(&host, plan(true, false));
    assert!(
        matches!(end, State::Failed { at: Stage::Draining, ref error } if error.contains("web/3")),
        "{end:?}"
    );
    let w = host.0.borrow();
    assert!(!w.applied && !w.drained);
}

#[test]
fn failed_apply_rolls_back_then_undrains() {
    let host = Host(Rc::new(RefCell::new(world(false, false, true))));
    let end = run_to_end(&host, plan(true, false));
    assert!(matches!(end, State::RolledBack { .. }), "{end:?}");
    let w = host.0.borrow();
    assert!(w.rolled_back && !w.drained);
}

#[test]
fn resume_without_a_new_boot_id_requests_the_reboot_again() {
    let host = Host(Rc::new(RefCell::new(world(true, false, false))));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = runner(dir.path(), &host);
    assert_eq!(
        r.start("perf", plan(true, true)).ok(),
        Some(Progress::AwaitingReboot)
    );
    host.0.borrow_mut().reboot_requested = false;
    // no reboot happened: same boot id
    let mut r = runner(dir.path(), &host);
    assert_eq!(r.resume().ok(), Some(Some(Progress::AwaitingReboot)));
    assert!(
        host.0.borrow().reboot_requested,
        "the reboot is asked for again"
    );
    assert!(host.0.borrow().drained, "still drained while waiting");
    // now it reboots
    host.0.borrow_mut().boot_id = 7;
    let mut r = runner(dir.path(), &host);
    assert_eq!(r.resume().ok(), Some(Some(Progress::Finished(State::Done))));
    assert!(!host.0.borrow().drained);
}

#[test]
fn a_second_start_while_one_is_under_way_is_refused() {
    let host = Host(Rc::new(RefCell::new(world(true, false, false))));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = runner(dir.path(), &host);
    assert_eq!(
        r.start("perf", plan(false, true)).ok(),
        Some(Progress::AwaitingReboot)
    );
    assert!(matches!(
        r.start("other", plan(false, false)),
        Err(FlowError::Busy { .. })
    ));
}

#[test]
fn the_state_file_round_trips_and_unexpected_events_are_refused() {
    let flow = Flow::request("perf", plan(true, true));
    let json = serde_json::to_string(&flow).expect("serialise");
    let back: Flow = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, flow);
    assert!(flow.step(Event::Undrained).is_err());
    let draining = flow.step(Event::Start).expect("start");
    assert_eq!(draining.state, State::Draining);
}

#[test]
fn verify_failure_leaves_the_host_drained() {
    // a reboot-needing plan whose applier says no reboot is needed: verify finds it pending
    let flow = Flow::request("perf", plan(true, false));
    let f = flow.step(Event::Start).expect("start");
    let f = f.step(Event::DrainDone).expect("drained");
    let f = f
        .step(Event::Applied {
            reboot_required: false,
            boot_id: "b".into(),
        })
        .expect("applied");
    let f = f
        .step(Event::Verified {
            pending: vec!["isolcpus".into()],
        })
        .expect("verified");
    assert!(matches!(
        f.state,
        State::Failed {
            at: Stage::Verifying,
            ..
        }
    ));
    assert!(f.is_finished());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// A crash before any action of any run gives, after resuming, the same end state and
    /// the same host as an uninterrupted run.
    #[test]
    fn crash_anywhere_then_resume_ends_like_an_uninterrupted_run(
        drain in any::<bool>(),
        reboot in any::<bool>(),
        refuse in any::<bool>(),
        fail in any::<bool>(),
        crash_at in 1u32..24,
    ) {
        let clean = Host(Rc::new(RefCell::new(world(reboot, refuse, fail))));
        let expected = run_to_end(&clean, plan(drain, reboot));

        let mut w = world(reboot, refuse, fail);
        w.crash_at = Some(crash_at);
        let crashed = Host(Rc::new(RefCell::new(w)));
        let got = run_to_end(&crashed, plan(drain, reboot));
        prop_assert_eq!(&got, &expected);
        let (a, b) = (clean.0.borrow(), crashed.0.borrow());
        prop_assert_eq!((a.drained, a.applied, a.rolled_back, a.boot_id),
                        (b.drained, b.applied, b.rolled_back, b.boot_id));
    }
}

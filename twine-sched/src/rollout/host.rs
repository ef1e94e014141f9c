//! The host side of a rollout as traits the integrator implements, and a driver that
//! carries out [`Action::Do`] through them.
//!
//! [`Runner`] itself never blocks: it returns actions and takes reports, so a simulator
//! or an asynchronous control plane can run hosts in parallel. An integrator whose host
//! actions are plain calls (an agent RPC that installs packages, reboots and answers a
//! health check) implements [`HostActions`] and hands each `Do` to
//! [`Runner::perform`].

use super::{Action, HostStep, RolloutError, Runner};
use crate::allocator::Allocator;
use crate::fleet::HostId;

/// What a rollout does to one host, implemented by the integrator.
pub trait HostActions {
    /// Why an action failed.
    type Error: std::error::Error;
    /// Installs the update's packages on `host`.
    fn update(&mut self, host: HostId) -> Result<(), Self::Error>;
    /// Reboots `host` into them (only for updates that need a reboot).
    fn reboot(&mut self, host: HostId) -> Result<(), Self::Error>;
    /// Whether `host` is healthy after the update.
    fn healthy(&mut self, host: HostId) -> Result<bool, Self::Error>;
}

impl Runner {
    /// Carries out `step` on `host` through `actions` and reports it at `now_ms`;
    /// returns what follows. An action that fails, or a host found unhealthy, fails the
    /// host (it is then in the trailing report with [`Blocker::FailedHealthCheck`](super::Blocker::FailedHealthCheck)),
    /// with the error in [`Action::StepFailed`]; it does not stop the rollout.
    pub fn perform<A: HostActions>(
        &mut self,
        alloc: &mut Allocator,
        actions: &mut A,
        host: HostId,
        step: HostStep,
        now_ms: u64,
    ) -> Result<Vec<Action>, RolloutError> {
        let outcome = match step {
            HostStep::Update => actions.update(host).map(|()| true),
            HostStep::Reboot => actions.reboot(host).map(|()| true),
            HostStep::Verify => actions.healthy(host),
        };
        let (ok, failed) = match outcome {
            Ok(ok) => (ok, None),
            Err(e) => (false, Some(e.to_string())),
        };
        let mut out = Vec::new();
        if let Some(error) = failed {
            out.push(Action::StepFailed { host, step, error });
        }
        out.extend(self.report(alloc, host, step, ok, now_ms)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Blocker, PlanConfig, RolloutConfig, UpdateKind, plan, sim};

    /// Fails the reboot of one host; every other action succeeds.
    struct Hosts {
        bad: HostId,
        done: Vec<(HostId, HostStep)>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no response after reboot")]
    struct NoResponse;

    impl HostActions for Hosts {
        type Error = NoResponse;
        fn update(&mut self, host: HostId) -> Result<(), NoResponse> {
            self.done.push((host, HostStep::Update));
            Ok(())
        }
        fn reboot(&mut self, host: HostId) -> Result<(), NoResponse> {
            self.done.push((host, HostStep::Reboot));
            if host == self.bad {
                Err(NoResponse)
            } else {
                Ok(())
            }
        }
        fn healthy(&mut self, host: HostId) -> Result<bool, NoResponse> {
            self.done.push((host, HostStep::Verify));
            Ok(true)
        }
    }

    #[test]
    fn actions_go_through_the_trait_and_a_failure_fails_only_its_host() {
        let (mut alloc, _) = sim::fleet(120).unwrap();
        let waves = plan(&alloc, &PlanConfig::default()).unwrap();
        let bad = waves.waves[1].hosts[0];
        let mut runner =
            Runner::new(&alloc, waves, RolloutConfig::new(UpdateKind::Reboot)).unwrap();
        let mut hosts = Hosts {
            bad,
            done: Vec::new(),
        };
        let mut failed = Vec::new();
        let mut now = 0;
        let mut todo = runner.step(&mut alloc, now).unwrap();
        // Empty hosts drain at once; hosts with tasks need their jobs' answers.
        for _ in 0..100_000 {
            let Some(action) = todo.pop() else {
                now += 60_000;
                todo = runner.step(&mut alloc, now).unwrap();
                if todo.is_empty() && runner.next_wakeup().is_none() {
                    break;
                }
                continue;
            };
            now += 1;
            match action {
                Action::Do { host, step } => {
                    todo.extend(
                        runner
                            .perform(&mut alloc, &mut hosts, host, step, now)
                            .unwrap(),
                    );
                }
                Action::CheckGate { wave } => {
                    todo.extend(runner.gate(&mut alloc, wave, true, now).unwrap());
                }
                Action::Consult { host } => {
                    for req in runner.requests(host).unwrap() {
                        let ack = req.request.iter().map(|op| op.id).collect();
                        let resp = crate::taskcontrol::TaskControlResponse {
                            sequence: req.sequence,
                            ack,
                        };
                        todo.extend(
                            runner
                                .respond(&mut alloc, host, req.job, resp, now)
                                .unwrap(),
                        );
                    }
                }
                Action::StepFailed { host, step, error } => failed.push((host, step, error)),
                _ => {}
            }
        }
        assert_eq!(
            failed,
            [(bad, HostStep::Reboot, "no response after reboot".to_owned())]
        );
        assert_eq!(runner.updated().len(), 119);
        let trailing = runner.trailing(&alloc).unwrap();
        assert_eq!(trailing.len(), 1);
        assert_eq!(
            (trailing[0].host, &trailing[0].blocker),
            (bad, &Blocker::FailedHealthCheck)
        );
        assert!(
            !hosts.done.contains(&(bad, HostStep::Verify)),
            "a failed reboot is not verified"
        );
    }
}

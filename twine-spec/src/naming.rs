//! The names of a job's units.
//!
//! For job `web`: `web.target` groups the job, `web.service` is the main command,
//! `web-pre-STEP.service` and `web-sidecar-NAME.service` are the steps and
//! sidecars, `web-health.service` and `.timer` run the probe. Every component is
//! escaped as `systemd-escape` does, which turns any `-` in a name into `\x2d`, so
//! the fixed `-pre-`/`-sidecar-` separators cannot be forged by a name.

use crate::job::Task;
use crate::unit::{UnitKind, UnitName};

/// The unit names of one job.
#[derive(Debug, Clone)]
pub(crate) struct UnitNames {
    pub(crate) target: UnitName,
    pub(crate) main: UnitName,
    pub(crate) prestart: Vec<UnitName>,
    pub(crate) sidecars: Vec<UnitName>,
    pub(crate) health: Option<(UnitName, UnitName)>,
}

impl UnitNames {
    pub(crate) fn new(job: &str, task: &Task) -> UnitNames {
        UnitNames {
            target: UnitName::new(&[job], UnitKind::Target),
            main: UnitName::new(&[job], UnitKind::Service),
            prestart: task
                .prestart
                .iter()
                .map(|s| UnitName::new(&[job, "pre", &s.name], UnitKind::Service))
                .collect(),
            sidecars: task
                .sidecars
                .iter()
                .map(|s| UnitName::new(&[job, "sidecar", &s.name], UnitKind::Service))
                .collect(),
            health: task.health_check.as_ref().map(|_| {
                (
                    UnitName::new(&[job, "health"], UnitKind::Service),
                    UnitName::new(&[job, "health"], UnitKind::Timer),
                )
            }),
        }
    }

    /// Every name with the spec field it comes from, for validation messages.
    pub(crate) fn all_with_fields(&self) -> Vec<(String, &UnitName)> {
        let mut all = vec![
            ("name".to_owned(), &self.target),
            ("name".to_owned(), &self.main),
        ];
        all.extend(
            self.prestart
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("task.prestart[{i}].name"), n)),
        );
        all.extend(
            self.sidecars
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("task.sidecars[{i}].name"), n)),
        );
        if let Some((service, timer)) = &self.health {
            all.push(("task.health_check".to_owned(), service));
            all.push(("task.health_check".to_owned(), timer));
        }
        all
    }
}

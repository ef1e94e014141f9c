//! Which cgroups the daemon sizes now: the selection resolved against the tree each tick
//! (cgroups join and leave), and the walk below a cgroup that globs and kill rules use.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Daemon, Record, Selection, Watched, empty_record, restore_high};
use crate::cgroup::{Cgroup, CgroupError};
use crate::memory::{Limit, LimitFile, SnapshotReader};
use crate::senpai::{Action, Mode, SenpaiConfig, SenpaiState};

/// A cgroup joining: the cgroup, its parameters, and whether the mode was given.
pub(super) type Join = (Cgroup, SenpaiConfig, bool);

impl Daemon {
    /// Brings the sized set in line with the selection; `tree` is every cgroup below the
    /// root (`descendants`) for a config's globs.
    pub(super) fn resolve(&mut self, now: Duration, tree: &[Cgroup], records: &mut Vec<Record>) {
        let wanted = match self.wanted(tree) {
            Ok(wanted) => wanted,
            Err(error) => {
                tracing::warn!(%error, "could not list the selected cgroups; keeping the last set");
                return;
            }
        };
        let left: Vec<String> = self
            .watched
            .keys()
            .filter(|rel| !wanted.contains_key(*rel))
            .cloned()
            .collect();
        for rel in left {
            tracing::info!(cgroup = %rel, "cgroup left the selection (gone or no longer matched)");
            self.leave(&rel);
        }
        self.failed.retain(|rel| wanted.contains_key(rel));
        for (rel, join) in wanted {
            let Some((cgroup, mut senpai, mode_given)) = join else {
                continue; // sized already
            };
            if !mode_given {
                senpai.mode = if cgroup.path().join("memory.reclaim").exists() {
                    Mode::Reclaim
                } else {
                    Mode::High
                };
            }
            match SnapshotReader::new(&cgroup) {
                Ok(reader) => {
                    tracing::info!(cgroup = %rel, mode = ?senpai.mode, "cgroup joined");
                    self.failed.remove(&rel);
                    if senpai.mode == Mode::Reclaim
                        && let Some(original) = self.originals.get(&rel)
                    {
                        // A killed high-mode predecessor lowered it; reclaim mode must not
                        // run under that throttle.
                        let mut record = empty_record(now, &rel, Mode::Reclaim);
                        record.action = Action::RestoreHigh(original);
                        let result =
                            restore_high(&mut self.writer, &cgroup, original, &self.options);
                        self.finish_restore(&rel, &mut record, result);
                        if let Err(error) = self.originals.save() {
                            record.error = Some(error.to_string());
                        }
                        records.push(record);
                    }
                    let swap_max_zero =
                        matches!(cgroup.limit(LimitFile::SwapMax), Ok(Limit::Bytes(0)));
                    let watched = Watched {
                        cgroup,
                        reader,
                        senpai,
                        state: SenpaiState::default(),
                        swap_max_zero,
                        last_total: None,
                        pending: None,
                    };
                    self.watched.insert(rel, watched);
                }
                Err(error) => {
                    if self.failed.insert(rel.clone()) {
                        tracing::warn!(cgroup = %rel, %error, "cannot watch cgroup; retrying each tick");
                    }
                    let mut record = empty_record(now, &rel, senpai.mode);
                    record.error = Some(error.to_string());
                    records.push(record);
                }
            }
        }
    }

    /// The selected cgroups now; for those not sized yet, the cgroup, its parameters and
    /// whether the mode was given.
    fn wanted(&self, tree: &[Cgroup]) -> Result<BTreeMap<String, Option<Join>>, CgroupError> {
        let mut wanted = BTreeMap::new();
        match &self.options.selection {
            Selection::Cgroups(paths) => {
                for rel in paths {
                    if let Some(watched) = self.watched.get(rel) {
                        if watched.cgroup.path().is_dir() {
                            wanted.insert(rel.clone(), None);
                        }
                        continue;
                    }
                    let cgroup = self.options.root.cgroup(rel)?;
                    if cgroup.path().is_dir() {
                        let mode_given = self.options.mode.is_some();
                        let join = (cgroup, self.options.senpai.clone(), mode_given);
                        wanted.insert(rel.clone(), Some(join));
                    }
                }
            }
            Selection::Config(config) => {
                for cgroup in tree {
                    let Some(rel) = cgroup.relative().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if let Some(resize) = config.resize_for(&rel) {
                        let join = (!self.watched.contains_key(&rel))
                            .then(|| (cgroup.clone(), resize.senpai.clone(), resize.mode_given));
                        wanted.insert(rel, join);
                    }
                }
            }
        }
        Ok(wanted)
    }
}

/// Every cgroup below `top` (not `top` itself), parents first; a directory that vanishes
/// while listed is skipped.
pub(super) fn descendants(top: &Cgroup) -> Vec<Cgroup> {
    let mut out = Vec::new();
    let mut stack = vec![top.clone()];
    while let Some(cgroup) = stack.pop() {
        match cgroup.children() {
            Ok(children) => {
                for child in children.into_iter().rev() {
                    out.push(child.clone());
                    stack.push(child);
                }
            }
            Err(error) => tracing::debug!(%error, "skipping a cgroup that could not be listed"),
        }
    }
    out
}

//! `twine profile plan | apply | resume | verify | rollback | import-tuned`: host profiles of
//! twine-profiles on the command line.
//!
//! Every error is one `path: message` line on stderr and exit 1; `--json` prints one JSON
//! object on stdout.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use twine_profiles::apply::{
    self, ApplyPolicy, ApplyReport, BootItem, MissingKeys, RollbackReport, VerifyReport,
};
use twine_profiles::change::Plan;
use twine_profiles::host::HostRoot;
use twine_profiles::plan::plan;
use twine_profiles::profile::{Format, MissingKeyPolicy, Profile};
use twine_profiles::tuned;

use crate::{Problems, problem};

/// Applies are journalled: the sentence every writing subcommand's help carries.
const JOURNAL_NOTE: &str = "Every write is recorded (with the value it replaces) in \
ROOT/var/lib/twine/profiles/state.json before it is made and read back after: an apply \
that fails or is interrupted leaves nothing unrecorded, and `twine profile resume` \
finishes it or `twine profile rollback` restores exactly what it changed.";

/// The `twine profile` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum ProfileCommand {
    /// Print the changes that bring the host to PROFILE, each with its effect (live,
    /// live-restart-jobs or reboot), and whether the host must be drained and rebooted.
    /// Reads only.
    Plan(PlanArgs),
    /// Plan PROFILE against the host and apply it: sysctls live and in
    /// etc/sysctl.d/90-twine.conf, hugepages, THP, the governor and sysfs live, command-line
    /// arguments in the boot config (they take effect at the next boot).
    #[command(after_help = JOURNAL_NOTE)]
    Apply(PlanArgs),
    /// Finish an apply that failed or was interrupted, from its first unfinished write.
    #[command(after_help = JOURNAL_NOTE)]
    Resume(RootArgs),
    /// Check what twine applied: boot-time settings pending (in the boot config, not yet
    /// in the booted command line) or in effect, and writes that no longer read back.
    /// Exits 0 even when some are pending; see the report.
    Verify(RootArgs),
    /// Restore every value twine changed since the last rollback, exactly, and nothing
    /// else; without a journal there is nothing to do.
    #[command(after_help = JOURNAL_NOTE)]
    Rollback(RootArgs),
    /// Convert a TuneD profile directory (tuned.conf, include= resolved against sibling
    /// directories) into a twine profile. Every option that cannot be expressed is listed
    /// on stderr as `section.option = value: reason`; exit 0 whenever a profile was
    /// written, non-zero only when none could be (unreadable directory, broken or
    /// circular include chain).
    ImportTuned(ImportArgs),
}

/// `--root` and `--json`.
#[derive(clap::Args)]
pub(crate) struct RootArgs {
    /// Read and write every host path (/proc/sys, /sys, /etc, the journal under /var/lib)
    /// under DIR instead of / (a fixture, or a host tree mounted elsewhere).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// The arguments of `plan` and `apply`.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// The profile file (.toml, .json, .yaml, .yml); `inherits` names sibling files.
    profile: PathBuf,
    #[command(flatten)]
    root: RootArgs,
    /// Jobs are running on the host (default: not): a 2 MiB hugepage-count change is then
    /// live-restart-jobs instead of live, and so is a reason to drain. The CLI cannot know
    /// it; the host agent does.
    #[arg(long)]
    jobs_running: bool,
}

/// The arguments of `import-tuned`.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The TuneD profile directory (e.g. /usr/lib/tuned/throughput-performance).
    dir: PathBuf,
    /// Write the twine profile to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Runs a `twine profile` subcommand.
pub(crate) fn profile(command: ProfileCommand) -> Result<(), Problems> {
    match command {
        ProfileCommand::Plan(args) => plan_cmd(&args),
        ProfileCommand::Apply(args) => apply_cmd(&args),
        ProfileCommand::Resume(args) => resume_cmd(&args),
        ProfileCommand::Verify(args) => verify_cmd(&args),
        ProfileCommand::Rollback(args) => rollback_cmd(&args),
        ProfileCommand::ImportTuned(args) => import_cmd(&args),
    }
}

/// `--root`, checked to be a directory, or the real `/`.
fn host_root(args: &RootArgs) -> Result<HostRoot, Problems> {
    match &args.root {
        Some(dir) if dir.is_dir() => Ok(HostRoot::at(dir)),
        Some(dir) => Err(problem(format!("{}: not a directory", dir.display()))),
        None => Ok(HostRoot::real()),
    }
}

/// A library error after the file or root it concerns, as `path: message`.
fn at(path: &Path, e: impl std::fmt::Display) -> Problems {
    let message = e.to_string();
    let shown = path.display().to_string();
    // Profile errors already start with their file.
    if message.starts_with(&format!("{shown}:")) {
        problem(message)
    } else {
        problem(format!("{shown}: {message}"))
    }
}

/// Loads the profile and plans it against the root.
fn planned(args: &PlanArgs) -> Result<(HostRoot, Profile, Plan), Problems> {
    let root = host_root(&args.root)?;
    let profile = Profile::load(&args.profile).map_err(|e| at(&args.profile, e))?;
    let settings: Vec<_> = profile.desired().into_keys().collect();
    let facts = root
        .facts(&settings, args.jobs_running)
        .map_err(|e| at(root.dir(), e))?;
    let p = plan(&facts, &profile);
    Ok((root, profile, p))
}

fn plan_cmd(args: &PlanArgs) -> Result<(), Problems> {
    let (_, _, p) = planned(args)?;
    if args.root.json {
        say!("{}", p.to_json());
    } else {
        print_plan(&p);
    }
    Ok(())
}

/// The plan as a table, then the drain and reboot verdicts.
fn print_plan(p: &Plan) {
    if p.is_empty() {
        say!("no changes: the host has the profile");
        return;
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".to_owned());
    let rows: Vec<[String; 5]> = p
        .changes
        .iter()
        .map(|c| {
            [
                c.setting.kind().to_owned(),
                c.setting.to_string(),
                show(&c.from),
                show(&c.to),
                c.effect.to_string(),
            ]
        })
        .collect();
    let header = ["KIND", "KEY", "FROM", "TO", "EFFECT"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().min(40));
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{:w$}", cell.replace('\n', "\\n")))
            .collect();
        say!("{}", cells.join("  ").trim_end());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    say!(
        "{} change(s); drain first: {}; reboot: {}",
        p.changes.len(),
        yes(p.drain),
        yes(p.reboot)
    );
}

fn policy(profile: &Profile) -> ApplyPolicy {
    let missing = match profile.on_missing_key() {
        MissingKeyPolicy::Skip => MissingKeys::Skip,
        _ => MissingKeys::Fail,
    };
    ApplyPolicy::new(missing, profile.allow_reboot())
}

fn apply_cmd(args: &PlanArgs) -> Result<(), Problems> {
    let (root, profile, p) = planned(args)?;
    let report = apply::apply(&root, &p, policy(&profile)).map_err(|e| at(&args.profile, e))?;
    if args.root.json {
        let mut out = apply_json(&report);
        out["plan"] = p.to_json();
        say!("{out}");
    } else {
        say!("applied {} change(s)", p.changes.len());
        print_apply(&report);
    }
    Ok(())
}

fn resume_cmd(args: &RootArgs) -> Result<(), Problems> {
    let root = host_root(args)?;
    let report = apply::resume(&root).map_err(|e| at(root.dir(), e))?;
    if args.json {
        say!("{}", apply_json(&report));
    } else {
        say!("resumed: the apply is finished");
        print_apply(&report);
    }
    Ok(())
}

fn boot_items(items: &[BootItem]) -> Value {
    items
        .iter()
        .map(|i| json!({"kind": i.setting.kind(), "key": i.setting.to_string(), "value": i.value}))
        .collect()
}

fn apply_json(r: &ApplyReport) -> Value {
    json!({
        "skipped": r.skipped.iter().map(|s| json!({"kind": s.kind(), "key": s.to_string()})).collect::<Vec<_>>(),
        "partial": r.partial.iter().map(|p| json!({
            "kind": p.setting.kind(), "key": p.setting.to_string(),
            "path": p.path, "wanted": p.wanted, "got": p.got,
        })).collect::<Vec<_>>(),
        "pending_boot": boot_items(&r.pending_boot),
        "reboot_required": r.reboot_required,
        "daemon_reload": r.daemon_reload,
        "networkd_reload": r.networkd_reload,
    })
}

fn print_apply(r: &ApplyReport) {
    for s in &r.skipped {
        say!("skipped (not on this kernel): {} {s}", s.kind());
    }
    for p in &r.partial {
        say!(
            "partial: {} {}: the kernel gave {} of {} pages; the rest moved to the boot command line",
            p.setting.kind(),
            p.setting,
            p.got,
            p.wanted
        );
    }
    for i in &r.pending_boot {
        say!(
            "pending until reboot: {} {} = {}",
            i.setting.kind(),
            i.setting,
            i.value.as_deref().unwrap_or("(absent)")
        );
    }
    if r.reboot_required {
        say!("reboot required");
    }
    if r.daemon_reload {
        say!("run: systemctl daemon-reload");
    }
    if r.networkd_reload {
        say!("run: networkctl reload");
    }
}

fn verify_cmd(args: &RootArgs) -> Result<(), Problems> {
    let root = host_root(args)?;
    let VerifyReport {
        pending,
        done,
        drifted,
        ..
    } = apply::verify(&root).map_err(|e| at(root.dir(), e))?;
    if args.json {
        let drifted: Vec<Value> = drifted
            .iter()
            .map(|d| {
                json!({
                    "kind": d.setting.as_ref().map(|s| s.kind()),
                    "key": d.setting.as_ref().map(ToString::to_string),
                    "path": d.path, "wanted": d.wanted, "found": d.found,
                })
            })
            .collect();
        say!(
            "{}",
            json!({"pending": boot_items(&pending), "done": boot_items(&done), "drifted": drifted})
        );
        return Ok(());
    }
    for (label, items) in [("pending until reboot", &pending), ("in effect", &done)] {
        for i in items {
            say!(
                "{label}: {} {} = {}",
                i.setting.kind(),
                i.setting,
                i.value.as_deref().unwrap_or("(absent)")
            );
        }
    }
    for d in &drifted {
        say!(
            "drifted: {}: wrote {:?}, holds {:?}",
            d.path.display(),
            d.wanted,
            d.found
        );
    }
    if pending.is_empty() && drifted.is_empty() {
        say!("verified: everything twine applied is in effect");
    }
    Ok(())
}

fn rollback_cmd(args: &RootArgs) -> Result<(), Problems> {
    let root = host_root(args)?;
    let RollbackReport {
        restored,
        reboot_required,
        daemon_reload,
        networkd_reload,
        ..
    } = apply::rollback(&root).map_err(|e| at(root.dir(), e))?;
    if args.json {
        say!(
            "{}",
            json!({
                "restored": restored, "reboot_required": reboot_required,
                "daemon_reload": daemon_reload, "networkd_reload": networkd_reload,
            })
        );
        return Ok(());
    }
    say!("restored {restored} value(s)");
    if reboot_required {
        say!("reboot required: the booted command line still has twine's arguments");
    }
    if daemon_reload {
        say!("run: systemctl daemon-reload");
    }
    if networkd_reload {
        say!("run: networkctl reload");
    }
    Ok(())
}

fn import_cmd(args: &ImportArgs) -> Result<(), Problems> {
    let imported = tuned::import_tuned(&args.dir).map_err(|e| at(&args.dir, e))?;
    // The written profile must be one twine reads: refuse to write one it would not.
    Profile::from_str(&imported.profile_toml, Format::Toml).map_err(|e| {
        at(
            &args.dir,
            format!("the imported profile does not load: {e}"),
        )
    })?;
    match &args.out {
        Some(out) => std::fs::write(out, &imported.profile_toml).map_err(|e| at(out, e))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(imported.profile_toml.as_bytes()).is_err() {
                std::process::exit(0);
            }
        }
    }
    for d in &imported.dropped {
        let what = if d.option.is_empty() {
            d.section.clone()
        } else {
            format!("{}.{} = {}", d.section, d.option, d.value)
        };
        eprintln!("{what}: {}", d.reason);
    }
    Ok(())
}

//! `twine demo`: the whole suite composed on an embedded default region, with no root
//! and no network. A region of hosts is built in code; built-in jobs are admitted to
//! their entitlements and placed; the hosts the web service needs switch profile through
//! twine-profiles against directory host roots; the units of each job are rendered and
//! checked; a rack is drained through TaskControl and a host update rolled out; the
//! resizer sizes one task's memory. A summary goes to stdout, progress to stderr, and a
//! report (Markdown, SVG plots, `summary.json`) to the output directory.

mod jobs;
mod maintenance;
mod region;
mod report;
mod steps;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{Problems, problem};

/// The arguments of `twine demo`.
#[derive(clap::Args)]
#[command(after_help = "\
The region: 20,000 small hosts (18 cores, 64 GiB), 800 big stacking hosts (96 cores, 384 GiB) \
and 200 GPU hosts (64 cores, 512 GiB, 8 GPUs), 40 to a rack, 25 racks to a power domain, 10 \
power domains to a datacenter; entitlements frontend, batch and ml; host profiles default, \
web and hugepages.

The report in --out: report.md, summary.json, entitlements.svg, utilisation.svg, rollout.svg, \
memory.svg, and the host roots the profile switches were applied to (host-roots/).")]
pub(crate) struct DemoArgs {
    /// Where the report goes: a new or empty directory [default: ./twine-demo, which a
    /// later run without --out replaces if it holds a previous demo's report].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Small hosts in the region (for quick tests; big and GPU hosts scale with it).
    #[arg(long, hide = true, default_value_t = 20_000)]
    small_hosts: usize,
}

/// Prints a line to stdout; a closed pipe ends quietly.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Progress of the slow steps, on stderr.
pub(crate) struct Progress {
    start: Instant,
    step: Instant,
    n: usize,
}

/// Steps the demo reports progress on.
const STEPS: usize = 7;

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            step: Instant::now(),
            n: 0,
        }
    }
    /// A step begins.
    pub(crate) fn begin(&mut self, what: &str) {
        self.n += 1;
        self.step = Instant::now();
        eprint!("[{}/{STEPS}] {what} ... ", self.n);
        let _ = std::io::stderr().flush();
    }
    /// The step ended.
    pub(crate) fn end(&mut self) {
        eprintln!("done in {:.1} s", self.step.elapsed().as_secs_f64());
    }
}

/// `twine demo`.
pub(crate) fn demo(args: &DemoArgs) -> Result<(), Problems> {
    if args.small_hosts < 1_000 {
        return Err(problem(format!(
            "--small-hosts: at least 1000 (got {})",
            args.small_hosts
        )));
    }
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            let dir = PathBuf::from(DEFAULT_OUT);
            replace_previous_report(&dir)?;
            dir
        }
    };
    prepare_out(&out)?;
    std::fs::write(
        out.join(MARKER),
        b"a twine demo report; `twine demo` without --out may replace this directory\n",
    )
    .map_err(|e| problem(format!("{}: cannot be written: {e}", out.display())))?;
    let mut progress = Progress::new();
    let outcome = steps::run(args.small_hosts, &out, &mut progress)
        .map_err(|e| problem(format!("{}: {e}", out.display())))?;
    progress.begin("writing the report");
    report::write(&out, &outcome).map_err(|e| problem(format!("{}: {e}", out.display())))?;
    progress.end();
    eprintln!(
        "demo finished in {:.1} s",
        progress.start.elapsed().as_secs_f64()
    );
    for line in report::summary_lines(&outcome, &out) {
        say!("{line}");
    }
    Ok(())
}

/// The report's directory when `--out` is not given.
const DEFAULT_OUT: &str = "twine-demo";
/// Marks a directory the demo wrote, so a later run without `--out` may replace it.
const MARKER: &str = ".twine-demo";

/// Without `--out`, the default directory is replaced if a previous demo wrote it (it
/// holds the marker); anything else there is left alone and refused by [`prepare_out`].
fn replace_previous_report(dir: &Path) -> Result<(), Problems> {
    if dir.join(MARKER).is_file() {
        std::fs::remove_dir_all(dir).map_err(|e| {
            problem(format!(
                "{}: cannot replace the previous report: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

/// The output directory must be new or empty, and writable: checked before any work.
fn prepare_out(out: &Path) -> Result<(), Problems> {
    let shown = out.display();
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => {
            return Err(problem(format!("{shown}: exists and is not a directory")));
        }
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(out).map_err(|e| problem(format!("{shown}: {e}")))?;
            if entries.next().is_some() {
                return Err(problem(format!(
                    "{shown}: exists and is not empty (the demo writes its report into a new or empty directory)"
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out)
                .map_err(|e| problem(format!("{shown}: cannot create the directory: {e}")))?;
        }
        Err(e) => return Err(problem(format!("{shown}: {e}"))),
    }
    let probe = out.join(".twine-demo-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| problem(format!("{shown}: cannot be written: {e}")))?;
    Ok(())
}

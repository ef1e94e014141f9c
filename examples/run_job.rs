//! Running a job with the agent: twine-agent boots a container on a rootfs with systemd as
//! PID 1, installs the job's units (translated by twine-spec) and starts them over D-Bus,
//! streams the job's log lines, and when the job has exited powers the container off and
//! removes it.
//!
//! ```sh
//! sudo -E cargo run --example run_job                       # rootfs from `cargo xtask rootfs`
//! sudo -E cargo run --example run_job -- /path/to/rootfs    # any rootfs with systemd
//! ```
//!
//! It needs root and a rootfs with systemd (`/var/tmp/twine-cache/rootfs-bookworm`, made by
//! `cargo xtask rootfs`, unless given as the argument or in `TWINE_ROOTFS`). Without them it
//! prints why it skipped and exits 0, or fails if `TWINE_REQUIRE_REALSYS=1`. A long-running
//! job is stopped with `JobHandle::stop`, by its kill policy; `twine agent run` and
//! `twine agent daemon` are the same agent on the command line.
#![allow(clippy::print_stdout)] // an example: its output is the point

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use twine::agent::agent::{Agent, AgentSettings};
use twine::agent::state::StateDir;
use twine::spec::JobSpec;

/// The job; its name gets this process's id, so runs side by side (as under `cargo test`)
/// do not meet on one container name.
const SPEC: &str = r#"
name = "hello_PID"
entitlement = "examples"
[task]
command = ["/bin/sh", "-c", "echo hello from a twine container; cat /etc/os-release | head -1"]
[task.restart]
policy = "never"
"#;

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let rootfs = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("TWINE_ROOTFS"))
        .map_or_else(
            || PathBuf::from("/var/tmp/twine-cache/rootfs-bookworm"),
            PathBuf::from,
        );
    let missing = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root (namespaces, mounts, cgroups)".to_owned())
    } else if !rootfs.join("usr/lib/systemd/systemd").exists()
        && !rootfs.join("lib/systemd/systemd").exists()
    {
        Some(format!(
            "no rootfs with systemd at {} (cargo xtask rootfs makes one)",
            rootfs.display()
        ))
    } else {
        None
    };
    if let Some(why) = missing {
        if std::env::var_os("TWINE_REQUIRE_REALSYS").is_some_and(|v| v == "1") {
            return Err(format!("run_job: {why}, and TWINE_REQUIRE_REALSYS=1").into());
        }
        println!("run_job: skipped: {why}");
        return Ok(ExitCode::SUCCESS);
    }

    let state_dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let state = runtime.block_on(async {
        let agent = Agent::open(StateDir::new(state_dir.path()), AgentSettings::new(&rootfs))?;
        let mut handle = agent
            .run(JobSpec::from_toml(
                &SPEC.replace("PID", &std::process::id().to_string()),
            )?)
            .await?;
        // A job that does not end in a minute is stopped by its kill policy.
        let stop = handle.stopper();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop();
        });
        if let Some(mut lines) = handle.take_lines() {
            tokio::spawn(async move {
                while let Some(line) = lines.recv().await {
                    println!("{}: {}", line.unit, line.message);
                }
            });
        }
        let state = handle.wait().await?;
        Ok::<_, Box<dyn std::error::Error>>(state)
    })?;
    println!("job ended: {state:?}");
    Ok(ExitCode::SUCCESS)
}

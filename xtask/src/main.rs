//! `cargo xtask`: the real-system harness of the twine workspace.
//!
//! Sub-commands are split by concept: `rootfs` (the cached Debian rootfs that the
//! nspawn tests boot), `test` (the README's test command: set-up, then every tier),
//! `guest-test` (the QEMU guest tier) and `guest-run` (one command in that guest). See
//! `docs/GUEST.md`.

// A command-line tool: its results (a path, step timings) go to stdout by design.
#![allow(clippy::print_stdout)]

mod debian;
mod guest;
mod rootfs;
mod test_binaries;
mod test_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "twine's real-system harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build (or reuse) the cached Debian bookworm rootfs and print its path.
    Rootfs {
        /// Rebuild even when the cached tree is current.
        #[arg(long)]
        force: bool,
    },
    /// The test command: set-up (as root), `cargo test --workspace`, then the guest tier.
    Test {
        /// Limit in seconds for the guest tier's guest run (boot, tests, power-off).
        #[arg(long, default_value_t = 600, env = "TWINE_GUEST_TIMEOUT")]
        guest_timeout: u64,
    },
    /// Run the guest-only tests (`guest_*`, ignored on the host) in a QEMU guest with systemd.
    GuestTest {
        /// Package whose tests to search (repeatable); default: the whole workspace.
        #[arg(short = 'p', long = "package")]
        packages: Vec<String>,
        #[command(flatten)]
        guest: GuestArgs,
        /// Arguments for the test binaries: filters, `--nocapture`, ...
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Boot the guest and run one command as root in the workspace directory; exits with its status.
    GuestRun {
        #[command(flatten)]
        guest: GuestArgs,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
}

/// Options of every guest boot (`guest-test`, `guest-run`).
#[derive(clap::Args)]
struct GuestArgs {
    /// Limit in seconds for the whole guest run (boot, command, power-off).
    #[arg(long, default_value_t = 600, env = "TWINE_GUEST_TIMEOUT")]
    timeout: u64,
    /// Guest RAM (QEMU `-m` syntax).
    #[arg(long, default_value = guest::GUEST_MEMORY)]
    memory: String,
    /// Extra host directory to share with the guest at the same path (repeatable).
    #[arg(long = "share")]
    shares: Vec<std::path::PathBuf>,
}

impl From<GuestArgs> for guest::GuestOptions {
    fn from(args: GuestArgs) -> Self {
        Self {
            timeout: std::time::Duration::from_secs(args.timeout),
            memory: args.memory,
            shares: args.shares,
        }
    }
}

/// Whether the real-system tiers are required (`TWINE_REQUIRE_REALSYS=1`, as CI sets it):
/// then a missing prerequisite, or a tier that finds no tests, fails instead of skipping.
pub(crate) fn require_realsys() -> bool {
    std::env::var_os("TWINE_REQUIRE_REALSYS").is_some_and(|v| v == "1")
}

fn main() {
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Rootfs { force } => {
            let path = rootfs::ensure(force)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Test { guest_timeout } => {
            std::process::exit(test_cmd::run(std::time::Duration::from_secs(guest_timeout)))
        }
        Command::GuestTest {
            packages,
            guest,
            test_args,
        } => {
            let code = guest::run(&guest::GuestTest {
                packages,
                test_args,
                guest: guest.into(),
            })?;
            std::process::exit(code)
        }
        Command::GuestRun { guest, argv } => {
            let code = guest::run_command(&guest::GuestRun {
                argv,
                guest: guest.into(),
            })?;
            std::process::exit(code)
        }
    }
}

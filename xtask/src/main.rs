//! `cargo xtask`: the real-system harness of the twine workspace.
//!
//! Sub-commands are split by concept: `rootfs` (the cached Debian rootfs that the
//! nspawn tests boot), `test` (the README's test command: set-up, then every tier),
//! and `guest-test` (the QEMU guest tier). See `docs/GUEST.md`.

// A command-line tool: its results (a path, step timings) go to stdout by design.
#![allow(clippy::print_stdout)]

mod debian;
mod rootfs;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rootfs { force } => {
            let path = rootfs::ensure(force)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

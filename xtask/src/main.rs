//! `cargo xtask`: the real-system harness of the twine workspace.
//!
//! Sub-commands are split by concept: `rootfs` (the cached Debian rootfs that the
//! nspawn tests boot), `test` (the README's test command: set-up, then every tier),
//! and `guest` (the QEMU guest tier).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "twine's real-system harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Placeholder until the harness lands.
    Noop,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Noop => Ok(()),
    }
}

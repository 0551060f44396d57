//! The project's experiments: the chores that train, evaluate and time models. Run them
//! as `cargo xtask <command>` (the light `xtask` binary builds and runs this one), or
//! directly as `cargo run --release -p xtask-experiments -- <command>`.
//!
//! Each chore is a subcommand with its own module; add one by adding a variant to
//! [`Command`] and an arm to its `run`.
#![warn(missing_docs)]
// The argument structs' doc comments are `--help` text, written for a terminal: their
// `<dataset>` and `[default: …]` are neither HTML tags nor intra-doc links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

/// With `--features mimalloc`: mimalloc as the global allocator, to compare it with glibc
/// malloc. The `tulip` binary itself uses glibc malloc, re-executed with settings that keep
/// freed memory (`tulip_train::malloc`, called first thing in crates/tulip-cli/src/main.rs);
/// the bench's cases run with the same settings by default (`--malloc retain`), so the
/// default build measures what users run.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod gpu_check;
mod reproduce;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The experiments of Tulip-rs (run as `cargo xtask <command>`).
#[derive(Parser, Debug)]
#[command(name = "xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The chores.
#[derive(Subcommand, Debug)]
enum Command {
    /// Train, evaluate and attack the paper's grid of runs (experiments/paper/<profile>/),
    /// then write one results table and the robustness curves. Idempotent: finished steps
    /// are skipped and an unfinished run is resumed.
    ReproducePaper(reproduce::ReproduceArgs),
    /// Print the performance figures (s/step per training mode, eval throughput,
    /// gradient pass, nn-attack, peak memory) as a table and JSON; with --torch, beside
    /// the PyTorch reference run case by case on the same machine.
    Bench(bench::BenchArgs),
    /// The acceptance check of a GPU build (about 5 minutes on a GPU): training on the
    /// device against the CPU, the exact penalty's gradient against central differences
    /// on the device, step times beside PyTorch's; writes bench/gpu-check.json.
    /// `--device cpu` checks the GPU's code path (the portable ops) on the CPU.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// One benchmark case in its own process (used by `bench` and `gpu-check`).
    #[command(hide = true)]
    BenchCase(bench::CaseArgs),
}

impl Command {
    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::ReproducePaper(args) => reproduce::run(&args),
            Command::Bench(args) => bench::run(&args),
            Command::GpuCheck(args) => gpu_check::run(&args),
            Command::BenchCase(args) => bench::run_case(&args),
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}

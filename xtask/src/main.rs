//! `cargo xtask`: project chores that are not `cargo build`/`cargo test`.
//!
//! This binary is kept light (no Candle, no model crates), so that `cargo xtask download`
//! builds in seconds. The chores that train, evaluate and time models — `reproduce-paper`,
//! `bench`, `gpu-check` — live in the `xtask-experiments` package (xtask/experiments/),
//! which this binary builds and runs with the same arguments.
#![warn(missing_docs)]
// The argument structs' doc comments are `--help` text, written for a terminal: their
// `<dataset>` and `[default: …]` are neither HTML tags nor intra-doc links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod download;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Project chores for Tulip-rs (run as `cargo xtask <command>`).
#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about,
    long_about = None,
    after_help = "Experiments (built on first use; `cargo xtask <command> --help` for each):
  reproduce-paper  train, evaluate and attack the paper's grid; write the results table
  bench            performance figures, beside PyTorch with --torch
  gpu-check        a GPU against the CPU kernels (--device cpu: the portable ops)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The chores.
#[derive(Subcommand, Debug)]
enum Command {
    /// Download datasets from their canonical sources into data/, verified by SHA-256
    /// against data/manifest.toml.
    Download(download::DownloadArgs),
    /// An experiment (reproduce-paper, bench, gpu-check): run by the xtask-experiments
    /// binary.
    #[command(external_subcommand)]
    Experiment(Vec<OsString>),
}

/// Builds (in release) and runs `xtask-experiments` with `args`; a CUDA device for
/// `gpu-check` needs the CUDA build of it.
fn run_experiment(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "xtask-experiments",
    ]);
    if needs_cuda(args) {
        cmd.args(["--features", "cuda"]);
    }
    let status = cmd
        .arg("--")
        .args(args)
        .status()
        .context("cannot run cargo to build the experiments")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// `gpu-check` on a device other than the CPU (its default is `cuda`).
fn needs_cuda(args: &[OsString]) -> bool {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.first().map(String::as_str) != Some("gpu-check") {
        return false;
    }
    let device = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--device") {
            Some("") => args.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_string),
            None => None,
        });
    device.as_deref() != Some("cpu")
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Download(args) => download::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Experiment(args) => run_experiment(&args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `cargo xtask download` must not build Candle: nothing in this binary's dependency
    /// tree may pull it in.
    #[test]
    fn the_chore_binary_does_not_depend_on_candle() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["tree", "--package", "xtask", "--edges", "normal,build"])
            .args(["--prefix", "none", "--offline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(tree.contains("tulip-data"), "{tree}");
        let heavy: Vec<&str> = tree
            .lines()
            .filter(|l| l.starts_with("candle") || l.starts_with("tulip-models"))
            .collect();
        assert!(heavy.is_empty(), "xtask depends on {heavy:?}");
    }

    #[test]
    fn only_gpu_check_on_a_gpu_builds_the_cuda_experiments() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(needs_cuda(&os(&["gpu-check"])));
        assert!(needs_cuda(&os(&["gpu-check", "--device", "cuda:1"])));
        assert!(!needs_cuda(&os(&["gpu-check", "--device", "cpu"])));
        assert!(!needs_cuda(&os(&[
            "gpu-check",
            "--device=cpu",
            "--steps",
            "5"
        ])));
        assert!(!needs_cuda(&os(&["bench", "--device", "cuda"])));
        assert!(!needs_cuda(&os(&["reproduce-paper"])));
    }
}

//! `tulip`: train image classifiers that are robust to adversarial examples, and measure
//! how robust they are. See `tulip --help` and `tulip <command> --help`.

// The argument structs' doc comments are `--help` text, written for a terminal: their
// `<dataset>` and `[default: …]` are neither HTML tags nor intra-doc links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod attack;
mod eval;
mod nn_attack;
mod progress;
mod run_loading;
mod train;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Train image classifiers robust to adversarial examples (Lipschitz regularisation of
/// the loss, adversarial training), and measure their robustness.
#[derive(Parser)]
#[command(name = "tulip", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Instruction set of the CPU kernels: `native` (the best this CPU has), `avx512`,
    /// `avx2` or `scalar`. A run is bit-for-bit repeatable for one instruction set; from
    /// one to another results may differ in the last bits. An error if the CPU lacks it.
    #[arg(long, global = true, env = "TULIP_CPU_ISA", default_value = "native")]
    cpu_isa: tulip_models::CpuIsa,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: ResNet22 on Fashion-MNIST, the reference protocol).
    Train(Box<train::TrainArgs>),
    /// Summary statistics of a trained run on the test set (error, loss, gradient,
    /// Jacobian and weight-product norms, margin and certified distance bound).
    Eval(Box<eval::EvalArgs>),
    /// Minimum-distance adversarial attacks on a trained run's test images (DeepFool,
    /// iterative, FGSM, gradient, Boundary; PGD at a fixed ε), with per-image results,
    /// a summary and the robustness curve.
    Attack(Box<attack::AttackArgs>),
    /// Distance of each image to the nearest training image with another label, and the
    /// data's Lipschitz constant.
    NnAttack(Box<nn_attack::NnAttackArgs>),
}

fn main() -> std::process::ExitCode {
    // Before anything else: glibc reads its malloc settings at start-up only.
    tulip_train::malloc::reexec_retaining_freed_memory();
    // The matches are kept: `train --resume` needs to know which flags were given.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = tulip_models::set_cpu_isa(cli.cpu_isa) {
        eprintln!("error: --cpu-isa (or TULIP_CPU_ISA) {}: {e}", cli.cpu_isa);
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(args) => {
            let given = matches
                .subcommand_matches("train")
                .map(train::given_flags)
                .unwrap_or_default();
            train::run(*args, &given)
        }
        Command::Eval(args) => eval::run(*args),
        Command::Attack(args) => attack::run(*args),
        Command::NnAttack(args) => nn_attack::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `tulip`: train image classifiers that are robust to adversarial examples, and measure
//! how robust they are. See `tulip --help` and `tulip <command> --help`.

mod progress;
mod train;

use clap::{Parser, Subcommand};

/// Train image classifiers robust to adversarial examples (Lipschitz regularisation of
/// the loss, adversarial training), and measure their robustness.
#[derive(Parser)]
#[command(name = "tulip", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: ResNet22 on Fashion-MNIST, the reference protocol).
    Train(Box<train::TrainArgs>),
}

fn main() -> std::process::ExitCode {
    // Exact Lipschitz penalties need Candle's second-order gradients, switched on by this
    // variable before any thread's first backward pass; the penalty crate also checks
    // that they are live before training with them.
    tulip_penalties::enable_second_order_gradients();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! Progress bars and console output for long work, drawn from the trainer's events.

use indicatif::{ProgressBar, ProgressStyle};
use tulip_train::{EpochReport, Observer, StepReport};

/// How the binary reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Progress bars and an epoch summary line on stderr.
    Human,
    /// Nothing but errors.
    Quiet,
    /// One JSON object per epoch on stdout (for scripts), nothing else.
    Json,
}

/// Draws one bar per epoch with loss, accuracy and throughput.
pub struct ProgressObserver {
    output: Output,
    bar: Option<ProgressBar>,
    started: std::time::Instant,
    images: usize,
    loss_ema: Option<f64>,
    acc_ema: Option<f64>,
}

impl ProgressObserver {
    pub fn new(output: Output) -> Self {
        Self {
            output,
            bar: None,
            started: std::time::Instant::now(),
            images: 0,
            loss_ema: None,
            acc_ema: None,
        }
    }
}

/// A bar of `len` steps in the binary's one style: `{prefix} [====>   ] {pos}/{len}
/// [unit] {msg} eta {eta}` (no unit if `unit` is empty).
pub fn bar(len: u64, prefix: impl Into<String>, unit: &str) -> ProgressBar {
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    let template =
        format!("{{prefix}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}}{unit} {{msg}} eta {{eta}}");
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.into());
    bar
}

fn ema(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| 0.9 * o + 0.1 * new)
}

impl Observer for ProgressObserver {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps: usize, first_step: usize) {
        self.started = std::time::Instant::now();
        self.images = 0;
        if self.output != Output::Human {
            return;
        }
        let bar = bar(
            steps as u64,
            format!("epoch {}/{}", epoch + 1, epochs),
            "steps",
        );
        bar.set_position(first_step as u64);
        self.bar = Some(bar);
    }

    fn step(&mut self, r: &StepReport) {
        self.images += r.images;
        self.loss_ema = Some(ema(self.loss_ema, r.objective));
        self.acc_ema = Some(ema(self.acc_ema, r.accuracy));
        if let Some(bar) = &self.bar {
            let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} img/s lr {:.3e}",
                self.loss_ema.unwrap_or(f64::NAN),
                100.0 * self.acc_ema.unwrap_or(f64::NAN),
                rate,
                r.lr
            ));
            bar.inc(1);
        }
    }

    fn evaluating(&mut self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("evaluating on the {what} set…"));
        }
    }

    fn epoch_finished(&mut self, r: &EpochReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        match self.output {
            Output::Quiet => {}
            Output::Human => {
                let train = r
                    .train
                    .map(|t| format!(", train loss {:.4} error {:.2}%", t.loss, t.error))
                    .unwrap_or_default();
                eprintln!(
                    "epoch {:>3}: test loss {:.4} error {:.2}%{train}, lr {:.3e}, {:.0}s{}",
                    r.epoch + 1,
                    r.test.loss,
                    r.test.error,
                    r.lr,
                    r.elapsed,
                    if r.best { " (best)" } else { "" }
                );
            }
            Output::Json => {
                let v = serde_json::json!({
                    "epoch": r.epoch,
                    "test_loss": r.test.loss,
                    "test_error": r.test.error,
                    "train_loss": r.train.map(|t| t.loss),
                    "train_error": r.train.map(|t| t.error),
                    "tikhonov": r.tikhonov,
                    "lr": r.lr,
                    "elapsed_seconds": r.elapsed,
                    "best": r.best,
                });
                println!("{v}");
            }
        }
    }
}

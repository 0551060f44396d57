//! `tulip train`: flags → validated [`TrainConfig`] → the trainer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context};
use clap::{ArgAction, Args};
use tulip_adversarial::{PerturbationKind, PgdConfig};
use tulip_data::download::{locate_or_download, BarProgress, NoProgress, Progress};
use tulip_data::{Augmentation, DatasetKind};
use tulip_models::{Architecture, Classifier, ModelConfig};
use tulip_penalties::{Norm, PenaltyMethod, Summary, TikhonovScope};
use tulip_train::config::defaults;
use tulip_train::run_dir::files;
use tulip_train::{
    CheckpointEvery, DeviceChoice, Divergence, LrSchedule, ObjectiveConfig, ResumeOptions,
    TrainConfig, TrainError, Trainer,
};

use crate::progress::{Output, ProgressObserver};

/// Flags of `tulip train`. Names follow the reference code where it has them.
#[derive(Args, Debug)]
#[command(
    args_override_self = true,
    after_help = "Examples:
  tulip train                                   # ResNet22 on Fashion-MNIST, reference protocol
  tulip train --epochs 2 --limit-train 10000    # a quick look (minutes on a laptop CPU)
  tulip train --tanh --decay 5e-4 --lip 0.1 --j2 0.01   # the paper's best setting
  tulip train --resume runs/fashion-mnist/resnet22/20261125-140000

A run stops with a checkpoint on Ctrl-C or SIGTERM, writes one every --checkpoint-every
inside each epoch and at each epoch's end, and --resume continues it exactly: the same
weights and logs as without the stop. A run killed before its first checkpoint resumes
from its initialisation."
)]
pub struct TrainArgs {
    /// Continue the run in this directory where it stopped, with the settings of its
    /// config.toml. Only flags that change nothing in the run's numbers may be given with
    /// it: --data, --no-download, --device, --checkpoint-every, --allow-config-change and
    /// the output flags --quiet and --json.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// With --resume: continue although the run's config.toml was edited since it
    /// started (the change is recorded in its train.log).
    #[arg(long, requires = "resume")]
    allow_config_change: bool,

    // ---- data ----
    /// Dataset.
    #[arg(long, value_enum, default_value_t = DatasetKind::FashionMnist, help_heading = "Data")]
    dataset: DatasetKind,
    /// Directory holding the dataset files. Default: $TULIP_DATA, ./data/<dataset>, then
    /// /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist).
    #[arg(long, value_name = "DIR", help_heading = "Data")]
    data: Option<PathBuf>,
    /// Do not download the dataset when it is not found locally (by default it is
    /// fetched from its canonical source into DIR/<dataset> or ./data/<dataset>,
    /// verified by SHA-256; $TULIP_DATA_MIRROR=URL fetches from a mirror instead).
    #[arg(long, help_heading = "Data")]
    no_download: bool,
    /// Train on the first N training images only (0 = all).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Data")]
    limit_train: usize,
    /// Evaluate on the first N test images only (0 = all).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Data")]
    limit_test: usize,
    /// Cutout augmentation: zero a random square of this side (0 = off).
    #[arg(long, value_name = "SIZE", default_value_t = 0, help_heading = "Data")]
    cutout: usize,
    /// Turn off the random-crop (4-pixel padding) and horizontal-flip augmentation.
    #[arg(long, help_heading = "Data")]
    no_augment: bool,

    // ---- model ----
    /// Architecture.
    #[arg(long, value_enum, default_value_t = Architecture::ResNet22, help_heading = "Model")]
    model: Architecture,
    /// Batch normalisation (on by default; --no-bn turns it off).
    #[arg(long = "bn", overrides_with = "no_bn", action = ArgAction::SetTrue, help_heading = "Model")]
    bn: bool,
    /// Turn batch normalisation off.
    #[arg(long = "no-bn", action = ArgAction::SetTrue, help_heading = "Model")]
    no_bn: bool,
    /// Dropout probability.
    #[arg(long, default_value_t = 0.0, help_heading = "Model")]
    dropout: f64,
    /// Convolution kernel size (odd).
    #[arg(long, default_value_t = 3, help_heading = "Model")]
    kernel_size: usize,
    /// Add the tanh output layer: batch norm on the logits, then t·tanh(z/t), t learned.
    #[arg(long, help_heading = "Model")]
    tanh: bool,

    // ---- optimisation ----
    /// Number of epochs.
    #[arg(long, default_value_t = defaults::EPOCHS, help_heading = "Optimisation")]
    epochs: usize,
    /// Training mini-batch size.
    #[arg(long, default_value_t = defaults::BATCH_SIZE, help_heading = "Optimisation")]
    batch_size: usize,
    /// Evaluation batch size.
    #[arg(long, default_value_t = defaults::TEST_BATCH_SIZE, help_heading = "Optimisation")]
    test_batch_size: usize,
    /// Base learning rate.
    #[arg(
        long,
        default_value_t = defaults::LR,
        allow_negative_numbers = true,
        help_heading = "Optimisation"
    )]
    lr: f64,
    /// Learning-rate multipliers by epoch, as [[epoch,mult],...] or epoch:mult,...
    #[arg(
        long,
        default_value_t = LrSchedule::default().to_string(),
        help_heading = "Optimisation"
    )]
    lr_schedule: String,
    /// SGD momentum.
    #[arg(
        long,
        default_value_t = defaults::MOMENTUM,
        allow_negative_numbers = true,
        help_heading = "Optimisation"
    )]
    momentum: f64,
    /// Nesterov momentum.
    #[arg(long, help_heading = "Optimisation")]
    nesterov: bool,
    /// Seed of the initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0, help_heading = "Optimisation")]
    seed: u64,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", help_heading = "Optimisation")]
    device: DeviceChoice,

    // ---- regularisation ----
    /// Weight of the Lipschitz penalty summary_i ‖∇ₓL‖ (0 = off).
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        help_heading = "Regularisation"
    )]
    lip: f64,
    /// Norm of the input gradient in the Lipschitz penalty.
    #[arg(long, value_enum, default_value_t = Norm::L2, help_heading = "Regularisation")]
    lip_norm: Norm,
    /// How the per-image gradient norms are summarised over the batch [default: max for
    /// the exact penalty, mean for the finite-difference one].
    #[arg(long, value_enum, help_heading = "Regularisation")]
    lip_summary: Option<Summary>,
    /// How the Lipschitz penalty is computed: exact double backpropagation (the paper) or
    /// the finite-difference approximation of Finlay & Oberman 2019 (squared-norm form).
    #[arg(long, value_enum, default_value_t = PenaltyMethod::Exact, help_heading = "Regularisation")]
    penalty_method: PenaltyMethod,
    /// Step h of the finite-difference penalty.
    #[arg(
        long,
        default_value_t = defaults::FD_STEP,
        allow_negative_numbers = true,
        help_heading = "Regularisation"
    )]
    fd_step: f64,
    /// Weight of the Tikhonov penalty Σ‖θ‖² added to the loss (equals SGD weight decay 2·decay).
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        help_heading = "Regularisation"
    )]
    decay: f64,
    /// Parameters the Tikhonov penalty sums over: every trainable one (the reference's
    /// actual behaviour) or only convolution/linear weights.
    #[arg(long, value_enum, default_value_t = TikhonovScope::AllTrainable, help_heading = "Regularisation")]
    decay_scope: TikhonovScope,

    // ---- adversarial training (at most one) ----
    /// FGSM training: x + ε·sign(∇)/√N.
    #[arg(
        long,
        value_name = "EPS",
        group = "adversarial",
        allow_negative_numbers = true,
        help_heading = "Adversarial training (at most one)"
    )]
    j1: Option<f64>,
    /// Gradient-ascent training: x + ε·∇/‖∇‖₂.
    #[arg(
        long,
        value_name = "EPS",
        group = "adversarial",
        allow_negative_numbers = true,
        help_heading = "Adversarial training (at most one)"
    )]
    j2: Option<f64>,
    /// Max-entry training: x + ε·sign(∇_k)e_k at the largest gradient entry.
    #[arg(
        long,
        value_name = "EPS",
        group = "adversarial",
        allow_negative_numbers = true,
        help_heading = "Adversarial training (at most one)"
    )]
    jinf: Option<f64>,
    /// PGD-L∞ training. Optional settings, e.g. eps=8/255,steps=10,step-size=2/255,random-start=true
    /// (these are the defaults).
    #[arg(long, value_name = "SETTINGS", group = "adversarial", num_args = 0..=1, default_missing_value = "", help_heading = "Adversarial training (at most one)")]
    pgd_inf: Option<String>,

    // ---- output ----
    /// Run directory (default runs/<dataset>/<model>/<timestamp>).
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    log_dir: Option<PathBuf>,
    /// Write a checkpoint inside each epoch every N steps (`500`) or every so much
    /// training time (`30s`, `10m`, `1h`); one is written at each epoch's end regardless.
    #[arg(
        long,
        value_name = "EVERY",
        default_value_t = CheckpointEvery::default(),
        help_heading = "Output"
    )]
    checkpoint_every: CheckpointEvery,
    /// Write a training.csv row every N steps.
    #[arg(long, default_value_t = defaults::LOG_INTERVAL, value_name = "N", help_heading = "Output")]
    log_interval: usize,
    /// Skip the per-epoch evaluation on the training set (faster).
    #[arg(long, help_heading = "Output")]
    no_eval_train: bool,
    /// No progress bars or summaries, only errors.
    #[arg(long, conflicts_with = "json", help_heading = "Output")]
    quiet: bool,
    /// Print one JSON object per epoch on stdout instead of progress bars.
    #[arg(long, help_heading = "Output")]
    json: bool,
}

impl TrainArgs {
    /// Converts the flags into a validated configuration (before any work is done).
    fn to_config(&self) -> anyhow::Result<TrainConfig> {
        let model = ModelConfig {
            batch_norm: !self.no_bn,
            dropout: self.dropout,
            kernel_size: self.kernel_size,
            tanh: self.tanh,
            ..ModelConfig::new(
                self.model,
                self.dataset.classes(),
                self.dataset.image_shape(),
            )
        };
        let perturbation = if let Some(epsilon) = self.j1 {
            Some(PerturbationKind::J1 { epsilon })
        } else if let Some(epsilon) = self.j2 {
            Some(PerturbationKind::J2 { epsilon })
        } else if let Some(epsilon) = self.jinf {
            Some(PerturbationKind::Jinf { epsilon })
        } else if let Some(s) = &self.pgd_inf {
            let cfg: PgdConfig = if s.trim().is_empty() {
                PgdConfig {
                    seed: self.seed,
                    ..PgdConfig::default()
                }
            } else {
                let parsed: PgdConfig = s
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--pgd-inf {s:?}: {e}"))?;
                PgdConfig {
                    seed: self.seed,
                    ..parsed
                }
            };
            Some(PerturbationKind::PgdInf(cfg))
        } else {
            None
        };
        for (flag, v) in [("--j1", self.j1), ("--j2", self.j2), ("--jinf", self.jinf)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    bail!("{flag} must be a positive step size, got {v}");
                }
            }
        }
        let mut augmentation = if self.no_augment {
            Augmentation::none()
        } else {
            Augmentation::standard()
        };
        augmentation.cutout = (self.cutout > 0).then_some(self.cutout);
        let config = TrainConfig {
            data_dir: self.data.clone(),
            download: !self.no_download,
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            epochs: self.epochs,
            batch_size: self.batch_size,
            test_batch_size: self.test_batch_size,
            lr: self.lr,
            lr_schedule: LrSchedule::parse(&self.lr_schedule)?,
            momentum: self.momentum,
            nesterov: self.nesterov,
            augmentation,
            seed: self.seed,
            log_interval: self.log_interval,
            eval_train: !self.no_eval_train,
            device: self.device,
            checkpoint_every: self.checkpoint_every,
            objective: ObjectiveConfig {
                lip: self.lip,
                lip_norm: self.lip_norm,
                lip_summary: self.lip_summary,
                penalty_method: self.penalty_method,
                fd_step: self.fd_step,
                decay: self.decay,
                decay_scope: self.decay_scope,
                perturbation,
            },
            ..TrainConfig::new(self.dataset, model)
        };
        config.validate()?;
        Ok(config)
    }

    fn output(&self) -> Output {
        if self.quiet {
            Output::Quiet
        } else if self.json {
            Output::Json
        } else {
            Output::Human
        }
    }
}

/// Flags that may be given with `--resume`: they change nothing in the run's numbers.
const RESUME_FLAGS: [&str; 8] = [
    "resume",
    "allow_config_change",
    "data",
    "no_download",
    "device",
    "checkpoint_every",
    "quiet",
    "json",
];

/// The flags given on the command line (not defaulted), as `--long-name`s by argument id.
pub fn given_flags(matches: &clap::ArgMatches) -> Vec<(String, String)> {
    let command = TrainArgs::augment_args(clap::Command::new("train"));
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|id| {
            let arg = command.get_arguments().find(|a| a.get_id() == id)?;
            Some((id.to_string(), format!("--{}", arg.get_long()?)))
        })
        .collect()
}

/// A new directory `runs/<dataset>/<model>/<timestamp>`, created here so that two runs
/// started in the same second get two directories (the second gets a `-2` suffix).
fn new_default_run_dir(config: &TrainConfig) -> anyhow::Result<PathBuf> {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    let parent = Path::new("runs")
        .join(config.dataset.name())
        .join(config.model.architecture.name());
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    for n in 1.. {
        let dir = parent.join(if n == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!("the suffixes are unbounded")
}

/// Sends library `tracing` events to stderr (warnings, or `RUST_LOG`) and to the run's log file.
fn install_logging(run_dir: &Path) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let path = run_dir.join(files::LOG);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")));
    let to_file = fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .with_filter(EnvFilter::new("info"));
    // A second subscriber cannot be installed in one process; ignore that case.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(to_file)
        .try_init();
    Ok(())
}

/// Downloads the dataset, with a progress bar in human output, if it is not found locally
/// and downloading is on. Done here rather than left to [`tulip_train::load_dataset`]
/// (which would download silently) so the user sees what a long wait is.
fn fetch_if_missing(config: &TrainConfig, output: Output) -> anyhow::Result<()> {
    if !config.download {
        return Ok(()); // load_dataset reports the data as not found
    }
    let mut bar = BarProgress::new();
    let mut silent = NoProgress;
    let progress: &mut dyn Progress = if output == Output::Human {
        &mut bar
    } else {
        &mut silent
    };
    locate_or_download(config.dataset, config.data_dir.as_deref(), true, progress)?;
    Ok(())
}

/// Switches on Candle's second-order gradients for a run with the exact Lipschitz penalty.
///
/// Called before any tensor work (Candle fixes the mode per thread at its first backward
/// pass; the penalty itself checks that the mode is live and refuses to train otherwise).
/// Other runs leave it off: it keeps every gradient's graph alive until the step ends,
/// which costs a plain step several times its memory.
fn enable_second_order_if_needed(config: &TrainConfig) {
    if config.objective.needs_second_order_gradients() {
        tulip_penalties::enable_second_order_gradients();
    }
}

/// Opens the run to resume: refuses flags that would change it and an edited config.
fn resume(
    args: &TrainArgs,
    dir: &Path,
    given: &[(String, String)],
    output: Output,
) -> anyhow::Result<Trainer> {
    let refused: Vec<&str> = given
        .iter()
        .filter(|(id, _)| !RESUME_FLAGS.contains(&id.as_str()))
        .map(|(_, flag)| flag.as_str())
        .collect();
    if !refused.is_empty() {
        bail!(
            "--resume continues {} with the settings in its {}; {} would change the run and cannot be given with it (allowed: --data, --no-download, --device, --checkpoint-every, --allow-config-change, --quiet, --json)",
            dir.display(),
            files::CONFIG,
            refused.join(", ")
        );
    }
    let is_given = |id: &str| given.iter().any(|(g, _)| g == id);
    let options = ResumeOptions {
        data_dir: args.data.clone(),
        download: args.no_download.then_some(false),
        device: is_given("device").then_some(args.device),
        checkpoint_every: is_given("checkpoint_every").then_some(args.checkpoint_every),
        allow_config_change: args.allow_config_change,
    };
    let config = Trainer::resume_config(dir, &options).map_err(|e| match e {
        e @ TrainError::ConfigEdited { .. } => anyhow::anyhow!(
            "{e}; undo the edit, or pass --allow-config-change to continue with the edited settings (the change is recorded in the run's {})",
            files::LOG
        ),
        e => anyhow::Error::new(e).context(format!("--resume {}: not a run directory", dir.display())),
    })?;
    enable_second_order_if_needed(&config);
    fetch_if_missing(&config, output)?;
    let data = tulip_train::load_dataset(&config)?;
    // Before the trainer starts: what it logs on resuming (an allowed config change)
    // belongs in the run's log.
    install_logging(dir)?;
    Ok(Trainer::resume(dir, data, &options)?)
}

/// Advice for a diverged run: the flags that most likely caused it, the term that
/// went non-finite first.
fn divergence_advice(cause: &Divergence, config: &TrainConfig) -> String {
    let o = &config.objective;
    let lr = format!("--lr (it was {})", config.lr);
    let lip = (o.lip > 0.0).then(|| format!("--lip (it was {})", o.lip));
    let decay = (o.decay > 0.0).then(|| format!("--decay (it was {})", o.decay));
    let suspects: Vec<String> = match cause {
        Divergence::Penalty {
            name: "lipschitz", ..
        } => lip.into_iter().chain([lr]).collect(),
        Divergence::Penalty {
            name: "tikhonov", ..
        } => decay.into_iter().chain([lr]).collect(),
        _ => [lr].into_iter().chain(lip).chain(decay).collect(),
    };
    format!(
        "Start a new run with a smaller {}; resuming this one would diverge the same way",
        suspects.join(" or ")
    )
}

pub fn run(args: TrainArgs, given: &[(String, String)]) -> anyhow::Result<ExitCode> {
    train(args, given).map_err(in_flag_terms)
}

/// The library names settings as `config.toml` does; on the command line they are flags.
fn in_flag_terms(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<TrainError>() {
        Ok(TrainError::InvalidSetting { setting, reason }) => {
            anyhow::anyhow!("--{} {reason}", setting.replace('_', "-"))
        }
        Ok(e @ TrainError::ChanceLevel { .. }) => anyhow::anyhow!("{e}: try a smaller --lr"),
        Ok(e) => e.into(),
        Err(e) => e,
    }
}

fn train(args: TrainArgs, given: &[(String, String)]) -> anyhow::Result<ExitCode> {
    let output = args.output();
    let mut trainer = match &args.resume {
        Some(dir) => resume(&args, dir, given, output)?,
        None => {
            let config = args.to_config()?;
            enable_second_order_if_needed(&config);
            fetch_if_missing(&config, output)?;
            let data = tulip_train::load_dataset(&config)?;
            let dir = match &args.log_dir {
                Some(dir) => dir.clone(),
                None => new_default_run_dir(&config)?,
            };
            let trainer = Trainer::new(config, data, &dir).map_err(|e| match e {
                TrainError::RunExists { path } => anyhow::anyhow!(
                    "--log-dir {}: a run already exists there; continue it with `tulip train --resume {}` or choose another directory",
                    path.display(),
                    path.display()
                ),
                e => e.into(),
            })?;
            install_logging(trainer.run_dir().path())?;
            trainer
        }
    };
    // Step times depend on it (see tulip_train::malloc); the log says which applied.
    tracing::info!("malloc environment: {}", tulip_train::malloc::environment());
    if output == Output::Human {
        let c = trainer.config();
        eprintln!(
            "training {} ({} parameters) on {} for {} epochs → {}",
            c.model.architecture,
            trainer.model().params().trainable_count(),
            c.dataset,
            c.epochs,
            trainer.run_dir().path().display()
        );
    }

    // Ctrl-C, SIGTERM (a scheduler's preemption) and SIGHUP all stop the run cleanly.
    let stop = trainer.stop_flag();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
    })
    .context("cannot install the interrupt handler")?;

    let mut observer = ProgressObserver::new(output);
    match trainer.run(&mut observer) {
        Ok(summary) => {
            if output == Output::Human {
                eprintln!(
                    "done: {} epochs in {:.0}s, final test error {:.2}%, best {:.2}% — {}",
                    summary.epochs,
                    summary.elapsed,
                    summary.final_test_error,
                    summary.best_test_error,
                    trainer.run_dir().path().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ TrainError::Interrupted { .. }) => {
            eprintln!(
                "{e}: tulip train --resume {}",
                trainer.run_dir().path().display()
            );
            Ok(ExitCode::from(130))
        }
        Err(TrainError::Diverged {
            cause,
            epoch,
            step,
            last_checkpoint,
        }) => {
            let advice = divergence_advice(&cause, trainer.config());
            let e = TrainError::Diverged {
                cause,
                epoch,
                step,
                last_checkpoint,
            };
            Err(anyhow::anyhow!("{e}. {advice}"))
        }
        Err(e) => Err(e.into()),
    }
}

//! The training loop — the only one in the project. Methods plug in as a perturbation
//! applied to the batch before the loss and a list of weighted penalty terms added to it
//! (docs/method.md §1); nothing else about the loop changes between methods.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ModuleT;
use tulip_adversarial::Perturbation;
use tulip_data::{Dataset, Loader};
use tulip_models::{loss, Checkpoint, Classifier, Model, Params};
use tulip_penalties::{Penalty, PenaltyInputs, TikhonovPenalty};

use crate::config::{CheckpointEvery, TrainConfig};
use crate::device::DeviceChoice;
use crate::evaluate::{count_correct, evaluate, Evaluation};
use crate::optim::Sgd;
use crate::run_dir::{files, CsvWriter, RunDir, RunLock};
use crate::{Divergence, Result, SavedAt, TrainError};

/// Consecutive chance-level epochs after which a run counts as diverged.
const CHANCE_LEVEL_EPOCHS: usize = 5;

/// A penalty with its weight in the objective.
struct WeightedPenalty {
    weight: f64,
    penalty: Box<dyn Penalty>,
}

/// What happened in one optimisation step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Step within the epoch (0-based).
    pub step_in_epoch: usize,
    /// Steps in this epoch.
    pub steps_in_epoch: usize,
    /// Steps since the start of the run.
    pub global_step: usize,
    /// Objective minimised: cross-entropy plus weighted penalties.
    pub objective: f64,
    /// Cross-entropy of the (possibly perturbed) batch.
    pub cross_entropy: f64,
    /// Unweighted penalty values, by name.
    pub penalties: Vec<(&'static str, f64)>,
    /// Fraction of the batch classified correctly (training mode).
    pub accuracy: f64,
    /// Images in the batch.
    pub images: usize,
    /// Learning rate of the step.
    pub lr: f64,
}

/// What happened in one epoch.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Clean test loss and error.
    pub test: Evaluation,
    /// Loss and error on the training set (evaluation mode), if enabled.
    pub train: Option<Evaluation>,
    /// Tikhonov value `Σ‖θ‖²` at the end of the epoch.
    pub tikhonov: f64,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Seconds since the run started.
    pub elapsed: f64,
    /// Whether this epoch has the best test error so far.
    pub best: bool,
}

/// Receives progress; the binary draws progress bars from it. Libraries never print.
pub trait Observer {
    /// An epoch begins.
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _steps: usize, _first_step: usize) {}
    /// A step finished.
    fn step(&mut self, _report: &StepReport) {}
    /// Evaluation of `what` (`"test"`, `"train"`) begins.
    fn evaluating(&mut self, _what: &str) {}
    /// An epoch finished.
    fn epoch_finished(&mut self, _report: &EpochReport) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;
impl Observer for Silent {}

/// Where the run stands; saved in every checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Position {
    epoch: usize,
    step_in_epoch: usize,
    global_step: usize,
    elapsed: f64,
    best_error: f64,
    chance_epochs: usize,
    training_rows: usize,
    test_rows: usize,
}

/// The outcome of a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Epochs completed.
    pub epochs: usize,
    /// Test error of the last epoch, %.
    pub final_test_error: f64,
    /// Lowest test error, %.
    pub best_test_error: f64,
    /// Seconds of training, every process that trained the run together.
    pub elapsed: f64,
}

/// Loads the dataset of a configuration (with its train/test limits applied).
///
/// Data found locally (`--data`, `$TULIP_DATA`, `./data/<name>`, the Debian
/// Fashion-MNIST package) is used as it is. Only when none is found, and
/// `config.download` is set, is the dataset fetched, verified, into `data_dir` or
/// `./data` ([`tulip_data::download::locate_or_download`]), without progress output: a
/// caller that wants a progress bar calls that function itself first, and this one then
/// finds the data locally.
///
/// # Errors
/// The data cannot be found (or downloaded) or read;
/// [`TrainError::InvalidConfig`] for a limit larger than its split.
pub fn load_dataset(config: &TrainConfig) -> Result<Dataset> {
    let dir = tulip_data::download::locate_or_download(
        config.dataset,
        config.data_dir.as_deref(),
        config.download,
        &mut tulip_data::download::NoProgress,
    )?;
    let mut data = tulip_data::load(config.dataset, &dir)?;
    // A limit beyond the split would otherwise mean the whole split, silently: the run
    // would not be the one asked for.
    for (setting, limit, split, what) in [
        (
            "limit_train",
            config.limit_train,
            &mut data.train,
            "training",
        ),
        ("limit_test", config.limit_test, &mut data.test, "test"),
    ] {
        if limit > split.len() {
            return Err(TrainError::setting(
                setting,
                format!(
                    "{limit} is larger than the {what} split of {}, which has {} examples",
                    config.dataset,
                    split.len()
                ),
            ));
        }
        if limit > 0 {
            split.truncate(limit);
        }
    }
    Ok(data)
}

/// What `new` and `resume` build before the trainer is put together.
struct Parts {
    device: Device,
    model: Model,
    optimizer: Sgd,
    perturbation: Option<Box<dyn Perturbation>>,
    penalties: Vec<WeightedPenalty>,
    tikhonov: TikhonovPenalty,
}

/// A training run: model, optimizer, objective and run directory.
pub struct Trainer {
    config: TrainConfig,
    // Shared so the epoch loop can borrow the data while `self` steps the model.
    data: Arc<Dataset>,
    device: Device,
    model: Model,
    optimizer: Sgd,
    perturbation: Option<Box<dyn Perturbation>>,
    penalties: Vec<WeightedPenalty>,
    tikhonov: TikhonovPenalty,
    run: RunDir,
    // Held for the trainer's lifetime: no second process trains this run meanwhile.
    _lock: RunLock,
    pos: Position,
    /// Means of the current log interval so far; saved in every checkpoint, so that the
    /// training.csv row that straddles a kill is the same as without the kill.
    interval: IntervalMean,
    last_checkpoint: Option<SavedAt>,
    last_checkpoint_time: Instant,
    stop: Arc<AtomicBool>,
}

/// What `tulip train --resume` may change about a run: only settings that change nothing
/// in its numbers. Anything else comes from the run's `config.toml`.
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    /// Read the data from here (the data moved since the run started).
    pub data_dir: Option<PathBuf>,
    /// Refuse to download missing data (`Some(false)`).
    pub download: Option<bool>,
    /// Train on this device.
    pub device: Option<DeviceChoice>,
    /// Write checkpoints this often inside an epoch.
    pub checkpoint_every: Option<CheckpointEvery>,
    /// Continue even though `config.toml` was edited since the run wrote it; the change
    /// is logged and the file's hash renewed.
    pub allow_config_change: bool,
}

impl ResumeOptions {
    fn apply(&self, config: &mut TrainConfig) {
        if let Some(d) = &self.data_dir {
            config.data_dir = Some(d.clone());
        }
        if let Some(d) = self.download {
            config.download = d;
        }
        if let Some(d) = self.device {
            config.device = d;
        }
        if let Some(c) = self.checkpoint_every {
            config.checkpoint_every = c;
        }
    }
}

impl Trainer {
    /// Starts a new run in `run_dir` (created; must not already hold a run).
    ///
    /// # Errors
    /// An invalid configuration (checked before anything is written), a penalty that
    /// cannot be computed correctly here (second-order gradients not live), or I/O.
    pub fn new(config: TrainConfig, data: Dataset, run_dir: &Path) -> Result<Self> {
        Self::check_against_data(&config, &data)?;
        let device = config.device.open()?;
        let model = Model::init(&config.model, config.seed, DType::F32, &device)?;
        // Build the objective before creating the directory: a penalty that cannot run
        // here (second-order gradients not live) must fail before anything is written.
        let (perturbation, penalties, tikhonov) = Self::objective(&config, model.params(), 0)?;
        let optimizer = Sgd::new(model.params(), config.momentum, config.nesterov)?;
        let (run, lock) = RunDir::create(run_dir, &config)?;
        tracing::info!(run = %run.path().display(), params = model.params().trainable_count(), "new run");
        let parts = Parts {
            device,
            model,
            optimizer,
            perturbation,
            penalties,
            tikhonov,
        };
        Ok(Self::assemble(
            config,
            data,
            (run, lock),
            Saved::initial(),
            parts,
        ))
    }

    /// The configuration `run_dir` resumes with: its `config.toml` with `options`
    /// applied. A caller loads the data with it before calling [`Trainer::resume`].
    ///
    /// # Errors
    /// The directory holds no run, or its `config.toml` was edited
    /// ([`TrainError::ConfigEdited`]) and `options` do not allow that.
    pub fn resume_config(run_dir: &Path, options: &ResumeOptions) -> Result<TrainConfig> {
        let (run, mut config) = RunDir::open(run_dir)?;
        if run.config_edited()? && !options.allow_config_change {
            return Err(TrainError::ConfigEdited {
                path: run.file(files::CONFIG),
            });
        }
        options.apply(&mut config);
        Ok(config)
    }

    /// Continues the run in `run_dir` from its last checkpoint, optimizer state and the
    /// open log interval included; a run killed before its first checkpoint starts again
    /// from its initialisation (which its seed determines). With the same data, the
    /// result equals that of an uninterrupted run: weights, `test.csv` and `training.csv`.
    ///
    /// # Errors
    /// Another process trains the run; its configuration was edited (unless allowed) or
    /// does not fit its checkpoint; the checkpoint is corrupt.
    pub fn resume(run_dir: &Path, data: Dataset, options: &ResumeOptions) -> Result<Self> {
        let (run, on_disk) = RunDir::open(run_dir)?;
        let lock = run.lock()?;
        let config = Self::resume_config(run_dir, options)?;
        Self::check_against_data(&config, &data)?;
        let device = config.device.open()?;
        let model = Model::init(&config.model, config.seed, DType::F32, &device)?;
        let ck_path = run.file(files::CHECKPOINT);
        let mut optimizer = Sgd::new(model.params(), config.momentum, config.nesterov)?;
        let mut saved = Saved::initial();
        let mut trained_with = None;
        if ck_path.exists() {
            let ck = Checkpoint::read(&ck_path, &device)?;
            ck.load_into(model.params(), &ck_path)?;
            optimizer.load_from(&ck)?;
            saved = Saved::from_metadata(&ck, &ck_path)?;
            trained_with = ck
                .metadata
                .get("config")
                .and_then(|json| serde_json::from_str::<TrainConfig>(json).ok());
        }
        // The hash line catches an edit before the first checkpoint; the checkpoint's own
        // copy of the settings catches one whose hash line was rewritten too.
        let edited = run.config_edited()?
            || trained_with
                .as_ref()
                .is_some_and(|t| t.training_settings() != on_disk.training_settings());
        if edited {
            if !options.allow_config_change {
                return Err(TrainError::ConfigEdited {
                    path: run.file(files::CONFIG),
                });
            }
            let change = trained_with.as_ref().map_or_else(
                || "no checkpoint to compare with".to_string(),
                |t| describe_change(t, &on_disk),
            );
            tracing::warn!(run = %run.path().display(), %change, "config.toml was edited; continuing with the edited settings as allowed");
            run.write_config(&on_disk)?;
        }
        let (perturbation, penalties, tikhonov) =
            Self::objective(&config, model.params(), saved.pos.global_step as u64)?;
        tracing::info!(run = %run.path().display(), epoch = saved.pos.epoch, step = saved.pos.global_step, "resumed");
        let parts = Parts {
            device,
            model,
            optimizer,
            perturbation,
            penalties,
            tikhonov,
        };
        let mut trainer = Self::assemble(config, data, (run, lock), saved, parts);
        if ck_path.exists() {
            trainer.last_checkpoint = Some(trainer.saved_at());
        }
        Ok(trainer)
    }

    fn assemble(
        config: TrainConfig,
        data: Dataset,
        (run, lock): (RunDir, RunLock),
        saved: Saved,
        parts: Parts,
    ) -> Self {
        let Parts {
            device,
            model,
            optimizer,
            perturbation,
            penalties,
            tikhonov,
        } = parts;
        Self {
            config,
            data: Arc::new(data),
            device,
            model,
            optimizer,
            perturbation,
            penalties,
            tikhonov,
            run,
            _lock: lock,
            pos: saved.pos,
            interval: saved.interval,
            last_checkpoint: None,
            last_checkpoint_time: Instant::now(),
            stop: Arc::default(),
        }
    }

    fn check_against_data(config: &TrainConfig, data: &Dataset) -> Result<()> {
        config.validate()?;
        let n = data.train.len();
        if config.batch_size > n {
            return Err(TrainError::setting(
                "batch_size",
                format!(
                    "{} is larger than the training set ({n} images)",
                    config.batch_size
                ),
            ));
        }
        if data.test.is_empty() {
            return Err(TrainError::setting(
                "limit_test",
                "leaves the test set empty (0 means all)",
            ));
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    /// The pieces of the objective; `steps_done` positions the perturbation's random
    /// stream (one call per step) when resuming.
    fn objective(
        config: &TrainConfig,
        params: &Params,
        steps_done: u64,
    ) -> Result<(
        Option<Box<dyn Perturbation>>,
        Vec<WeightedPenalty>,
        TikhonovPenalty,
    )> {
        let o = &config.objective;
        let mut penalties = Vec::new();
        if o.lip > 0.0 {
            let penalty =
                o.penalty_method
                    .build(o.lip_norm, o.lip_summary_or_default(), o.fd_step)?;
            penalties.push(WeightedPenalty {
                weight: o.lip,
                penalty,
            });
        }
        let tikhonov = TikhonovPenalty::of_params(params, o.decay_scope)?;
        if o.decay > 0.0 {
            penalties.push(WeightedPenalty {
                weight: o.decay,
                penalty: Box::new(tikhonov.clone()),
            });
        }
        let perturbation = o
            .perturbation
            .as_ref()
            .map(|p| p.build_resumed(steps_done))
            .transpose()?;
        Ok((perturbation, penalties, tikhonov))
    }

    /// A flag that, once set (e.g. by a Ctrl-C handler), stops the run after the current
    /// step with a checkpoint and [`TrainError::Interrupted`].
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn lr(&self, epoch: usize) -> f64 {
        self.config.lr * self.config.lr_schedule.multiplier(epoch)
    }

    fn training_header(&self) -> Vec<&'static str> {
        let mut h = vec!["index", "time", "loss", "lr", "cross_entropy"];
        h.extend(self.penalties.iter().map(|p| p.penalty.name()));
        h
    }

    const TEST_HEADER: [&'static str; 8] = [
        "epoch",
        "time",
        "test_loss",
        "test_error",
        "train_loss",
        "train_error",
        "tikhonov",
        "lr",
    ];

    /// Trains until the configured number of epochs, writing logs and checkpoints.
    ///
    /// # Errors
    /// Divergence, interruption (after a checkpoint), or a failure of the pieces.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<RunSummary> {
        let started = Instant::now() - std::time::Duration::from_secs_f64(self.pos.elapsed);
        let header = self.training_header();
        // Rows written after the position being resumed from are dropped (a new run has
        // no files yet).
        let mut training_csv = CsvWriter::open(
            &self.run.file(files::TRAINING_CSV),
            &header,
            Some(self.pos.training_rows),
        )?;
        let mut test_csv = CsvWriter::open(
            &self.run.file(files::TEST_CSV),
            &Self::TEST_HEADER,
            Some(self.pos.test_rows),
        )?;

        let data = Arc::clone(&self.data);
        let loader = Loader::train(
            &data.train,
            self.config.batch_size,
            self.config.augmentation,
            self.config.seed,
            &self.device,
        )?;
        let steps = loader.batches_per_epoch();
        let mut last_error = f64::NAN;

        while self.pos.epoch < self.config.epochs {
            let epoch = self.pos.epoch;
            let lr = self.lr(epoch);
            observer.epoch_started(epoch, self.config.epochs, steps, self.pos.step_in_epoch);
            for batch in loader.epoch(epoch).skip(self.pos.step_in_epoch) {
                let batch = batch?;
                let report = self.step(&batch.images, &batch.labels, lr, steps)?;
                self.interval.add(&report);
                self.pos.step_in_epoch += 1;
                self.pos.global_step += 1;
                tulip_models::failpoint::hit("step");
                if self
                    .pos
                    .global_step
                    .is_multiple_of(self.config.log_interval)
                {
                    let mut row =
                        vec![self.pos.global_step as f64, started.elapsed().as_secs_f64()];
                    row.extend(self.interval.take());
                    training_csv.row(&row)?;
                    self.pos.training_rows += 1;
                }
                observer.step(&report);
                let interrupted = self.stop.load(Ordering::SeqCst);
                if interrupted || (self.pos.step_in_epoch < steps && self.checkpoint_due()) {
                    self.pos.elapsed = started.elapsed().as_secs_f64();
                    self.save_checkpoint(f64::NAN)?;
                }
                if interrupted {
                    return Err(TrainError::Interrupted {
                        epoch,
                        step: self.pos.global_step,
                    });
                }
            }

            observer.evaluating("test");
            let test = evaluate(
                &self.model,
                &data.test,
                self.config.test_batch_size,
                &self.device,
            )?;
            let train = if self.config.eval_train {
                observer.evaluating("train");
                Some(evaluate(
                    &self.model,
                    &data.train,
                    self.config.test_batch_size,
                    &self.device,
                )?)
            } else {
                None
            };
            if !test.loss.is_finite() {
                return Err(self.diverged(Divergence::TestLoss(test.loss)));
            }
            let tikhonov = scalar(&self.tikhonov.sum_of_squares()?)?;
            let elapsed = started.elapsed().as_secs_f64();
            let best = test.error < self.pos.best_error;
            test_csv.row(&[
                epoch as f64,
                elapsed,
                test.loss,
                test.error,
                train.map_or(f64::NAN, |t| t.loss),
                train.map_or(f64::NAN, |t| t.error),
                tikhonov,
                lr,
            ])?;
            self.pos.test_rows += 1;
            last_error = test.error;

            self.pos.epoch += 1;
            self.pos.step_in_epoch = 0;
            self.pos.elapsed = elapsed;
            let chance = 100.0 * (1.0 - 1.0 / self.config.model.classes as f64) - 1.0;
            self.pos.chance_epochs = if test.error >= chance {
                self.pos.chance_epochs + 1
            } else {
                0
            };
            if best {
                self.pos.best_error = test.error;
                let mut ck = Checkpoint::from_params(self.model.params());
                self.write_metadata(&mut ck, test.error);
                ck.write(&self.run.file(files::BEST))?;
            }
            self.save_checkpoint(test.error)?;
            tracing::info!(
                epoch,
                test_error = test.error,
                test_loss = test.loss,
                "epoch finished"
            );
            observer.epoch_finished(&EpochReport {
                epoch,
                test,
                train,
                tikhonov,
                lr,
                elapsed,
                best,
            });

            if self.pos.chance_epochs >= CHANCE_LEVEL_EPOCHS {
                return Err(TrainError::ChanceLevel {
                    error: test.error,
                    epochs: self.pos.chance_epochs,
                });
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(TrainError::Interrupted {
                    epoch,
                    step: self.pos.global_step,
                });
            }
        }
        Ok(RunSummary {
            epochs: self.pos.epoch,
            final_test_error: last_error,
            best_test_error: self.pos.best_error,
            elapsed: self.pos.elapsed,
        })
    }

    /// One optimisation step (docs/method.md §1) on a batch outside the epoch loop, at the
    /// learning rate of the current epoch: what benchmarks time. It does not advance the
    /// run's position or write any file.
    ///
    /// # Errors
    /// A non-finite objective, or a failure of the pieces.
    pub fn train_step(&mut self, x: &Tensor, labels: &Tensor) -> Result<StepReport> {
        let lr = self.lr(self.pos.epoch);
        self.step(x, labels, lr, 1)
    }

    /// One optimisation step (docs/method.md §1): perturb, loss, penalties, SGD.
    fn step(&mut self, x: &Tensor, labels: &Tensor, lr: f64, steps: usize) -> Result<StepReport> {
        let x = match &self.perturbation {
            Some(p) => p.perturb(&self.model, x, labels)?,
            None => x.clone(),
        };
        // The exact penalty differentiates through ∇ₓL, so x must be a graph leaf.
        let x = if self.penalties.iter().any(|p| p.penalty.needs_input_graph()) {
            Var::from_tensor(&x.detach())?.as_tensor().clone()
        } else {
            x
        };
        let logits = self.model.forward_t(&x, true)?;
        let ce = loss::cross_entropy(&logits, labels)?;
        let inputs = PenaltyInputs {
            model: &self.model,
            x: &x,
            labels,
            logits: &logits,
            loss: &ce,
        };
        let ce_value = scalar(&ce)?;
        if !ce_value.is_finite() {
            return Err(self.diverged(Divergence::CrossEntropy(ce_value)));
        }
        let mut objective = ce.clone();
        let mut values = Vec::with_capacity(self.penalties.len());
        for wp in &self.penalties {
            let v = wp.penalty.value(&inputs)?;
            objective = (objective + (&v * wp.weight)?)?;
            let value = scalar(&v)?;
            if !(value * wp.weight).is_finite() {
                return Err(self.diverged(Divergence::Penalty {
                    name: wp.penalty.name(),
                    weighted: value * wp.weight,
                }));
            }
            values.push((wp.penalty.name(), value));
        }
        let objective_value = scalar(&objective)?;
        if !objective_value.is_finite() {
            // Every term is finite but their f32 sum is not: name the largest.
            let (name, weighted) = self
                .penalties
                .iter()
                .zip(&values)
                .map(|(wp, (name, v))| (*name, v * wp.weight))
                .fold(("cross-entropy", ce_value), |a, b| {
                    if b.1.abs() > a.1.abs() {
                        b
                    } else {
                        a
                    }
                });
            return Err(self.diverged(Divergence::Penalty { name, weighted }));
        }
        // Only the optimizer reads these gradients: computed detached even when the
        // exact penalty has switched second-order gradients on.
        let grads = tulip_penalties::backward_detached(&objective)?;
        self.optimizer.step(&grads, lr)?;
        // A finite loss does not prove finite weights (a ReLU maps NaN to 0), so the
        // weights and running statistics are checked after every update: no checkpoint
        // is ever written from non-finite weights.
        let bad = self.model.params().non_finite()?;
        if !bad.is_empty() {
            let bad_gradients = non_finite_gradients(self.model.params(), &grads)?;
            return Err(self.diverged(if bad_gradients.is_empty() {
                Divergence::Weights(bad)
            } else {
                Divergence::Gradient(bad_gradients)
            }));
        }
        let images = labels.dim(0)?;
        Ok(StepReport {
            epoch: self.pos.epoch,
            step_in_epoch: self.pos.step_in_epoch,
            steps_in_epoch: steps,
            global_step: self.pos.global_step,
            objective: objective_value,
            cross_entropy: scalar(&ce)?,
            penalties: values,
            accuracy: count_correct(&logits.detach(), labels)? as f64 / images as f64,
            images,
            lr,
        })
    }

    /// Writes `checkpoint.safetensors`: model, optimizer, position and open log interval.
    fn save_checkpoint(&mut self, test_error: f64) -> Result<()> {
        let mut ck = Checkpoint::from_params(self.model.params());
        self.optimizer.save_into(&mut ck);
        self.write_metadata(&mut ck, test_error);
        ck.write(&self.run.file(files::CHECKPOINT))?;
        self.last_checkpoint = Some(self.saved_at());
        self.last_checkpoint_time = Instant::now();
        Ok(())
    }

    fn write_metadata(&self, ck: &mut Checkpoint, test_error: f64) {
        self.pos.write_metadata(ck, &self.config, test_error);
        self.interval.write_metadata(ck);
    }

    fn saved_at(&self) -> SavedAt {
        SavedAt {
            path: self.run.file(files::CHECKPOINT),
            epoch: self.pos.epoch,
            step: self.pos.global_step,
        }
    }

    /// Whether a checkpoint is due inside the epoch (`--checkpoint-every`).
    fn checkpoint_due(&self) -> bool {
        match self.config.checkpoint_every {
            CheckpointEvery::Steps(n) => self.pos.global_step.is_multiple_of(n),
            CheckpointEvery::Seconds(s) => self.last_checkpoint_time.elapsed().as_secs() >= s,
        }
    }

    fn diverged(&self, cause: Divergence) -> TrainError {
        TrainError::Diverged {
            cause,
            epoch: self.pos.epoch,
            step: self.pos.global_step,
            last_checkpoint: self.last_checkpoint.clone(),
        }
    }
}

/// The names of the trainable tensors whose gradient holds a NaN or an infinity.
fn non_finite_gradients(params: &tulip_models::Params, grads: &GradStore) -> Result<Vec<String>> {
    let with_gradients = params
        .trainable()
        .filter_map(|p| Some((p.name.as_str(), grads.get(p.var.as_tensor())?)));
    Ok(tulip_models::params::non_finite_tensors(with_gradients)?)
}

/// The training settings that differ between two configurations, as removed (`-`) and
/// added (`+`) lines of their TOML.
fn describe_change(before: &TrainConfig, after: &TrainConfig) -> String {
    let (Ok(a), Ok(b)) = (
        before.training_settings().to_toml(),
        after.training_settings().to_toml(),
    ) else {
        return "cannot describe the change".into();
    };
    let old: Vec<&str> = a.lines().collect();
    let new: Vec<&str> = b.lines().collect();
    let removed = old
        .iter()
        .filter(|l| !new.contains(l))
        .map(|l| format!("-{l}"));
    let added = new
        .iter()
        .filter(|l| !old.contains(l))
        .map(|l| format!("+{l}"));
    let change: Vec<String> = removed.chain(added).collect();
    if change.is_empty() {
        "only the hash line differs".into()
    } else {
        change.join("; ")
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Means of the step values over a logging interval.
#[derive(Debug, Default, Clone, PartialEq)]
struct IntervalMean {
    sums: Vec<f64>,
    lr: f64,
    n: usize,
}

impl IntervalMean {
    fn add(&mut self, r: &StepReport) {
        let values: Vec<f64> = [r.objective, r.cross_entropy]
            .into_iter()
            .chain(r.penalties.iter().map(|p| p.1))
            .collect();
        if self.sums.len() != values.len() {
            self.sums = vec![0.0; values.len()];
        }
        for (s, v) in self.sums.iter_mut().zip(values) {
            *s += v;
        }
        self.lr = r.lr;
        self.n += 1;
    }

    /// `loss, lr, cross_entropy, penalties…` averaged since the last call.
    fn take(&mut self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        let mut means: Vec<f64> = self.sums.iter().map(|s| s / n).collect();
        means.insert(1, self.lr);
        self.sums.iter_mut().for_each(|s| *s = 0.0);
        self.n = 0;
        means
    }
}

impl IntervalMean {
    fn write_metadata(&self, ck: &mut Checkpoint) {
        let sums: Vec<String> = self.sums.iter().map(f64::to_string).collect();
        let m = &mut ck.metadata;
        m.insert("interval_sums".into(), sums.join(" "));
        m.insert("interval_lr".into(), self.lr.to_string());
        m.insert("interval_steps".into(), self.n.to_string());
    }

    /// The interval saved in a checkpoint; empty for checkpoints written without one.
    fn from_metadata(ck: &Checkpoint, path: &Path) -> Result<Self> {
        let bad = |key: &str| TrainError::BadRunFile {
            path: path.into(),
            reason: format!("checkpoint metadata has an invalid {key:?}"),
        };
        let m = &ck.metadata;
        let Some(sums) = m.get("interval_sums") else {
            return Ok(Self::default());
        };
        Ok(Self {
            sums: sums
                .split_whitespace()
                .map(|v| v.parse().map_err(|_| bad("interval_sums")))
                .collect::<Result<_>>()?,
            lr: m
                .get("interval_lr")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("interval_lr"))?,
            n: m.get("interval_steps")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("interval_steps"))?,
        })
    }
}

/// What a checkpoint restores beside the tensors.
struct Saved {
    pos: Position,
    interval: IntervalMean,
}

impl Saved {
    /// A run before its first step.
    fn initial() -> Self {
        Self {
            pos: Position {
                best_error: f64::INFINITY,
                ..Position::default()
            },
            interval: IntervalMean::default(),
        }
    }

    fn from_metadata(ck: &Checkpoint, path: &Path) -> Result<Self> {
        Ok(Self {
            pos: Position::from_metadata(ck, path)?,
            interval: IntervalMean::from_metadata(ck, path)?,
        })
    }
}

impl Position {
    fn write_metadata(&self, ck: &mut Checkpoint, config: &TrainConfig, test_error: f64) {
        let m = &mut ck.metadata;
        m.insert("epoch".into(), self.epoch.to_string());
        m.insert("step_in_epoch".into(), self.step_in_epoch.to_string());
        m.insert("global_step".into(), self.global_step.to_string());
        m.insert("elapsed_seconds".into(), self.elapsed.to_string());
        m.insert("best_test_error".into(), self.best_error.to_string());
        m.insert("chance_epochs".into(), self.chance_epochs.to_string());
        m.insert("training_rows".into(), self.training_rows.to_string());
        m.insert("test_rows".into(), self.test_rows.to_string());
        m.insert("test_error".into(), test_error.to_string());
        if let Ok(json) = serde_json::to_string(config) {
            m.insert("config".into(), json);
        }
    }

    fn from_metadata(ck: &Checkpoint, path: &Path) -> Result<Self> {
        fn get<T: std::str::FromStr>(ck: &Checkpoint, path: &Path, key: &str) -> Result<T> {
            ck.metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| TrainError::BadRunFile {
                    path: path.into(),
                    reason: format!("checkpoint metadata lacks a valid {key:?}"),
                })
        }
        Ok(Self {
            epoch: get(ck, path, "epoch")?,
            step_in_epoch: get(ck, path, "step_in_epoch")?,
            global_step: get(ck, path, "global_step")?,
            elapsed: get(ck, path, "elapsed_seconds")?,
            best_error: get(ck, path, "best_test_error")?,
            chance_epochs: get(ck, path, "chance_epochs")?,
            training_rows: get(ck, path, "training_rows")?,
            test_rows: get(ck, path, "test_rows")?,
        })
    }
}

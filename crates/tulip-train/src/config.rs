//! The resolved configuration of a run: one serde struct, written into the run directory
//! as `config.toml` and read back by `--resume`, `eval` and `attack`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tulip_adversarial::PerturbationKind;
use tulip_data::{Augmentation, DatasetKind};
use tulip_models::ModelConfig;
use tulip_penalties::{Norm, PenaltyMethod, Summary, TikhonovScope};

use crate::device::DeviceChoice;
use crate::schedule::LrSchedule;
use crate::{Result, TrainError};

/// What the loss of one step is made of (docs/method.md §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveConfig {
    /// Weight of the Lipschitz (input-gradient) penalty; 0 = off.
    pub lip: f64,
    /// Norm of the input gradient in the penalty.
    pub lip_norm: Norm,
    /// How per-example norms are summarised over the batch; `None` takes the method's
    /// own default: `max` for the exact penalty (the paper), `mean` for the
    /// finite-difference one (the follow-up paper).
    pub lip_summary: Option<Summary>,
    /// Exact double backpropagation or the finite-difference approximation.
    pub penalty_method: PenaltyMethod,
    /// Step `h` of the finite-difference penalty.
    pub fd_step: f64,
    /// Weight of the Tikhonov penalty `Σ‖θ‖²`; 0 = off.
    pub decay: f64,
    /// Which parameters the Tikhonov penalty sums over.
    pub decay_scope: TikhonovScope,
    /// Adversarial training perturbation applied to each batch, if any.
    pub perturbation: Option<PerturbationKind>,
}

impl ObjectiveConfig {
    /// Whether this objective differentiates an input gradient (the exact Lipschitz
    /// penalty), which needs Candle's second-order gradients switched on with
    /// [`tulip_penalties::enable_second_order_gradients`] before the first backward pass.
    ///
    /// Only such runs should switch them on: in that mode Candle keeps every gradient's
    /// graph alive until the step ends, which quadruples a plain step's peak memory.
    pub fn needs_second_order_gradients(&self) -> bool {
        self.lip > 0.0 && self.penalty_method == PenaltyMethod::Exact
    }

    /// The batch summary in force.
    pub fn lip_summary_or_default(&self) -> Summary {
        self.lip_summary.unwrap_or(match self.penalty_method {
            PenaltyMethod::FiniteDifference => Summary::Mean,
            _ => Summary::Max,
        })
    }
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            lip: 0.0,
            lip_norm: Norm::L2,
            lip_summary: None,
            penalty_method: PenaltyMethod::Exact,
            fd_step: defaults::FD_STEP,
            decay: 0.0,
            decay_scope: TikhonovScope::AllTrainable,
            perturbation: None,
        }
    }
}

fn download_default() -> bool {
    true
}

/// How often a run writes a checkpoint inside an epoch (one is written at every epoch's
/// end regardless): every `N` steps, or every so many seconds of training. Written
/// `500` (steps) or `30s`, `10m`, `1h`.
///
/// Not a training setting: where the checkpoints fall changes nothing in the numbers of a
/// run, only how much a kill can cost, so it may differ when a run is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CheckpointEvery {
    /// Every this many optimisation steps.
    Steps(usize),
    /// Every this many seconds of training.
    Seconds(u64),
}

impl Default for CheckpointEvery {
    fn default() -> Self {
        Self::Seconds(600)
    }
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is neither a number of steps (500) nor a time (30s, 10m, 1h)");
        let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = number.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("{s:?}: the interval must be at least 1"));
        }
        match unit {
            "" => usize::try_from(n).map(Self::Steps).map_err(|_| bad()),
            "s" => Ok(Self::Seconds(n)),
            "m" | "min" => Ok(Self::Seconds(n * 60)),
            "h" => Ok(Self::Seconds(n * 3600)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for CheckpointEvery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Steps(n) => write!(f, "{n}"),
            Self::Seconds(s) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            Self::Seconds(s) if s % 60 == 0 => write!(f, "{}m", s / 60),
            Self::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

impl TryFrom<String> for CheckpointEvery {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<CheckpointEvery> for String {
    fn from(c: CheckpointEvery) -> Self {
        c.to_string()
    }
}

/// The reference's settings (docs/method.md §6): the values of [`TrainConfig::new`], and the
/// defaults of `tulip train`'s flags.
pub mod defaults {
    /// Number of epochs.
    pub const EPOCHS: usize = 200;
    /// Training mini-batch size.
    pub const BATCH_SIZE: usize = 128;
    /// Evaluation batch size.
    pub const TEST_BATCH_SIZE: usize = 1000;
    /// Base learning rate.
    pub const LR: f64 = 0.1;
    /// SGD momentum.
    pub const MOMENTUM: f64 = 0.9;
    /// A `training.csv` row every this many steps.
    pub const LOG_INTERVAL: usize = 100;
    /// Step of the finite-difference Lipschitz penalty.
    pub const FD_STEP: f64 = tulip_penalties::DEFAULT_STEP;
}

/// Everything that determines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Dataset to train on.
    pub dataset: DatasetKind,
    /// Explicit data directory (`--data`); otherwise the usual places are searched.
    pub data_dir: Option<PathBuf>,
    /// Download the dataset (verified by SHA-256) when it is not found locally, into
    /// `data_dir` or `./data` (`--no-download` turns it off). Not a training setting, but
    /// kept so a resumed run behaves as the original did; run directories written before
    /// it existed read as `true`.
    #[serde(default = "download_default")]
    pub download: bool,
    /// Use only the first N training images (0 = all).
    pub limit_train: usize,
    /// Use only the first N test images (0 = all).
    pub limit_test: usize,
    /// The network.
    pub model: ModelConfig,
    /// Number of epochs.
    pub epochs: usize,
    /// Training mini-batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub test_batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Learning-rate multipliers by epoch.
    pub lr_schedule: LrSchedule,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Training augmentation.
    pub augmentation: Augmentation,
    /// Seed of the model initialisation, the data order and the augmentation.
    pub seed: u64,
    /// Write a `training.csv` row every this many steps.
    pub log_interval: usize,
    /// Evaluate loss and error on the training set after each epoch (as the reference does).
    pub eval_train: bool,
    /// Device to train on.
    pub device: DeviceChoice,
    /// How often a checkpoint is written inside an epoch. Run directories written before
    /// this setting existed read as the default.
    #[serde(default)]
    pub checkpoint_every: CheckpointEvery,
    /// Loss terms and adversarial training.
    pub objective: ObjectiveConfig,
}

impl TrainConfig {
    /// The reference defaults (docs/method.md §6) for `model` on `dataset`.
    pub fn new(dataset: DatasetKind, model: ModelConfig) -> Self {
        Self {
            dataset,
            data_dir: None,
            download: true,
            limit_train: 0,
            limit_test: 0,
            model,
            epochs: defaults::EPOCHS,
            batch_size: defaults::BATCH_SIZE,
            test_batch_size: defaults::TEST_BATCH_SIZE,
            lr: defaults::LR,
            lr_schedule: LrSchedule::default(),
            momentum: defaults::MOMENTUM,
            nesterov: false,
            augmentation: Augmentation::standard(),
            seed: 0,
            log_interval: defaults::LOG_INTERVAL,
            eval_train: true,
            device: DeviceChoice::Cpu,
            checkpoint_every: CheckpointEvery::default(),
            objective: ObjectiveConfig::default(),
        }
    }

    /// Checks every value that does not depend on the data; errors name the setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for the first bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::setting(
                "lr",
                format!("must be positive, got {}", self.lr),
            ));
        }
        for (setting, value) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("test_batch_size", self.test_batch_size),
            ("log_interval", self.log_interval),
        ] {
            if value == 0 {
                return Err(TrainError::setting(setting, "must be at least 1"));
            }
        }
        let (_, h, w) = self.dataset.image_shape();
        if let Some(side) = self.augmentation.cutout.filter(|&s| s > h.min(w)) {
            return Err(TrainError::setting(
                "cutout",
                format!(
                    "{side} is larger than the {h}x{w} images of {}: the Cutout square's side \
                     must be at most {}",
                    self.dataset,
                    h.min(w)
                ),
            ));
        }
        let o = &self.objective;
        for (setting, v) in [("lip", o.lip), ("decay", o.decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::setting(
                    setting,
                    format!("must be ≥ 0, got {v}"),
                ));
            }
        }
        if let Some(p) = &o.perturbation {
            p.validate()
                .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        }
        if !(o.fd_step.is_finite() && o.fd_step > 0.0) {
            return Err(TrainError::setting(
                "fd_step",
                format!("must be positive, got {}", o.fd_step),
            ));
        }
        if (self.model.classes, self.model.input_shape)
            != (self.dataset.classes(), self.dataset.image_shape())
        {
            return bad(format!(
                "the model is built for {} classes on {:?} images but {} has {} classes of {:?}",
                self.model.classes,
                self.model.input_shape,
                self.dataset,
                self.dataset.classes(),
                self.dataset.image_shape()
            ));
        }
        self.model
            .validate()
            .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        Ok(())
    }

    /// The settings that may differ when a run is resumed because they change nothing in
    /// its numbers — where the data is read from, whether it may be downloaded, the device,
    /// how often checkpoints are written — set to fixed values, so that two configurations
    /// of the same run compare equal.
    pub fn training_settings(&self) -> Self {
        Self {
            data_dir: None,
            download: true,
            device: DeviceChoice::Cpu,
            checkpoint_every: CheckpointEvery::default(),
            ..self.clone()
        }
    }

    /// The configuration as readable TOML.
    ///
    /// # Errors
    /// Serialisation fails (it does not for valid configurations).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| TrainError::InvalidConfig(format!("cannot write the configuration: {e}")))
    }

    /// Parses a configuration written by [`TrainConfig::to_toml`].
    ///
    /// # Errors
    /// The text is not a valid configuration.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tulip_models::Architecture;

    #[test]
    fn checkpoint_intervals_parse_and_print_back() {
        for (text, want) in [
            ("500", CheckpointEvery::Steps(500)),
            ("30s", CheckpointEvery::Seconds(30)),
            ("10m", CheckpointEvery::Seconds(600)),
            ("10min", CheckpointEvery::Seconds(600)),
            ("2h", CheckpointEvery::Seconds(7200)),
        ] {
            let parsed: CheckpointEvery = text.parse().unwrap();
            assert_eq!(parsed, want, "{text}");
            assert_eq!(parsed.to_string().parse::<CheckpointEvery>().unwrap(), want);
        }
        for bad in ["", "0", "0s", "10 days", "-5", "1.5h", "m"] {
            assert!(bad.parse::<CheckpointEvery>().is_err(), "{bad:?} accepted");
        }
    }

    /// Run directories written before the `download` switch existed still resume, and
    /// read as downloading (the default).
    #[test]
    fn config_without_the_download_switch_reads_as_true() {
        let kind = DatasetKind::Mnist;
        let model = ModelConfig::new(Architecture::ResNet22, kind.classes(), kind.image_shape());
        let mut config = TrainConfig::new(kind, model);
        config.download = false;
        let text = config.to_toml().unwrap();
        assert!(text.contains("download = false"));
        assert!(!TrainConfig::from_toml(&text).unwrap().download);
        let old = text.replace("download = false\n", "");
        assert!(TrainConfig::from_toml(&old).unwrap().download);
    }
}

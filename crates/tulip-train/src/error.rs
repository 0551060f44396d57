//! Errors of the training crate.

use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Building, saving or loading the model failed.
    #[error(transparent)]
    Model(#[from] tulip_models::ModelError),
    /// Loading the data failed.
    #[error(transparent)]
    Data(#[from] tulip_data::DataError),
    /// A penalty could not be built or computed.
    #[error(transparent)]
    Penalty(#[from] tulip_penalties::PenaltyError),
    /// A perturbation could not be computed.
    #[error(transparent)]
    Perturbation(#[from] tulip_adversarial::AdversarialError),
    /// A configuration value is out of range; the message names the setting.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// One setting has a value it cannot take.
    #[error("{setting} {reason}")]
    InvalidSetting {
        /// The setting, as `config.toml` names it (`lr`, `batch_size`, `fd_step`, …; the
        /// command line's flag is the same name with dashes).
        setting: &'static str,
        /// What is wrong with its value, e.g. `must be positive, got -1`.
        reason: String,
    },
    /// Reading or writing a run file failed.
    // `error`, not `source`: the message already includes it, and a `source` would be
    // printed twice by error-chain reporters (`{:#}`).
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A run file exists but cannot be understood.
    #[error("{path}: {reason}")]
    BadRunFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A loss term, the gradient, the weights or the test loss became NaN or infinite.
    /// The step that produced it was not saved: every checkpoint of the run holds finite
    /// weights.
    #[error("training diverged at epoch {epoch}, step {step}: {cause}; {}", describe_last(.last_checkpoint))]
    Diverged {
        /// What went non-finite.
        cause: Divergence,
        /// Epoch (0-based) of the step.
        epoch: usize,
        /// Global step index.
        step: usize,
        /// The run's last checkpoint (all its weights finite), if one was written.
        last_checkpoint: Option<SavedAt>,
    },
    /// The test error stayed at chance level for several epochs.
    #[error("training diverged: test error at chance level ({error:.2}%) for {epochs} consecutive epochs; the run directory keeps its files (a smaller learning rate may help)")]
    ChanceLevel {
        /// The last test error, %.
        error: f64,
        /// Number of consecutive epochs.
        epochs: usize,
    },
    /// The run was stopped on request (Ctrl-C) after writing a checkpoint.
    #[error(
        "interrupted at epoch {epoch}, step {step}; checkpoint written, the run can be resumed"
    )]
    Interrupted {
        /// Epoch (0-based) in progress.
        epoch: usize,
        /// Global step index reached.
        step: usize,
    },
    /// A run directory given for a new run already holds one.
    #[error("{path}: a run already exists there")]
    RunExists {
        /// The run directory.
        path: PathBuf,
    },
    /// Another process is training this run.
    #[error("{path}: the run is being trained by another process{}; wait for it to stop or stop it first", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    RunInUse {
        /// The run directory.
        path: PathBuf,
        /// The process holding the run's lock, as it recorded itself.
        pid: Option<u32>,
    },
    /// `config.toml` was changed by hand since the run wrote it.
    #[error("{path} was edited after the run started (it no longer matches the hash on its first line): continuing would change the run's settings midway")]
    ConfigEdited {
        /// The configuration file.
        path: PathBuf,
    },
}

/// What became non-finite in a diverged run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Divergence {
    /// The cross-entropy of the batch.
    CrossEntropy(f64),
    /// A penalty term (its name), or its weighted value.
    Penalty {
        /// The penalty's name (`lipschitz`, `tikhonov`).
        name: &'static str,
        /// Its value times its weight in the objective.
        weighted: f64,
    },
    /// The gradient of the objective, in these tensors (the loss was finite).
    Gradient(Vec<String>),
    /// The weights after the update, in these tensors (the gradient was finite: the step
    /// was too large).
    Weights(Vec<String>),
    /// The test loss at the end of an epoch (the weights were finite).
    TestLoss(f64),
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn few(names: &[String]) -> String {
            let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
            let more = names.len().saturating_sub(shown.len());
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        }
        match self {
            Self::CrossEntropy(v) => write!(f, "the cross-entropy became {v}"),
            Self::Penalty { name, weighted } => {
                write!(f, "the {name} penalty term (weight × value) became {weighted}")
            }
            Self::Gradient(names) => write!(
                f,
                "the gradient of a finite loss became non-finite in {}",
                few(names)
            ),
            Self::Weights(names) => write!(
                f,
                "the weights or batch-norm statistics became non-finite in {} while the gradient was finite (the step was too large)",
                few(names)
            ),
            Self::TestLoss(v) => write!(f, "the test loss became {v}"),
        }
    }
}

/// Where a checkpoint was written: its file and the run's position in it.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedAt {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Epochs completed.
    pub epoch: usize,
    /// Global steps completed.
    pub step: usize,
}

fn describe_last(last: &Option<SavedAt>) -> String {
    match last {
        Some(s) => format!(
            "nothing after the last checkpoint was saved; that checkpoint, {} (after {} steps, {} complete epochs), holds finite weights",
            s.path.display(),
            s.step,
            s.epoch
        ),
        None => "nothing was saved: no checkpoint had been written yet".into(),
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// [`TrainError::InvalidSetting`] for `setting`.
    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        TrainError::InvalidSetting {
            setting,
            reason: reason.into(),
        }
    }
}

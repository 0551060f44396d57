//! # tulip-train
//!
//! The one training loop of Tulip-rs (docs/method.md §1, §6, §7). Every training method —
//! plain cross-entropy, the Lipschitz penalty (exact or finite-difference), Tikhonov
//! decay, J1/J2/J∞ and PGD adversarial training — is the same [`Trainer`] with a
//! different [`ObjectiveConfig`]: an optional [`tulip_adversarial::Perturbation`] applied
//! to the batch before the loss, and weighted [`tulip_penalties::Penalty`] terms added to
//! it.
//!
//! Sits above the model, data, penalty and adversarial crates and below the CLI.
//!
//! ## Design record
//! - SGD with momentum is written here ([`Sgd`]): Candle's has none. It steps only
//!   trainable parameters, never batch-norm running statistics.
//! - Weight decay is the Tikhonov term of the objective (docs/method.md §1.3), not an
//!   optimizer option; `--decay d` equals PyTorch SGD weight decay `2d`.
//! - The data order and augmentation of an epoch depend only on `(seed, epoch)`, and a
//!   checkpoint records the position inside the epoch, so a resumed run sees exactly the
//!   batches an uninterrupted one would.
//! - `training.csv` rows hold means over the log interval (not the last step's value).
//! - The test error logged each epoch is the clean one (docs/method.md §1).
//! - Divergence ([`TrainError::Diverged`]): a non-finite cross-entropy or penalty term
//!   stops the run before the step is applied; the weights and batch-norm statistics are
//!   checked after every update (a finite loss does not prove them finite: a ReLU maps
//!   NaN to 0), and the test loss after every epoch. Nothing non-finite is ever saved, so
//!   every checkpoint holds finite weights and a non-finite epoch is never the best. Five
//!   consecutive epochs with a test error within one point of chance level stop it too.
//! - Every state of a run directory resumes ([`Trainer::resume`]): a checkpoint holds the
//!   position, the optimizer state and the open log interval, so the resumed run's
//!   weights and logs equal the uninterrupted run's; a run killed before its first
//!   checkpoint starts again from its seeded initialisation. Checkpoints fall at epoch
//!   ends and every [`CheckpointEvery`] inside an epoch. One process trains a run at a
//!   time ([`run_dir::RunLock`]); an edited `config.toml` is refused unless allowed
//!   ([`ResumeOptions`]).
#![warn(missing_docs)]

pub mod config;
pub mod device;
mod error;
pub mod evaluate;
mod load_run;
pub mod malloc;
pub mod optim;
pub mod run_dir;
pub mod schedule;
mod trainer;

pub use config::{CheckpointEvery, ObjectiveConfig, TrainConfig};
pub use device::DeviceChoice;
pub use error::{Divergence, Result, SavedAt, TrainError};
pub use load_run::{load_run, LoadRunError, LoadedRun, RunSource};
pub use optim::Sgd;
pub use run_dir::RunDir;
pub use schedule::LrSchedule;
pub use trainer::{
    load_dataset, EpochReport, Observer, ResumeOptions, RunSummary, Silent, StepReport, Trainer,
};

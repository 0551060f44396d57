//! # tulip-train
//!
//! The one training loop of Tulip-rs (SPEC §1, §6, §7). Every training method — plain
//! cross-entropy, the Lipschitz penalty (exact or finite-difference), Tikhonov decay,
//! J1/J2/J∞ and PGD adversarial training — is the same [`Trainer`] with a different
//! [`ObjectiveConfig`]: an optional [`tulip_adversarial::Perturbation`] applied to the
//! batch before the loss, and weighted [`tulip_penalties::Penalty`] terms added to it.
//!
//! Sits above the model, data, penalty and adversarial crates and below the CLI.
//!
//! ## Design record
//! - SGD with momentum is written here ([`Sgd`]): Candle's has none. It steps only
//!   trainable parameters, never batch-norm running statistics.
//! - Weight decay is the Tikhonov term of the objective (SPEC §1.3), not an optimizer
//!   option; `--decay d` equals PyTorch SGD weight decay `2d`.
//! - The data order and augmentation of an epoch depend only on `(seed, epoch)`, and a
//!   checkpoint records the position inside the epoch, so a resumed run sees exactly the
//!   batches an uninterrupted one would.
//! - `training.csv` rows hold means over the log interval (not the last step's value).
//! - The test error logged each epoch is the clean one (SPEC §1).
//! - Divergence: a non-finite objective stops the run before the bad step is applied
//!   (the last checkpoint stays the last good state); so do five consecutive epochs with
//!   a test error within one point of chance level.
#![warn(missing_docs)]

pub mod config;
pub mod device;
mod error;
pub mod evaluate;
pub mod malloc;
pub mod optim;
pub mod run_dir;
pub mod schedule;
mod trainer;

pub use config::{ObjectiveConfig, TrainConfig};
pub use device::DeviceChoice;
pub use error::{Result, TrainError};
pub use optim::Sgd;
pub use run_dir::RunDir;
pub use schedule::LrSchedule;
pub use trainer::{load_dataset, EpochReport, Observer, RunSummary, Silent, StepReport, Trainer};

//! Datasets for Tulip-rs: finding them on disk, reading them, augmenting them and cutting
//! them into reproducible mini-batches on a candle device.
//!
//! This is the lowest crate of the workspace; it knows nothing of models. Its default
//! feature `tensors` adds the [`Loader`] of Candle tensors; without it the crate finds,
//! downloads, verifies and reads datasets and does not build Candle. The training and
//! evaluation crates use it as:
//!
//! ```no_run
//! # fn main() -> tulip_data::Result<()> {
//! use tulip_data::{load, locate, Augmentation, DatasetKind, Loader};
//! let kind = DatasetKind::FashionMnist;
//! let data = load(kind, &locate(kind, None)?)?;
//! let device = candle_core::Device::Cpu;
//! let train = Loader::train(&data.train, 128, Augmentation::standard(), 0, &device)?;
//! for batch in train.epoch(0) {
//!     let batch = batch?; // images f32 [B, C, H, W] in [0, 1], labels u32 [B]
//! }
//! # Ok(())
//! }
//! ```
//!
//! # Datasets (docs/method.md §8)
//!
//! Fashion-MNIST and MNIST as IDX files (raw or gzip, told apart by the gzip magic bytes),
//! CIFAR-10 and CIFAR-100 in their binary versions ([`idx`], [`cifar`]). [`locate`]
//! searches `--data`, `$TULIP_DATA`, `./data/<name>` and, for Fashion-MNIST, the files of
//! the Debian/Ubuntu package `dataset-fashion-mnist`. [`download`] fetches a dataset that
//! is nowhere to be found from its canonical source, verified by SHA-256 against the
//! committed `data/manifest.toml` (`cargo xtask download`, and `tulip train` unless
//! `--no-download`), and leaves a `SHA256SUMS` record against which [`load`] checks the
//! files it reads; [`locate`] and [`load`] themselves never touch the network. Splits
//! stay in memory as bytes and are converted to `f32` in `[0, 1]` per batch, with no
//! mean/std normalisation (docs/method.md: the bounds matter to attacks). A bad file gives a
//! [`DataError`] naming the file and the problem; a file with another number of examples
//! than the real one (an empty or partial copy) is such an error, never a smaller dataset
//! used silently.
//!
//! # Augmentation (docs/method.md §6)
//!
//! [`Augmentation`] is the reference's random crop with zero padding, horizontal flip and
//! Cutout, done in plain loops while converting bytes to floats.
//!
//! # Deliberate deviations from the reference
//!
//! - Shuffling and augmentation use `ChaCha8Rng` streams derived from `(seed, epoch)`, not
//!   a global generator, so a resumed run sees exactly the batches an uninterrupted one
//!   would (PyTorch's loader does not give that).
//! - Cutout with an odd side zeroes `side`×`side` pixels; the reference's
//!   `y ± side//2` zeroes `(side-1)`×`(side-1)`. Even sides are identical.
//! - The last partial batch is kept for training as for testing (`drop_last = false`,
//!   as the reference's loaders).
//! - An explicit `--data` directory that does not hold the dataset is an error, rather
//!   than falling through to the other search places.
#![warn(missing_docs)]

mod augment;
pub mod cifar;
mod dataset;
pub mod download;
pub mod error;
pub mod idx;
#[cfg(feature = "tensors")]
mod loader;
mod locate;
mod sums;

pub use augment::{Augmentation, Rect, Transform};
pub use dataset::{load, Dataset, DatasetKind, Split};
pub use error::{DataError, Result};
#[cfg(feature = "tensors")]
pub use loader::{Batch, Batches, Loader};
pub use locate::{locate, SearchPaths, SYSTEM_FASHION_MNIST, TULIP_DATA_ENV};

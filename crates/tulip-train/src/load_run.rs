//! Loading a trained run for evaluation and attacks: its configuration, the model with a
//! checkpoint's weights, and its test split — each failure an error that names the
//! directory or the file.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tulip_data::Split;
use tulip_models::{Checkpoint, Classifier, Model, ModelError};

use crate::run_dir::files;
use crate::{DeviceChoice, RunDir, TrainConfig, TrainError};

/// A run ready to be evaluated or attacked.
pub struct LoadedRun {
    /// The run directory.
    pub run: RunDir,
    /// Its configuration (`config.toml`).
    pub config: TrainConfig,
    /// The checkpoint that was loaded.
    pub checkpoint: PathBuf,
    /// The model, with the checkpoint's weights.
    pub model: Model,
    /// The test split (the dataset's whole one, or its first [`RunSource::test_limit`]
    /// images).
    pub test: Split,
    /// The device the model lives on.
    pub device: Device,
}

/// Where to take a run's parts from.
#[derive(Debug, Clone, Copy)]
pub struct RunSource<'a> {
    /// The run directory.
    pub dir: &'a Path,
    /// The checkpoint to load; `None` takes the run's best, else its last.
    pub checkpoint: Option<&'a Path>,
    /// Where the dataset is, when not where the run found it.
    pub data: Option<&'a Path>,
    /// The device to load the model onto.
    pub device: DeviceChoice,
    /// Keep only the first this-many test images.
    pub test_limit: Option<usize>,
}

impl<'a> RunSource<'a> {
    /// The run in `dir`, its default checkpoint and data, on the CPU, with the whole test
    /// split.
    pub fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            checkpoint: None,
            data: None,
            device: DeviceChoice::Cpu,
            test_limit: None,
        }
    }
}

/// Why a run could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadRunError {
    /// The directory has no readable configuration.
    #[error(
        "{dir}: not a run directory (it needs the {} written by `tulip train`): {source}",
        files::CONFIG
    )]
    NotARun {
        /// The directory.
        dir: PathBuf,
        /// What went wrong reading it.
        source: Box<TrainError>,
    },
    /// The checkpoint asked for does not exist.
    #[error("{0}: no such checkpoint file")]
    MissingCheckpoint(PathBuf),
    /// The run has no checkpoint yet.
    #[error(
        "{dir}: no checkpoint (looked for {} and {}); train the run first",
        files::BEST,
        files::CHECKPOINT
    )]
    NoCheckpoint {
        /// The run directory.
        dir: PathBuf,
    },
    /// The checkpoint's tensors do not fit the run's model.
    #[error(
        "{checkpoint} is not a checkpoint of the run's model ({model}, per {config}): {source}"
    )]
    WrongModel {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The run's model, described.
        model: String,
        /// The run's configuration file.
        config: PathBuf,
        /// The mismatch.
        source: Box<ModelError>,
    },
    /// The checkpoint holds NaN or infinite values.
    #[error(
        "{checkpoint}: {} of the checkpoint's {total} model tensors hold NaN or infinite values \
         ({}); nothing can be evaluated or attacked with these weights (a diverged training run?)",
        tensors.len(), shown_names(tensors)
    )]
    NonFinite {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The names of the tensors holding NaN or infinite values.
        tensors: Vec<String>,
        /// How many tensors the model has.
        total: usize,
    },
    /// Opening the device or loading the dataset failed.
    #[error(transparent)]
    Train(Box<TrainError>),
    /// Reading the checkpoint failed.
    #[error(transparent)]
    Model(Box<ModelError>),
}

impl From<TrainError> for LoadRunError {
    fn from(e: TrainError) -> Self {
        LoadRunError::Train(Box::new(e))
    }
}

impl From<ModelError> for LoadRunError {
    fn from(e: ModelError) -> Self {
        LoadRunError::Model(Box::new(e))
    }
}

/// The first few names, then a count of the rest.
fn shown_names(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut shown = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        shown += &format!(" and {} more", names.len() - SHOWN);
    }
    shown
}

/// The checkpoint to use: the one asked for, else the run's best, else its last.
fn find_checkpoint(run: &Path, explicit: Option<&Path>) -> Result<PathBuf, LoadRunError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(LoadRunError::MissingCheckpoint(p.to_path_buf()))
        };
    }
    [files::BEST, files::CHECKPOINT]
        .iter()
        .map(|name| run.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LoadRunError::NoCheckpoint {
            dir: run.to_path_buf(),
        })
}

/// Opens the run, builds its model from the checkpoint and loads its test split. The
/// test split is the dataset's whole one (not the run's `limit_test`), cut to
/// `test_limit`.
///
/// A checkpoint with NaN or infinite tensors is refused: every statistic and attack of
/// such weights is meaningless (NaN gradient norms read as 0, NaN logits as some class).
///
/// # Errors
/// [`LoadRunError`], naming the directory or file at fault.
pub fn load_run(src: &RunSource<'_>) -> Result<LoadedRun, LoadRunError> {
    let (run, mut config) = RunDir::open(src.dir).map_err(|e| LoadRunError::NotARun {
        dir: src.dir.to_path_buf(),
        source: Box::new(e),
    })?;
    let checkpoint = find_checkpoint(run.path(), src.checkpoint)?;
    let device = src.device.open()?;
    // The weights come from the checkpoint; the seed of this initialisation is irrelevant.
    let model = Model::init(&config.model, 0, candle_core::DType::F32, &device)?;
    Checkpoint::read(&checkpoint, &device)?
        .load_into(model.params(), &checkpoint)
        .map_err(|source| LoadRunError::WrongModel {
            checkpoint: checkpoint.clone(),
            model: format!(
                "{}, {} classes, input {:?}",
                config.model.architecture, config.model.classes, config.model.input_shape
            ),
            config: run.file(files::CONFIG),
            source: Box::new(source),
        })?;
    let tensors = model.params().non_finite()?;
    if !tensors.is_empty() {
        return Err(LoadRunError::NonFinite {
            checkpoint,
            tensors,
            total: model.params().all().len(),
        });
    }

    config.limit_train = 0;
    config.limit_test = 0;
    if let Some(d) = src.data {
        config.data_dir = Some(d.to_path_buf());
    }
    let mut test = crate::load_dataset(&config)?.test;
    if let Some(n) = src.test_limit {
        test.truncate(n);
    }
    Ok(LoadedRun {
        run,
        config,
        checkpoint,
        model,
        test,
        device,
    })
}

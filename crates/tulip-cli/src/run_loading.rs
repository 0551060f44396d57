//! Loading a trained run for `tulip eval` and `tulip attack`: its configuration, the model
//! with a checkpoint's weights, and its test split — each failure a message that names the
//! directory, the file or the flag.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use tulip_data::Split;
use tulip_models::{Checkpoint, Classifier, Model};
use tulip_train::run_dir::files;
use tulip_train::{DeviceChoice, RunDir, TrainConfig};

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
    /// The test split (the whole one, or its first `limit` images).
    pub test: Split,
    /// The device the model lives on.
    pub device: Device,
}

/// Where to take the run's parts from (the flags the two commands share).
pub struct RunSource<'a> {
    /// The run directory.
    pub dir: &'a Path,
    /// `--checkpoint`.
    pub checkpoint: Option<&'a Path>,
    /// `--data`.
    pub data: Option<&'a Path>,
    /// `--device`.
    pub device: DeviceChoice,
    /// Keep only the first this-many test images.
    pub limit: Option<usize>,
}

/// The checkpoint to use: the one asked for, else the run's best, else its last.
fn find_checkpoint(run: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--checkpoint {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let candidates = [files::BEST, files::CHECKPOINT];
    candidates
        .iter()
        .map(|name| run.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{}: no checkpoint (looked for {} and {}); train the run first or pass --checkpoint FILE",
                run.display(),
                candidates[0],
                candidates[1]
            )
        })
}

/// An error naming `checkpoint` and its first NaN or infinite tensors, if it has any:
/// every statistic and attack of such weights is meaningless (NaN gradient norms read as
/// 0, NaN logits as some class), so nothing is computed from them.
fn refuse_non_finite(model: &Model, checkpoint: &Path) -> anyhow::Result<()> {
    const SHOWN: usize = 5;
    let params = model.params();
    let bad = params.non_finite()?;
    if bad.is_empty() {
        return Ok(());
    }
    let mut names = bad[..bad.len().min(SHOWN)].join(", ");
    if bad.len() > SHOWN {
        names += &format!(" and {} more", bad.len() - SHOWN);
    }
    bail!(
        "{}: {} of the checkpoint's {} model tensors hold NaN or infinite values ({names}); \
         nothing can be evaluated or attacked with these weights (a diverged training run? \
         pass --checkpoint to choose another checkpoint)",
        checkpoint.display(),
        bad.len(),
        params.all().len()
    )
}

/// Opens the run, builds its model from the checkpoint and loads its test split. The
/// test split is the dataset's whole one (not the run's `--limit-test`), cut to `limit`
/// (the callers reject a limit of 0 with a message naming their own flag).
pub fn load_run(src: &RunSource<'_>) -> anyhow::Result<LoadedRun> {
    let (run, mut config) = RunDir::open(src.dir).with_context(|| {
        format!(
            "{}: not a run directory (it needs the {} written by `tulip train`)",
            src.dir.display(),
            files::CONFIG
        )
    })?;
    let checkpoint = find_checkpoint(run.path(), src.checkpoint)?;
    let device = src.device.open()?;
    // The weights come from the checkpoint; the seed of this initialisation is irrelevant.
    let model = Model::init(&config.model, 0, candle_core::DType::F32, &device)?;
    Checkpoint::read(&checkpoint, &device)?
        .load_into(model.params(), &checkpoint)
        .with_context(|| {
            format!(
                "{} is not a checkpoint of the run's model ({}, {} classes, input {:?}, per {})",
                checkpoint.display(),
                config.model.architecture,
                config.model.classes,
                config.model.input_shape,
                run.file(files::CONFIG).display()
            )
        })?;
    refuse_non_finite(&model, &checkpoint)?;

    config.limit_train = 0;
    config.limit_test = 0;
    if let Some(d) = src.data {
        config.data_dir = Some(d.to_path_buf());
    }
    let mut test = tulip_train::load_dataset(&config)?.test;
    if let Some(n) = src.limit {
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

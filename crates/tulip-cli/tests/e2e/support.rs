//! Helpers for the end-to-end tests: run the `tulip` binary cargo built for them, in a
//! temporary directory, and read the run files back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `tulip` binary built for these tests.
pub fn tulip_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tulip"))
}

/// A `tulip` command with the given arguments, its output captured.
pub fn tulip(args: &[&str]) -> Command {
    let mut cmd = Command::new(tulip_binary());
    cmd.args(args);
    cmd
}

/// Runs a command and returns its output, printing it on failure to help debugging.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("tulip runs");
    if !out.status.success() {
        eprintln!("stdout:\n{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// Header and numeric rows of a CSV file of a run directory.
///
/// # Panics
/// If the file is missing or not numeric.
pub fn csv(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    tulip_train::run_dir::read_csv(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The column `name` of a CSV.
///
/// # Panics
/// If there is no such column.
pub fn column(csv: &(Vec<String>, Vec<Vec<f64>>), name: &str) -> Vec<f64> {
    let i = csv
        .0
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", csv.0));
    csv.1.iter().map(|r| r[i]).collect()
}

/// The standard error of a finished command, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Trains a run into a new temporary directory with `tulip train --quiet --no-eval-train`
/// and `args`, and returns the directory (kept alive by the `TempDir`) and the run
/// directory inside it. For tests that need a real run directory, not a good model.
///
/// # Panics
/// If training fails.
pub fn trained_run(args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("run");
    let mut all = vec!["train", "--log-dir", dir.to_str().expect("UTF-8 path")];
    all.extend(["--quiet", "--no-eval-train"]);
    all.extend(args);
    let out = run(&mut tulip(&all));
    assert!(out.status.success(), "training failed: {}", stderr(&out));
    (tmp, dir)
}

/// Creates a run directory at `dir` for an untrained ResNet8 on Fashion-MNIST (its
/// `config.toml` written by [`tulip_train::RunDir::create`]) whose best checkpoint is a real
/// initialisation of that model with every element of the tensors `poisoned` picks (by
/// name) set to `value`. Returns the checkpoint's path. For the commands' handling of a
/// diverged run without training one.
///
/// # Panics
/// If the directory or the checkpoint cannot be written.
pub fn run_with_poisoned_checkpoint(
    dir: &Path,
    poisoned: impl Fn(&str) -> bool,
    value: f32,
) -> PathBuf {
    use tulip_models::{Architecture, Checkpoint, Classifier, Model, ModelConfig};
    let model_config = ModelConfig::new(Architecture::ResNet8, 10, (1, 28, 28));
    let config = tulip_train::TrainConfig::new(tulip_data::DatasetKind::FashionMnist, model_config);
    let (run, lock) = tulip_train::RunDir::create(dir, &config).expect("run directory");
    drop(lock);
    let device = candle_core::Device::Cpu;
    let model = Model::init(&config.model, 0, candle_core::DType::F32, &device).expect("model");
    let mut checkpoint = Checkpoint::from_params(model.params());
    for (name, t) in &mut checkpoint.tensors {
        if poisoned(name.as_str()) {
            *t = candle_core::Tensor::full(value, t.dims(), &device).expect("filled tensor");
        }
    }
    let path = run.file(tulip_train::run_dir::files::BEST);
    checkpoint.write(&path).expect("checkpoint written");
    path
}

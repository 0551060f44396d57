//! The training loop on a small real Fashion-MNIST subset: determinism, interrupt and
//! resume, run files, divergence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};
use tulip_data::{Augmentation, DatasetKind};
use tulip_models::{Architecture, Checkpoint, Classifier, Model, ModelConfig};
use tulip_train::run_dir::{files, read_csv};
use tulip_train::{LrSchedule, Observer, StepReport, TrainConfig, TrainError, Trainer};

/// ResNet22 on 96 training images in batches of 32: 3 steps per epoch.
fn small_config() -> TrainConfig {
    let kind = DatasetKind::FashionMnist;
    let model = ModelConfig::new(Architecture::ResNet22, kind.classes(), kind.image_shape());
    TrainConfig {
        limit_train: 96,
        limit_test: 100,
        epochs: 2,
        batch_size: 32,
        test_batch_size: 100,
        lr: 0.05,
        lr_schedule: LrSchedule::parse("0:1,1:0.5").unwrap(),
        augmentation: Augmentation::standard(),
        seed: 11,
        log_interval: 1,
        ..TrainConfig::new(kind, model)
    }
}

fn data(config: &TrainConfig) -> tulip_data::Dataset {
    tulip_train::load_dataset(config).unwrap_or_else(|e| {
        panic!("{e}\n(the tests need Fashion-MNIST: sudo apt-get install dataset-fashion-mnist)")
    })
}

/// Sets the stop flag after a given number of steps, as Ctrl-C would.
struct StopAfter {
    steps: usize,
    flag: Arc<AtomicBool>,
}

impl Observer for StopAfter {
    fn step(&mut self, r: &StepReport) {
        if r.global_step + 1 == self.steps {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

fn params_of(dir: &std::path::Path, name: &str) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::read(&dir.join(name), &Device::Cpu).unwrap();
    ck.tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect()
}

/// test.csv without the wall-clock column.
fn test_rows(dir: &std::path::Path) -> Vec<Vec<f64>> {
    let (header, rows) = read_csv(&dir.join(files::TEST_CSV)).unwrap();
    let t = header.iter().position(|h| h == "time").unwrap();
    rows.into_iter()
        .map(|mut r| {
            r.remove(t);
            r
        })
        .collect()
}

#[test]
fn interrupted_and_resumed_run_equals_an_uninterrupted_one() {
    let config = small_config();
    let data = data(&config);
    let tmp = tempfile::tempdir().unwrap();

    let straight = tmp.path().join("straight");
    let mut t = Trainer::new(config.clone(), data.clone(), &straight).unwrap();
    let summary = t.run(&mut tulip_train::Silent).unwrap();
    assert_eq!(summary.epochs, 2);

    // Same seed, interrupted in the middle of the first epoch (after step 2 of 3), then
    // resumed from the checkpoint by a fresh trainer.
    let split = tmp.path().join("split");
    let mut t = Trainer::new(config.clone(), data.clone(), &split).unwrap();
    let flag = t.stop_flag();
    let err = t.run(&mut StopAfter { steps: 2, flag }).unwrap_err();
    assert!(
        matches!(err, TrainError::Interrupted { epoch: 0, step: 2 }),
        "{err}"
    );
    assert!(split.join(files::CHECKPOINT).exists());
    assert!(!split.join(files::TEST_CSV).exists() || test_rows(&split).is_empty());
    drop(t); // the process that stopped lets go of the run
    let mut t =
        Trainer::resume(&split, data.clone(), &tulip_train::ResumeOptions::default()).unwrap();
    t.run(&mut tulip_train::Silent).unwrap();

    // Same parameters, buffers and momentum, same logged numbers.
    assert_eq!(
        params_of(&straight, files::CHECKPOINT),
        params_of(&split, files::CHECKPOINT)
    );
    assert_eq!(
        params_of(&straight, files::BEST),
        params_of(&split, files::BEST)
    );
    assert_eq!(test_rows(&straight), test_rows(&split));
    let losses = |d: &std::path::Path| -> Vec<f64> {
        let (h, rows) = read_csv(&d.join(files::TRAINING_CSV)).unwrap();
        let i = h.iter().position(|c| c == "loss").unwrap();
        rows.iter().map(|r| r[i]).collect()
    };
    assert_eq!(losses(&straight).len(), 6, "one row per step");
    assert_eq!(losses(&straight), losses(&split));

    // A different seed gives different numbers (the comparison above can fail).
    let other = tmp.path().join("other");
    let mut t = Trainer::new(TrainConfig { seed: 12, ..config }, data, &other).unwrap();
    t.run(&mut tulip_train::Silent).unwrap();
    assert_ne!(losses(&straight), losses(&other));
}

#[test]
fn run_files_exist_and_read_back() {
    let config = TrainConfig {
        epochs: 1,
        ..small_config()
    };
    let data = data(&config);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut t = Trainer::new(config.clone(), data, &dir).unwrap();
    t.run(&mut tulip_train::Silent).unwrap();

    let (_, read_back) = tulip_train::RunDir::open(&dir).unwrap();
    assert_eq!(read_back, config, "config.toml round-trips");
    let (header, rows) = read_csv(&dir.join(files::TEST_CSV)).unwrap();
    assert_eq!(
        header,
        [
            "epoch",
            "time",
            "test_loss",
            "test_error",
            "train_loss",
            "train_error",
            "tikhonov",
            "lr"
        ]
    );
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert!(row[2].is_finite() && (0.0..=100.0).contains(&row[3]) && row[4].is_finite());
    assert!((row[7] - 0.05).abs() < 1e-12);
    // The Tikhonov column is Σ‖θ‖² over every trainable tensor of the saved model.
    let ck = Checkpoint::read(&dir.join(files::CHECKPOINT), &Device::Cpu).unwrap();
    let model = tulip_models::Model::init(&config.model, 0, DType::F32, &Device::Cpu).unwrap();
    ck.load_into(model.params(), &dir.join(files::CHECKPOINT))
        .unwrap();
    let by_hand: f64 = model
        .params()
        .trainable()
        .map(|p| {
            p.var
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
        })
        .sum();
    assert!(
        (row[6] - by_hand).abs() < 1e-3 * by_hand,
        "{} vs {by_hand}",
        row[6]
    );
    assert_eq!(ck.metadata.get("epoch").map(String::as_str), Some("1"));
    assert!(ck.metadata.contains_key("config"));
    let best = Checkpoint::read(&dir.join(files::BEST), &Device::Cpu).unwrap();
    assert_eq!(best.metadata.get("test_error"), Some(&row[3].to_string()));
    assert!(
        best.tensors.keys().all(|k| !k.starts_with("optimizer.")),
        "best holds the model only"
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_and_every_checkpoint_left_is_finite() {
    // Without batch norm (which makes the loss scale-invariant in most weights), an absurd
    // learning rate blows the weights up within a few steps.
    let mut config = TrainConfig {
        lr: 1e8,
        epochs: 3,
        eval_train: false,
        checkpoint_every: tulip_train::CheckpointEvery::Steps(1),
        ..small_config()
    };
    config.model.batch_norm = false;
    let data = data(&config);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut t = Trainer::new(config.clone(), data, &dir).unwrap();
    let err = t.run(&mut tulip_train::Silent).unwrap_err();
    let TrainError::Diverged {
        step,
        last_checkpoint,
        ..
    } = &err
    else {
        panic!("not a divergence: {err}");
    };
    assert!(err.to_string().contains("diverged"));
    // Whatever was written stays readable, and every checkpoint holds finite weights: the
    // one the message names is the step before the divergence (one is written per step).
    assert!(read_csv(&dir.join(files::TRAINING_CSV)).is_ok());
    for name in [files::CHECKPOINT, files::BEST] {
        let path = dir.join(name);
        if path.exists() {
            let model = Model::init(&config.model, 0, DType::F32, &Device::Cpu).unwrap();
            Checkpoint::read(&path, &Device::Cpu)
                .unwrap()
                .load_into(model.params(), &path)
                .unwrap();
            assert_eq!(
                model.params().non_finite().unwrap(),
                Vec::<String>::new(),
                "{name}"
            );
        }
    }
    match last_checkpoint {
        Some(saved) => {
            assert_eq!(saved.step, *step, "{err}");
            assert!(err.to_string().contains(&saved.path.display().to_string()));
        }
        None => assert_eq!(*step, 0, "{err}"),
    }
}

#[test]
fn configuration_errors_name_the_setting_before_any_work() {
    let config = small_config();
    let data = data(&config);
    let tmp = tempfile::tempdir().unwrap();
    for (bad, needle) in [
        (
            TrainConfig {
                lr: -0.1,
                ..config.clone()
            },
            "lr must be positive",
        ),
        (
            TrainConfig {
                batch_size: 500,
                ..config.clone()
            },
            "batch_size 500",
        ),
        (
            TrainConfig {
                epochs: 0,
                ..config.clone()
            },
            "epochs must be at least 1",
        ),
    ] {
        let dir = tmp.path().join("never");
        let err = Trainer::new(bad, data.clone(), &dir)
            .err()
            .expect("rejected")
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert!(
            !dir.exists(),
            "nothing is written for a rejected configuration"
        );
    }
}

#[test]
fn limits_larger_than_the_split_are_rejected_not_ignored() {
    let config = small_config();
    for (bad, needle) in [
        (
            TrainConfig {
                limit_train: 60_001,
                ..config.clone()
            },
            "limit_train 60001 is larger than the training split of fashion-mnist, which has 60000 examples",
        ),
        (
            TrainConfig {
                limit_test: 10_001,
                ..config.clone()
            },
            "limit_test 10001 is larger than the test split of fashion-mnist, which has 10000 examples",
        ),
    ] {
        let err = tulip_train::load_dataset(&bad).expect_err("rejected");
        assert!(matches!(err, TrainError::InvalidSetting { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // Exactly the split is allowed: the limit then changes nothing.
    let whole = TrainConfig {
        limit_train: 60_000,
        limit_test: 10_000,
        ..config
    };
    let data = data(&whole);
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
}

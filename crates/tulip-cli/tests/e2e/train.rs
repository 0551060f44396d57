//! `tulip train`: a real short run, flag validation, determinism, Ctrl-C and resume,
//! and the Lipschitz penalty's effect.

use std::path::Path;

use crate::support::{column, csv, run, stderr, tulip};
use candle_core::{DType, Device, Tensor};
use tulip_data::Loader;
use tulip_models::{Checkpoint, Classifier, Model};
use tulip_train::run_dir::files;
use tulip_train::RunDir;

/// A small but real budget: ResNet22 on a Fashion-MNIST subset, no per-epoch train-set
/// evaluation, one log row per step.
const SMALL: &[&str] = &[
    "--batch-size",
    "32",
    "--limit-test",
    "200",
    "--no-eval-train",
    "--log-interval",
    "1",
    "--quiet",
];

fn train(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--log-dir", dir.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    run(&mut tulip(&args))
}

/// Every file of a run directory exists and parses.
fn check_run_files(dir: &Path, epochs: usize) {
    let (_, config) = RunDir::open(dir).expect("config.toml parses");
    let test = csv(&dir.join(files::TEST_CSV));
    assert_eq!(test.1.len(), epochs, "one test.csv row per epoch");
    let training = csv(&dir.join(files::TRAINING_CSV));
    assert!(!training.1.is_empty());
    for name in [files::CHECKPOINT, files::BEST] {
        let ck = Checkpoint::read(&dir.join(name), &Device::Cpu).expect("checkpoint reads");
        let model = Model::init(&config.model, 0, DType::F32, &Device::Cpu).unwrap();
        ck.load_into(model.params(), &dir.join(name))
            .expect("checkpoint fits the configured model");
        assert!(ck.metadata.contains_key("epoch") && ck.metadata.contains_key("config"));
    }
    assert!(dir.join(files::LOG).exists());
}

/// Calibrated with this exact budget on seeds 1–3 (ResNet22, 2 epochs of 1,024 images in
/// batches of 64, lr 0.05 then 0.01): the mean training loss over the last 8 steps was
/// 1.56–1.60, from 2.3–2.4 at the start. A trainer that does not learn stays near
/// ln 10 ≈ 2.30. Test accuracy after so few steps swings widely with the lagging batch-norm
/// running statistics (10–38 % on those seeds, as the PyTorch reference shows too), so
/// it is not the criterion. (The reference's own one-epoch check, 78 steps of 128 at
/// lr 0.1 on 10k images, gave 1.09 here against PyTorch's 0.88–1.32.)
#[test]
fn train_learns_on_a_real_subset_and_writes_every_run_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = train(
        &dir,
        &[
            "--epochs",
            "2",
            "--limit-train",
            "1024",
            "--batch-size",
            "64",
            "--lr",
            "0.05",
            "--lr-schedule",
            "0:1,1:0.2",
            "--seed",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    check_run_files(&dir, 2);
    let training = csv(&dir.join(files::TRAINING_CSV));
    let loss = column(&training, "loss");
    assert_eq!(loss.len(), 32, "16 steps per epoch, one row each");
    let first = loss[..4].iter().sum::<f64>() / 4.0;
    let last = loss[loss.len() - 8..].iter().sum::<f64>() / 8.0;
    assert!(first > 2.0, "initial loss {first} should be near ln 10");
    assert!(
        last < 1.9,
        "training loss did not fall enough: {first} → {last}"
    );
    let test = csv(&dir.join(files::TEST_CSV));
    assert!(column(&test, "test_loss").iter().all(|v| v.is_finite()));
    assert_eq!(column(&test, "lr"), vec![0.05, 0.05 * 0.2]);

    // Started without malloc settings, `tulip` re-executed itself with glibc told to keep
    // freed memory, and the run's log says so.
    if tulip_train::malloc::should_reexec(|k| std::env::var_os(k)) {
        let log = std::fs::read_to_string(dir.join(files::LOG)).unwrap();
        let want = tulip_train::malloc::RETAIN_FREED_MEMORY
            .iter()
            .fold("TULIP_MALLOC=retain".to_string(), |s, (k, v)| {
                format!("{s} {k}={v}")
            });
        assert!(log.contains(&want), "{want:?} not in the log:\n{log}");
    }
}

#[test]
fn invalid_flags_are_rejected_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    let d = dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "-0.1"], "--lr"),
        (&["--model", "resnet99"], "--model"),
        (&["--lr-schedule", "0:1,oops"], "--lr-schedule"),
        (&["--lr-schedule", "[[10,1]]"], "epoch 0"),
        (
            &["--limit-train", "100", "--batch-size", "128"],
            "--batch-size 128",
        ),
        (&["--j1", "0.1", "--j2", "0.1"], "--j2"),
        (&["--momentum", "1.5"], "--momentum"),
        (&["--kernel-size", "4"], "kernel size"),
        (&["--pgd-inf", "eps=oops"], "--pgd-inf"),
        (&["--device", "tpu"], "--device"),
        (&["--data", "/nonexistent/dir"], "/nonexistent/dir"),
        (
            &[
                "--cutout",
                "100",
                "--epochs",
                "1",
                "--limit-train",
                "8",
                "--limit-test",
                "8",
                "--batch-size",
                "8",
            ],
            "--cutout 100 is larger than the 28x28 images of fashion-mnist",
        ),
        (
            // Were the limit accepted, the whole test split would be evaluated: a small
            // model keeps that failure quick.
            &[
                "--limit-test",
                "10001",
                "--model",
                "resnet8",
                "--epochs",
                "1",
                "--limit-train",
                "8",
                "--batch-size",
                "8",
                "--no-eval-train",
            ],
            "--limit-test 10001 is larger than the test split of fashion-mnist, which has 10000 examples",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["train", "--log-dir", d, "--quiet"];
        args.extend_from_slice(flags);
        let out = tulip(&args).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(
            err.contains(needle),
            "{flags:?}: message does not name {needle:?}:\n{err}"
        );
        assert!(!dir.exists(), "{flags:?}: a run directory was created");
    }
}

/// The rows without the wall-clock column, as bit patterns (so NaN, written for the
/// switched-off train-set columns, compares equal to itself).
fn without_time(rows: &(Vec<String>, Vec<Vec<f64>>)) -> Vec<Vec<u64>> {
    let t = rows.0.iter().position(|h| h == "time").unwrap();
    rows.1
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| *i != t)
                .map(|(_, v)| v.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn same_seed_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Vec<_> = ["a", "b"].iter().map(|n| tmp.path().join(n)).collect();
    for dir in &runs {
        let out = train(
            dir,
            &["--epochs", "1", "--limit-train", "96", "--seed", "3"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for file in [files::TRAINING_CSV, files::TEST_CSV] {
        let a = without_time(&csv(&runs[0].join(file)));
        let b = without_time(&csv(&runs[1].join(file)));
        assert_eq!(a, b, "{file} differs between two runs with the same seed");
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = vec!["train", "--log-dir", dir.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--epochs", "2", "--limit-train", "320", "--seed", "4"]);
    let child = tulip(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way (a training.csv row exists), then interrupt.
    let training = dir.join(files::TRAINING_CSV);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::fs::read_to_string(&training).map_or(true, |t| t.lines().count() < 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "training never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    let ck = Checkpoint::read(&dir.join(files::CHECKPOINT), &Device::Cpu)
        .expect("checkpoint after Ctrl-C");
    let step: usize = ck.metadata["global_step"].parse().unwrap();
    assert!((1..20).contains(&step), "stopped at step {step} of 20");

    let out = run(&mut tulip(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    check_run_files(&dir, 2);
    let steps = column(&csv(&dir.join(files::TRAINING_CSV)), "index");
    assert_eq!(
        steps,
        (1..=20).map(f64::from).collect::<Vec<_>>(),
        "every step logged exactly once"
    );
}

/// max_i ‖∇ₓ ℓ_i‖₂ over the first test images, for the best model of a run, with batch
/// statistics (training-mode batch norm over test batches of 100), as the penalty sees
/// it. After only a few steps, evaluation-mode batch norm (running statistics lagging
/// the weights) often collapses these models to a constant output whose input gradient
/// is exactly zero, so evaluation mode would compare nothing.
fn max_input_gradient_norm(dir: &Path) -> f64 {
    let (_, config) = RunDir::open(dir).unwrap();
    let model = Model::init(&config.model, 0, DType::F32, &Device::Cpu).unwrap();
    let path = dir.join(files::BEST);
    Checkpoint::read(&path, &Device::Cpu)
        .unwrap()
        .load_into(model.params(), &path)
        .unwrap();
    let data = tulip_train::load_dataset(&config).unwrap();
    let loader = Loader::test(&data.test, 100, &Device::Cpu).unwrap();
    let mut max = 0f64;
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        let g = tulip_penalties::input_gradient(&model, &batch.images, &batch.labels, true)
            .unwrap()
            .gradient;
        let norms: Tensor = tulip_penalties::row_norms(&g, tulip_penalties::Norm::L2).unwrap();
        let m: f32 = norms.max_all().unwrap().to_scalar().unwrap();
        max = max.max(f64::from(m));
    }
    max
}

/// Same seed and budget, the `--lip` model has a clearly smaller
/// maximum input-gradient norm of the loss on test images. The paper's best setting
/// (`--tanh --decay 5e-4 --lip 0.1 --j2 0.01`) runs end to end alongside.
#[test]
fn lipschitz_penalty_shrinks_the_input_gradient_and_the_best_setting_runs() {
    let tmp = tempfile::tempdir().unwrap();
    // Measured here (seed 9): max ‖∇ₓℓ‖ 0.89 without the penalty, 0.31 with it.
    #[rustfmt::skip]
    let budget = ["--epochs", "1", "--limit-train", "512", "--batch-size", "64", "--lr", "0.05", "--seed", "9"];
    let plain = tmp.path().join("plain");
    let lip = tmp.path().join("lip");
    let out = train(&plain, &budget);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut with_lip = budget.to_vec();
    with_lip.extend_from_slice(&["--lip", "1.0"]);
    let out = train(&lip, &with_lip);
    assert!(out.status.success(), "{}", stderr(&out));
    let (g_plain, g_lip) = (
        max_input_gradient_norm(&plain),
        max_input_gradient_norm(&lip),
    );
    assert!(
        g_lip < 0.5 * g_plain,
        "max ‖∇ₓℓ‖: plain {g_plain}, --lip {g_lip}"
    );
    let penalty = column(&csv(&lip.join(files::TRAINING_CSV)), "lipschitz");
    assert!(penalty.iter().all(|v| v.is_finite() && *v >= 0.0));

    let best = tmp.path().join("best");
    let out = train(
        &best,
        &[
            "--epochs",
            "1",
            "--limit-train",
            "64",
            "--tanh",
            "--decay",
            "5e-4",
            "--lip",
            "0.1",
            "--j2",
            "0.01",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    check_run_files(&best, 1);
    let training = csv(&best.join(files::TRAINING_CSV));
    for col in ["loss", "cross_entropy", "lipschitz", "tikhonov"] {
        assert!(
            column(&training, col).iter().all(|v| v.is_finite()),
            "{col}"
        );
    }
    let (_, config) = RunDir::open(&best).unwrap();
    assert!(config.model.tanh && config.objective.lip == 0.1 && config.objective.decay == 5e-4);
    assert!(config.objective.perturbation.is_some());
}

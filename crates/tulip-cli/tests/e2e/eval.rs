//! `tulip eval` and `tulip nn-attack`: a summary of a real (tiny) run, the files written,
//! and clear errors for a run without a checkpoint, a checkpoint of another architecture
//! and bad flags.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::{run, stderr, tulip};
use tulip_data::DatasetKind;
use tulip_models::Architecture;
use tulip_train::run_dir::files;
use tulip_train::RunDir;

/// One tiny training run shared by the tests of this file (ResNet22, one epoch of 64
/// images): what matters here is a real run directory, not a good model.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    #[rustfmt::skip]
    let run = RUN.get_or_init(|| crate::support::trained_run(&[
        "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
        "--batch-size", "32", "--seed", "2",
    ]));
    &run.1
}

/// A new run directory holding `run`'s configuration, with `edit` applied to it.
fn copy_config(run: &Path, to: &Path, edit: impl FnOnce(&mut tulip_train::TrainConfig)) {
    let (_, mut config) = RunDir::open(run).unwrap();
    edit(&mut config);
    std::fs::create_dir_all(to).unwrap();
    std::fs::write(to.join(files::CONFIG), config.to_toml().unwrap()).unwrap();
}

#[test]
fn eval_prints_the_summary_and_writes_eval_json() {
    let dir = trained_run();
    let out = run(&mut tulip(&[
        "eval",
        dir.to_str().unwrap(),
        "--limit",
        "20",
        "--batch-size",
        "8",
        "--json",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = std::fs::read_to_string(dir.join("eval.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(printed, saved);
    assert_eq!(saved["images"], 20);
    assert!(saved["checkpoint"].as_str().unwrap().ends_with(files::BEST));
    for key in [
        "test_error_percent",
        "mean_loss",
        "lipschitz_estimate",
        "jacobian_norm",
        "weight_product_norm",
        "weight_norm",
    ] {
        let v = saved[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {text}"));
        assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
    }
    assert!(saved["tanh_scale"].is_null(), "no tanh layer in this run");
    let certified = tulip_eval_rows(&dir.join("certified.csv"));
    let correct = saved["correct"].as_u64().unwrap() as usize;
    assert_eq!(certified, correct);
    if correct > 0 {
        let (m, w, b) = (
            saved["min_margin"].as_f64().unwrap(),
            saved["weight_product_norm"].as_f64().unwrap(),
            saved["distance_lower_bound"].as_f64().unwrap(),
        );
        assert!((b - m / (2.0 * w)).abs() <= 1e-12 * b.abs().max(1.0));
    }

    // The table on stdout says the gradient statistic is unscaled.
    let out = run(&mut tulip(&["eval", dir.to_str().unwrap(), "--limit", "4"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("unscaled") && table.contains("test error"),
        "{table}"
    );
}

/// Data rows of a CSV file.
fn tulip_eval_rows(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .count()
        - 1
}

#[test]
fn eval_errors_name_the_problem() {
    let dir = trained_run();
    let tmp = tempfile::tempdir().unwrap();

    // A run directory without any checkpoint.
    let empty = tmp.path().join("no-checkpoint");
    copy_config(dir, &empty, |_| {});
    let out = tulip(&["eval", empty.to_str().unwrap()]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    for needle in [empty.to_str().unwrap(), files::BEST, files::CHECKPOINT] {
        assert!(err.contains(needle), "does not name {needle}:\n{err}");
    }

    // A checkpoint of another architecture.
    let other = tmp.path().join("other-arch");
    copy_config(dir, &other, |c| c.model.architecture = Architecture::AllCnn);
    std::fs::copy(dir.join(files::BEST), other.join(files::BEST)).unwrap();
    let out = tulip(&["eval", other.to_str().unwrap(), "--limit", "2"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    for needle in [
        "allcnn",
        "does not match",
        "missing tensors",
        "unexpected tensors",
    ] {
        assert!(err.contains(needle), "does not name {needle:?}:\n{err}");
    }

    // Not a run directory; a missing --checkpoint file; bad flag values.
    let not_run = tmp.path().join("not-a-run");
    std::fs::create_dir_all(&not_run).unwrap();
    let d = dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["eval", not_run.to_str().unwrap()], "config.toml"),
        (
            vec!["eval", d, "--checkpoint", "/nonexistent/x.safetensors"],
            "/nonexistent/x.safetensors",
        ),
        (vec!["eval", d, "--batch-size", "0"], "--batch-size"),
        (vec!["eval", d, "--limit", "0"], "--limit"),
        (vec!["eval", d, "--limit", "-3"], "--limit"),
        (vec!["eval", d, "--device", "tpu"], "--device"),
        (
            vec!["eval", d, "--jacobian-limit", "0", "--limit", "2"],
            "--jacobian-limit must be at least 1",
        ),
    ];
    for (args, needle) in cases {
        let out = tulip(&args).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            err.contains(needle),
            "{args:?}: does not name {needle:?}:\n{err}"
        );
    }
}

fn brute_force(q: &[u8], q_label: u8, train: &tulip_data::Split) -> f64 {
    (0..train.len())
        .filter(|&j| train.labels[j] != q_label)
        .map(|j| {
            q.iter()
                .zip(train.image(j))
                .map(|(&a, &b)| f64::from(a.abs_diff(b)).powi(2))
                .sum::<f64>()
        })
        .fold(f64::INFINITY, f64::min)
        .sqrt()
        / 255.0
}

#[test]
fn nn_attack_saves_every_distance_and_matches_brute_force() {
    let tmp = tempfile::tempdir().unwrap();
    let kind = DatasetKind::FashionMnist;
    let data = tulip_data::load(kind, &tulip_data::locate(kind, None).unwrap()).unwrap();
    for (train_only, split) in [(false, &data.test), (true, &data.train)] {
        let csv = tmp.path().join(format!("nn-{train_only}.csv"));
        let mut args = vec!["nn-attack", "--limit", "12", "--query-block", "5", "--json"];
        args.extend(["--out", csv.to_str().unwrap()]);
        if train_only {
            args.push("--train-only");
        }
        let out = run(&mut tulip(&args));
        assert!(out.status.success(), "{}", stderr(&out));
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stats["images"], 12);
        let text = std::fs::read_to_string(&csv).unwrap();
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
            .collect();
        assert_eq!(text.lines().next(), Some("index,label,distance"));
        assert_eq!(rows.len(), 12);
        for i in [0, 7, 11] {
            assert_eq!(rows[i][0], i as f64);
            assert_eq!(rows[i][1], f64::from(split.labels[i]));
            let want = brute_force(split.image(i), split.labels[i], &data.train);
            assert!(
                (rows[i][2] - want).abs() < 1e-6,
                "image {i}: {} vs {want}",
                rows[i][2]
            );
        }
        let mean = rows.iter().map(|r| r[2]).sum::<f64>() / 12.0;
        assert!((stats["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    }
    for (args, needle) in [
        (vec!["nn-attack", "--limit", "0"], "--limit"),
        (
            vec!["nn-attack", "--data", "/nonexistent/data"],
            "/nonexistent/data",
        ),
        (
            vec!["nn-attack", "--reference-block", "0"],
            "--reference-block",
        ),
    ] {
        let out = tulip(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(needle), "{args:?}:\n{}", stderr(&out));
    }
}

/// A checkpoint of a diverged run (NaN in every tensor) is refused with an error that names
/// the file and its first tensors, and no eval.json is written; without the check
/// `tulip eval` printed a Lipschitz estimate of 0 and exited 0.
#[test]
fn eval_refuses_a_checkpoint_with_nan_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("diverged");
    let checkpoint = crate::support::run_with_poisoned_checkpoint(&dir, |_| true, f32::NAN);
    let out = tulip(&["eval", dir.to_str().unwrap(), "--limit", "8"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted:\n{err}");
    // One message says it all (the progress lines name the checkpoint too).
    let message = err
        .lines()
        .find(|l| l.contains("NaN or infinite"))
        .unwrap_or_else(|| panic!("no message about NaN weights:\n{err}"));
    for needle in [
        checkpoint.to_str().unwrap(),
        // The model's first tensor, then how many more there are.
        "layer0.0.weight",
        " more",
    ] {
        assert!(message.contains(needle), "does not name {needle:?}:\n{err}");
    }
    assert!(!err.contains("evaluating"), "evaluation started:\n{err}");
    assert!(!dir.join("eval.json").exists());
    assert!(!dir.join("certified.csv").exists());
}

//! `tulip attack` on a real (tiny) run: the per-image CSV, the summary and the plots, and
//! clear errors for an attack/norm pair that does not exist, a missing ε and a run
//! without a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::{run, stderr, tulip};

/// One tiny ResNet8 run shared by the tests of this file: a real run directory, not a
/// good model.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    #[rustfmt::skip]
    let run = RUN.get_or_init(|| crate::support::trained_run(&[
        "--model", "resnet8", "--epochs", "1", "--limit-train", "256",
        "--limit-test", "32", "--batch-size", "32", "--lr", "0.05",
    ]));
    &run.1
}

/// Rows of a per-image attack CSV as (label, predicted, l2, linf, success).
fn rows(path: &Path) -> Vec<(u32, u32, f64, f64, bool)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("index,label,predicted,l2,linf,success"));
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "{line}");
            assert_eq!(f[0].parse::<usize>().unwrap(), i, "rows in image order");
            let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
            (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                num(f[3]),
                num(f[4]),
                f[5] == "1",
            )
        })
        .collect()
}

#[test]
fn attack_writes_per_image_results_a_summary_and_the_curves() {
    let dir = trained_run();
    // `tulip eval` first, so the attack also plots and checks the certified bounds.
    let out = run(&mut tulip(&[
        "eval",
        dir.to_str().unwrap(),
        "--limit",
        "24",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));

    for (attack, norm) in [("deepfool", "l2"), ("fgsm", "linf")] {
        let out = run(&mut tulip(&[
            "attack",
            dir.to_str().unwrap(),
            "--attack",
            attack,
            "--norm",
            norm,
            "--images",
            "24",
            "--batch-size",
            "10",
            "--json",
        ]));
        assert!(out.status.success(), "{attack}: {}", stderr(&out));
        let name = format!("{attack}-{norm}");
        let results = dir.join("attacks");
        let rows = rows(&results.join(format!("{name}.csv")));
        assert_eq!(
            rows.len(),
            24,
            "one row per attacked image, batches of 10 included"
        );
        for &(label, predicted, l2, linf, success) in &rows {
            if success {
                // A success is a misclassified image, at distances that obey ‖δ‖∞ ≤ ‖δ‖₂
                // ≤ √N‖δ‖∞ (N = 784), both 0 for an image misclassified from the start.
                assert_ne!(label, predicted, "{name}: a success must be misclassified");
                assert!(
                    linf >= 0.0 && l2 >= linf * (1.0 - 1e-6),
                    "{name}: l2 {l2} linf {linf}"
                );
                assert!(
                    l2 <= linf * 28.0 * (1.0 + 1e-6),
                    "{name}: l2 {l2} linf {linf}"
                );
            } else {
                assert!(
                    l2.is_nan() && linf.is_nan(),
                    "{name}: a failure has no distance"
                );
                assert_eq!(label, predicted, "{name}: a failure keeps the right class");
            }
        }
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let saved: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(results.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(printed, saved);
        let count = |k: &str| saved[k].as_u64().unwrap() as usize;
        assert_eq!(count("images"), 24);
        assert_eq!(
            count("found") + count("already_misclassified") + count("failed"),
            24
        );
        assert_eq!(count("failed"), rows.iter().filter(|r| !r.4).count());
        for svg in [format!("{name}.svg"), format!("{name}-certified.svg")] {
            let text = std::fs::read_to_string(results.join(&svg)).unwrap();
            assert!(
                text.starts_with("<svg") || text.starts_with("<?xml"),
                "{svg}"
            );
            // The chart says which run, model and how many images it shows.
            let (_, config) = tulip_train::RunDir::open(dir).unwrap();
            let model = config.model.architecture.to_string();
            for needle in [model.as_str(), "24 images"] {
                assert!(text.contains(needle), "{svg} lacks {needle:?}");
            }
        }
    }
}

#[test]
fn attack_and_norm_that_do_not_exist_are_usage_errors() {
    // Rejected before the run directory is even read.
    let missing = "/nonexistent/run";
    let out = run(&mut tulip(&[
        "attack", missing, "--attack", "fgsm", "--norm", "l2",
    ]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("fgsm") && err.contains("linf"), "{err}");

    let out = run(&mut tulip(&[
        "attack", missing, "--attack", "pgd", "--norm", "linf",
    ]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("epsilon"),
        "{}",
        stderr(&out)
    );

    let out = run(&mut tulip(&[
        "attack", missing, "--attack", "carlini", "--norm", "l2",
    ]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("carlini"), "{}", stderr(&out));
}

#[test]
fn attack_on_a_run_without_a_checkpoint_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let src = trained_run();
    std::fs::copy(src.join("config.toml"), tmp.path().join("config.toml")).unwrap();
    let out = run(&mut tulip(&[
        "attack",
        tmp.path().to_str().unwrap(),
        "--attack",
        "deepfool",
        "--norm",
        "l2",
    ]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no checkpoint") && err.contains("best.safetensors"),
        "{err}"
    );
}

/// One infinite tensor among finite ones is enough for `tulip attack` to refuse the
/// checkpoint, naming the file and that tensor (and writing no result).
#[test]
fn attack_refuses_a_checkpoint_with_an_infinite_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("diverged");
    let checkpoint = crate::support::run_with_poisoned_checkpoint(
        &dir,
        |name| name == "fc.weight",
        f32::INFINITY,
    );
    let out = run(&mut tulip(&[
        "attack",
        dir.to_str().unwrap(),
        "--attack",
        "deepfool",
        "--norm",
        "l2",
        "--images",
        "4",
    ]));
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted:\n{err}");
    // One message says it all (the progress line names the checkpoint too).
    let message = err
        .lines()
        .find(|l| l.contains("NaN or infinite"))
        .unwrap_or_else(|| panic!("no message about infinite weights:\n{err}"));
    for needle in [checkpoint.to_str().unwrap(), "(fc.weight)"] {
        assert!(message.contains(needle), "does not name {needle:?}:\n{err}");
    }
    assert!(!dir.join("attacks").exists());
}

/// Finite weights whose logits overflow: the attack stops at the first image, naming it,
/// rather than reporting distances measured from the arg-max of infinities.
#[test]
fn attack_refuses_a_model_whose_clean_logits_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("overflowing");
    let checkpoint =
        crate::support::run_with_poisoned_checkpoint(&dir, |name| name == "fc.weight", 1e38);
    let out = run(&mut tulip(&[
        "attack",
        dir.to_str().unwrap(),
        "--attack",
        "deepfool",
        "--norm",
        "l2",
        "--images",
        "4",
    ]));
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted:\n{err}");
    let message = err
        .lines()
        .find(|l| l.contains("not finite"))
        .unwrap_or_else(|| panic!("no message about non-finite logits:\n{err}"));
    for needle in ["test image 0", "clean logits", checkpoint.to_str().unwrap()] {
        assert!(message.contains(needle), "does not name {needle:?}:\n{err}");
    }
    assert!(!dir.join("attacks").exists());
}

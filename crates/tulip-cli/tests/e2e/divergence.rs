//! A diverged run never looks good: it stops with a non-zero exit and a message that
//! names what went non-finite and the flag to change, no non-finite epoch is saved as
//! the best, every checkpoint it leaves holds finite weights, and `eval` / `attack`
//! refuse whatever it left.

use std::path::Path;
use std::process::Output;

use crate::support::{csv, stderr, tulip};
use candle_core::{DType, Device};
use tulip_models::{Checkpoint, Classifier, Model};
use tulip_train::run_dir::files;
use tulip_train::RunDir;

fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        "resnet8",
        "--epochs",
        "2",
        "--limit-train",
        "512",
        "--limit-test",
        "200",
        "--no-eval-train",
        "--quiet",
        "--log-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tulip(&args).output().unwrap()
}

/// Every checkpoint in the run directory loads into the run's model with finite weights,
/// and the message's claim about the last checkpoint is true.
fn check_what_was_left(dir: &Path, message: &str) {
    let (_, config) = RunDir::open(dir).unwrap();
    for name in [files::CHECKPOINT, files::BEST] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
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
    let checkpoint = dir.join(files::CHECKPOINT);
    if message.contains("no checkpoint had been written") {
        assert!(!checkpoint.exists(), "{message}");
    } else {
        assert!(checkpoint.exists(), "{message}");
        assert!(
            message.contains(&checkpoint.display().to_string()),
            "{message}"
        );
    }
    // No epoch with a non-finite test loss was logged (let alone saved as the best).
    if dir.join(files::TEST_CSV).exists() {
        let test = csv(&dir.join(files::TEST_CSV));
        assert!(
            crate::support::column(&test, "test_loss")
                .iter()
                .all(|v| v.is_finite()),
            "{test:?}"
        );
    }
}

#[test]
fn diverged_runs_stop_with_the_cause_and_leave_only_finite_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    // (flags, the flag the advice must name)
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "1e4"], "--lr"),
        (&["--decay", "1e3"], "--decay"),
        (&["--lip", "1e8"], "--lip"),
    ];
    for (i, (flags, flag)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("run-{i}"));
        let out = train(&dir, flags);
        let err = stderr(&out);
        assert!(!out.status.success(), "{flags:?}: exit 0\n{err}");
        assert!(
            err.contains("diverged") && err.contains(flag),
            "{flags:?}: {err}"
        );
        assert!(!err.contains("done"), "{flags:?}: {err}");
        check_what_was_left(&dir, &err);

        // Whatever the run left, evaluating it is refused or reports finite numbers only.
        let out = tulip(&["eval", dir.to_str().unwrap(), "--limit", "100"])
            .output()
            .unwrap();
        if out.status.success() {
            let eval: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap())
                    .unwrap();
            for (k, v) in eval.as_object().unwrap() {
                if let Some(x) = v.as_f64() {
                    assert!(x.is_finite(), "{flags:?}: eval.json {k} = {x}");
                }
            }
        }
    }
}

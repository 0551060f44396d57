//! A run killed anywhere resumes to exactly the run it would have been: `kill -9`,
//! SIGTERM and SIGINT at twelve points spread over a three-epoch run (steps before and
//! after the first checkpoint, evaluations, checkpoint and best-model writes), each
//! resumed to the end and compared with an uninterrupted run — weights, optimizer state,
//! `test.csv` and `training.csv`, bit for bit.
//!
//! The kills are placed by the binary's failpoints (`TULIP_FAILPOINT=NAME:N:SIGNAL`, see
//! `tulip_models::failpoint`): the process sends itself the signal with `kill` at the
//! `N`-th pass of the point, so the kill lands at the same place on every machine.

use std::path::Path;
use std::process::Output;

use crate::support::{csv, stderr, tulip};
use candle_core::Device;
use tulip_models::Checkpoint;
use tulip_train::run_dir::files;

/// Three epochs of 6 steps (48 images, batches of 8), a checkpoint every 4 steps inside
/// an epoch (steps 4, 8 and 16; epoch ends at 6, 12 and 18), a log row every 5 steps (so
/// rows straddle checkpoints), two evaluation batches per epoch.
const RUN: &[&str] = &[
    "--model",
    "resnet8",
    "--epochs",
    "3",
    "--limit-train",
    "48",
    "--batch-size",
    "8",
    "--limit-test",
    "20",
    "--test-batch-size",
    "10",
    "--lr",
    "0.05",
    "--seed",
    "11",
    "--checkpoint-every",
    "4",
    "--log-interval",
    "5",
    "--no-eval-train",
    "--quiet",
];

/// Where the kills land, in the order the run passes them.
const POINTS: &[&str] = &[
    "step:2",                         // first epoch, before any checkpoint
    "write:checkpoint.safetensors:1", // the first checkpoint write (step 4)
    "step:5",                         // first epoch, after a mid-epoch checkpoint
    "evaluate:1",                     // the first evaluation
    "write:best.safetensors:1",       // the first best-model write
    "write:checkpoint.safetensors:2", // the end of the first epoch
    "step:9",                         // second epoch
    "evaluate:4",                     // the second evaluation's last batch
    "write:checkpoint.safetensors:4", // the end of the second epoch
    "step:14",                        // third epoch
    "evaluate:5",                     // the last evaluation
    "write:checkpoint.safetensors:6", // the last checkpoint write
];

fn train(dir: &Path, failpoint: Option<&str>) -> Output {
    let mut args = vec!["train", "--log-dir", dir.to_str().unwrap()];
    args.extend_from_slice(RUN);
    let mut cmd = tulip(&args);
    if let Some(f) = failpoint {
        cmd.env(tulip_models::failpoint::ENV, f);
    }
    cmd.output().unwrap()
}

fn resume(dir: &Path) -> Output {
    tulip(&["train", "--resume", dir.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap()
}

/// The tensors of a checkpoint file as bytes, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let ck = Checkpoint::read(path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    ck.tensors
        .iter()
        .map(|(name, t)| {
            let bytes: Vec<u8> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name.clone(), bytes)
        })
        .collect()
}

/// A CSV's rows without its wall-clock column, as bit patterns.
fn rows(path: &Path) -> Vec<Vec<u64>> {
    let (header, rows) = csv(path);
    let time = header.iter().position(|h| h == "time");
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != time)
                .map(|(_, v)| v.to_bits())
                .collect()
        })
        .collect()
}

/// What must be identical to the uninterrupted run.
#[derive(Debug, PartialEq)]
struct Outcome {
    checkpoint: Vec<(String, Vec<u8>)>,
    best: Vec<(String, Vec<u8>)>,
    test_csv: Vec<Vec<u64>>,
    training_csv: Vec<Vec<u64>>,
}

fn outcome(dir: &Path) -> Outcome {
    Outcome {
        checkpoint: tensors(&dir.join(files::CHECKPOINT)),
        best: tensors(&dir.join(files::BEST)),
        test_csv: rows(&dir.join(files::TEST_CSV)),
        training_csv: rows(&dir.join(files::TRAINING_CSV)),
    }
}

#[cfg(unix)]
fn killed_by(out: &Output, signal: i32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(signal)
}

/// Kills a run at every point with `signal`, resumes it, and compares; returns the
/// points where the resumed run differs or a step failed.
#[cfg(unix)]
fn kill_and_resume_everywhere(tmp: &Path, signal: &str, reference: &Outcome) -> Vec<String> {
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Two at a time: the machine has two cores and each run is mostly one.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(point) = POINTS.get(i) else { break };
                let dir = tmp.join(format!("{signal}-{i}"));
                let failpoint = format!("{point}:{signal}");
                let fail = |what: String| {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{failpoint}: {what}"))
                };
                let out = train(&dir, Some(&failpoint));
                let stopped = if signal == "KILL" {
                    killed_by(&out, 9)
                } else {
                    out.status.code() == Some(130) && stderr(&out).contains("--resume")
                };
                if !stopped {
                    fail(format!(
                        "not stopped there: {} {}",
                        out.status,
                        stderr(&out)
                    ));
                    continue;
                }
                let out = resume(&dir);
                if !out.status.success() {
                    fail(format!("resume failed: {}", stderr(&out)));
                    continue;
                }
                if outcome(&dir) != *reference {
                    fail("the resumed run differs from the uninterrupted one".into());
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[cfg(unix)]
#[test]
fn a_run_killed_anywhere_resumes_to_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let out = train(&straight, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = outcome(&straight);
    assert_eq!(reference.test_csv.len(), 3);
    assert_eq!(reference.training_csv.len(), 3, "rows at steps 5, 10, 15");

    let mut failures = Vec::new();
    for signal in ["KILL", "TERM", "INT"] {
        failures.extend(kill_and_resume_everywhere(tmp.path(), signal, &reference));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! `--device cuda` in a build without the `cuda` feature: every command that takes
//! `--device` refuses it up front, with a message naming the device and the feature to
//! build with — an error, never a panic and never a quiet fallback to the CPU.

use crate::support::{run_with_poisoned_checkpoint, stderr, tulip};

#[test]
fn cuda_without_a_cuda_build_is_a_clear_error_in_every_command() {
    if cfg!(feature = "cuda") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let never = tmp.path().join("never");
    // eval and attack open the device only once they have found a run and its checkpoint.
    let run_dir = tmp.path().join("run");
    run_with_poisoned_checkpoint(&run_dir, |_| false, 0.0);
    let (n, r) = (never.to_str().unwrap(), run_dir.to_str().unwrap());
    let nn_out = tmp.path().join("nn.csv");
    #[rustfmt::skip]
    let cases: [&[&str]; 4] = [
        &["train", "--device", "cuda", "--epochs", "1", "--limit-train", "128", "--log-dir", n],
        &["eval", r, "--device", "cuda"],
        &["attack", r, "--attack", "deepfool", "--norm", "l2", "--device", "cuda:1"],
        &["nn-attack", "--device", "gpu", "--out", nn_out.to_str().unwrap()],
    ];
    for args in cases {
        let out = tulip(args).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        for needle in ["--device cuda", "--features cuda"] {
            assert!(
                err.contains(needle),
                "{args:?}: does not name {needle:?}:\n{err}"
            );
        }
    }
    assert!(!never.exists(), "train created a run directory");
    assert!(!nn_out.exists(), "nn-attack wrote its distances");
}

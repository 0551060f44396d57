//! `gpu-check --device cpu`: the GPU acceptance script, run on the CPU through the ops'
//! portable implementations (the GPU's code path) against the CPU kernels, so that it
//! stays ready for a GPU. Small budgets; Fashion-MNIST as everywhere in the tests.

use std::process::Command;

use serde_json::Value;

#[test]
fn gpu_check_on_the_cpu_agrees_with_the_cpu_kernels_and_writes_its_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("gpu-check.json");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask-experiments"))
        .args(["gpu-check", "--device", "cpu", "--model", "resnet8"])
        .args(["--steps", "5", "--batch", "16"])
        .args(["--timing-model", "resnet8_fashion", "--timing-steps", "1"])
        .arg("--out")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gpu-check failed:\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["passed"], true);

    let training = &report["training"];
    assert_eq!(training["data"], "fashion-mnist");
    let on = training["objective_device"].as_array().unwrap();
    let cpu = training["objective_cpu"].as_array().unwrap();
    assert_eq!((on.len(), cpu.len()), (5, 5));
    // Two implementations of every op, the same numbers to rounding on the first step.
    let (a, b) = (on[0].as_f64().unwrap(), cpu[0].as_f64().unwrap());
    assert!(
        a > 0.5 && (a - b).abs() <= 1e-4 * a,
        "first step: {a} against {b}"
    );
    assert!(on
        .iter()
        .chain(cpu)
        .all(|v| v.as_f64().unwrap().is_finite()));

    let probes = report["gradient_check"]["probes"].as_array().unwrap();
    assert!(probes.len() >= 6, "{probes:?}");
    assert!(probes.iter().all(|p| p["agrees"] == true), "{probes:?}");
    // A check that compares zeros with zeros checks nothing.
    let nonzero = probes
        .iter()
        .filter(|p| p["central_difference"].as_f64().unwrap().abs() > 1e-8)
        .count();
    assert!(nonzero >= probes.len() / 2, "{probes:?}");

    let timing = report["timing"].as_array().unwrap();
    let cases: Vec<&str> = timing.iter().map(|t| t["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        [
            "resnet8_fashion:plain",
            "resnet8_fashion:lip",
            "resnet8_fashion:lipj2",
            "resnet8_fashion:pgd"
        ]
    );
    assert!(timing
        .iter()
        .all(|t| t["tulip_seconds"].as_f64().unwrap() > 0.0));
}

#[test]
fn gpu_check_on_a_missing_gpu_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("gpu-check.json");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask-experiments"))
        .args(["gpu-check", "--device", "cuda", "--out"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("--device cuda") && stderr.contains("--features cuda"),
        "{stderr}"
    );
    assert!(!json.exists());
}

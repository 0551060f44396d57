//! The binary's help text. (The end-to-end tests, which train, evaluate and attack, are in
//! `tests/e2e/`.)

use std::process::Command;

fn tulip(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tulip"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn help_explains_the_commands_and_flags() {
    let (ok, text) = tulip(&["--help"]);
    assert!(ok);
    assert!(text.contains("train"), "{text}");
    let (ok, text) = tulip(&["train", "--help"]);
    assert!(ok);
    for flag in [
        "--model",
        "--dataset",
        "--data",
        "--epochs",
        "--batch-size",
        "--test-batch-size",
        "--lr",
        "--lr-schedule",
        "--momentum",
        "--nesterov",
        "--dropout",
        "--cutout",
        "--no-bn",
        "--kernel-size",
        "--tanh",
        "--seed",
        "--log-dir",
        "--log-interval",
        "--device",
        "--limit-train",
        "--limit-test",
        "--resume",
        "--lip",
        "--decay",
        "--j1",
        "--j2",
        "--jinf",
        "--pgd-inf",
        "--penalty-method",
        "--quiet",
        "--json",
    ] {
        assert!(text.contains(flag), "train --help lacks {flag}");
    }
    // Choices are listed, not just named.
    for value in [
        "resnet22",
        "wrn-28-10",
        "fashion-mnist",
        "cifar100",
        "finite-difference",
    ] {
        assert!(text.contains(value), "train --help lacks {value}");
    }
}

#[test]
fn unknown_commands_fail() {
    let (ok, text) = tulip(&["frobnicate"]);
    assert!(!ok);
    assert!(text.contains("frobnicate"));
}

#[test]
fn an_unknown_instruction_set_is_refused_by_name() {
    // (`--help` would be answered before the value is checked.)
    let (ok, text) = tulip(&["--cpu-isa", "sse9", "eval", "no-such-run"]);
    assert!(!ok, "{text}");
    assert!(text.contains("sse9") && text.contains("avx2"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_tulip"))
        .args(["eval", "no-such-run"])
        .env("TULIP_CPU_ISA", "neon9")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("neon9"), "{text}");
}

#[test]
fn the_instruction_set_is_a_flag_of_every_command() {
    let (ok, text) = tulip(&["train", "--help"]);
    assert!(ok);
    assert!(
        text.contains("--cpu-isa") && text.contains("TULIP_CPU_ISA"),
        "{text}"
    );
    let (ok, _) = tulip(&["--cpu-isa", "scalar", "eval", "--help"]);
    assert!(ok);
}

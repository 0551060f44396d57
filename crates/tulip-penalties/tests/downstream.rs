//! The crates as a user's project gets them: `tests/downstream/` is a Cargo project outside
//! the workspace (its own `[workspace]`, no `[patch]`: stock candle-core from crates.io)
//! that depends on the library crates by path. This builds it and runs its two programs:
//! the exact penalty's gradient against central differences, and the penalties example
//! (a candle-nn CNN trained with the Lipschitz penalty and J2, which fails unless its
//! Lipschitz estimate ends below the plain loop's).

use std::path::Path;
use std::process::Command;

fn run_downstream(bin: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path"])
        .arg(root.join("tests/downstream/Cargo.toml"))
        .args(["--bin", bin, "--"])
        .args(args)
        // Its own target directory: its dependency graph (stock candle-core) differs from
        // the workspace's, and this test runs while the workspace's build directory is held.
        .env("CARGO_TARGET_DIR", root.join("target/downstream"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "downstream {bin}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn downstream_project_trains_with_stock_candle() {
    let check = run_downstream("penalty_gradient_check", &[]);
    assert!(check.contains("agree with central differences"), "{check}");
    let trained = run_downstream("own_training_loop", &["200"]);
    assert!(trained.contains("Lipschitz estimate"), "{trained}");
}

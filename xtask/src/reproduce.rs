//! `cargo xtask reproduce-paper`: the experiments of arXiv:1810.00953 as a grid of
//! `tulip` runs, then one results table and the robustness curves.
//!
//! The grid is data, not code: `experiments/paper/<profile>/profile.toml` holds the flags
//! shared by every run and the evaluation settings, and every other `*.toml` file there is
//! one run (a description and its own `tulip train` flags). Each step is skipped when it
//! has finished before, so the command is idempotent and picks up where a crash, a full
//! disk or a Ctrl-C left it: an unfinished training run is resumed with
//! `tulip train --resume`.
//!
//! "Finished" is a marker, never the presence of a step's output (a crash can leave a
//! partial file): an empty file `done/<step>` in the run directory (`train`, `eval`,
//! `attack-<attack>-<norm>`), or in the profile's output directory for `nn-attack`,
//! written atomically only after the step's command exited with status 0. A step without
//! its marker runs again; training again removes the run's other markers, whose results
//! came from an older checkpoint. Every file written here is written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tulip_eval::plot::{robustness_curves, write_svg, Series};
use tulip_eval::{
    fraction_misclassified, misclassification_curve, read_attack_csv, AttackRecord, AttackStatus,
    DistanceNorm, DistanceStats,
};
use tulip_models::checkpoint::write_atomic;

/// Options of `cargo xtask reproduce-paper`.
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    /// `quick` (Fashion-MNIST, a small model, about an hour on a 2-core CPU) or `full`
    /// (the paper's protocol: CIFAR-10, 200 epochs; needs `--cuda` and a GPU).
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Where the experiment files live (one directory per profile).
    #[arg(long, default_value = "experiments/paper")]
    pub experiments: PathBuf,
    /// Where the runs and the results go (`<out>/<profile>/…`).
    #[arg(long, default_value = "runs/paper")]
    pub out: PathBuf,
    /// Only these runs (comma-separated file stems, e.g. `baseline,best`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Build `tulip` with CUDA (`--features cuda`).
    #[arg(long)]
    pub cuda: bool,
    /// Dataset directory passed to every `tulip` command (`--data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `profile.toml`: what every run of a profile shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    description: String,
    train: Vec<String>,
    #[serde(default)]
    eval: Vec<String>,
    attacks: Vec<String>,
    #[serde(default)]
    attack: Vec<String>,
    #[serde(default)]
    nn_attack: Vec<String>,
    epsilon_l2: f64,
    epsilon_linf: f64,
}

/// One run file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    description: String,
    train: Vec<String>,
}

/// Runs `cargo xtask reproduce-paper`.
pub fn run(args: &ReproduceArgs) -> Result<()> {
    let dir = args.experiments.join(&args.profile);
    let profile: Profile = read_toml(&dir.join("profile.toml")).with_context(|| {
        format!(
            "--profile {}: no readable {}/profile.toml (profiles: {})",
            args.profile,
            dir.display(),
            list_profiles(&args.experiments)
        )
    })?;
    let runs = read_runs(&dir, &args.only)?;
    let out = args.out.join(&args.profile);
    std::fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
    let tulip = build_tulip(args.cuda)?;
    eprintln!(
        "reproduce-paper: {} — {} runs into {}",
        profile.description,
        runs.len(),
        out.display()
    );
    let data_flags: Vec<String> = args
        .data
        .iter()
        .flat_map(|d| ["--data".to_string(), d.display().to_string()])
        .collect();

    for (name, run) in &runs {
        let run_dir = out.join(name);
        eprintln!("reproduce-paper: [{name}] {}", run.description);
        let flags_file = out.join(format!("{name}.flags"));
        check_flags(&profile, run, &run_dir, &flags_file)?;
        if !is_done(&run_dir, &Step::Train) {
            train(&tulip, &profile, run, &run_dir, &flags_file, &data_flags)?;
            mark_done(&run_dir, &Step::Train)?;
        }
        if !is_done(&run_dir, &Step::Eval) {
            let mut cmd = Command::new(&tulip);
            cmd.arg("eval")
                .arg(&run_dir)
                .args(&profile.eval)
                .args(&data_flags);
            status(&mut cmd, &format!("tulip eval {}", run_dir.display()))?;
            mark_done(&run_dir, &Step::Eval)?;
        }
        for spec in &profile.attacks {
            let AttackSpec {
                attack,
                norm,
                epsilon,
            } = AttackSpec::parse(spec)?;
            let step = Step::Attack(attack, norm);
            if is_done(&run_dir, &step) {
                continue;
            }
            let mut cmd = Command::new(&tulip);
            cmd.arg("attack")
                .arg(&run_dir)
                .args(["--attack", attack, "--norm", norm])
                .args(epsilon.iter().flat_map(|e| ["--epsilon", e]))
                .args(&profile.attack)
                .args(&data_flags);
            status(
                &mut cmd,
                &format!(
                    "tulip attack {} --attack {attack} --norm {norm}",
                    run_dir.display()
                ),
            )?;
            mark_done(&run_dir, &step)?;
        }
    }

    if !is_done(&out, &Step::NnAttack) {
        let nn_json = out.join("nn-attack.json");
        let mut cmd = Command::new(&tulip);
        cmd.arg("nn-attack")
            .args(&profile.nn_attack)
            .args(&data_flags)
            .arg("--out")
            .arg(out.join("nn-attack.csv"))
            .arg("--json");
        let output = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("could not start tulip nn-attack")?;
        if !output.status.success() {
            bail!("tulip nn-attack failed ({})", output.status);
        }
        write_atomic(&nn_json, &output.stdout)
            .with_context(|| format!("could not write {}", nn_json.display()))?;
        mark_done(&out, &Step::NnAttack)?;
    }

    let table = results_table(&profile, &runs, &out)?;
    write_results(&table, &profile, &out)?;
    Ok(())
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{}: not a valid experiment file", path.display()))
}

fn list_profiles(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("profile.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        format!("none found under {}", dir.display())
    } else {
        names.join(", ")
    }
}

/// The run files of a profile, by name, in name order.
fn read_runs(dir: &Path, only: &[String]) -> Result<BTreeMap<String, RunFile>> {
    let mut runs = BTreeMap::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?
    {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "toml") && stem != "profile" {
            runs.insert(stem.to_string(), read_toml::<RunFile>(&path)?);
        }
    }
    for name in only {
        if !runs.contains_key(name) {
            bail!(
                "--only {name}: no run file {}/{name}.toml (runs: {})",
                dir.display(),
                runs.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    if !only.is_empty() {
        runs.retain(|k, _| only.contains(k));
    }
    Ok(runs)
}

/// Builds the `tulip` binary in release mode and returns its path.
fn build_tulip(cuda: bool) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "-p", "tulip-cli", "--bin", "tulip"]);
    if cuda {
        cmd.args(["--features", "cuda"]);
    }
    status(&mut cmd, "cargo build --release -p tulip-cli")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    Ok(target.join("release").join("tulip"))
}

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("could not start {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st}); fix the cause and rerun: finished steps are kept");
    }
    Ok(())
}

/// An entry of a profile's `attacks`: `ATTACK:NORM`, or `ATTACK:NORM:EPSILON` for an
/// attack at a fixed radius (PGD: robust accuracy at ε).
struct AttackSpec<'a> {
    attack: &'a str,
    norm: &'a str,
    epsilon: Option<&'a str>,
}

impl<'a> AttackSpec<'a> {
    fn parse(spec: &'a str) -> Result<Self> {
        let mut parts = spec.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(attack), Some(norm), epsilon, None) => Ok(Self {
                attack,
                norm,
                epsilon,
            }),
            _ => bail!(
                "profile.toml: attack {spec:?} is not ATTACK:NORM or ATTACK:NORM:EPSILON (e.g. deepfool:l2, pgd:linf:0.1)"
            ),
        }
    }
}

/// A step of a run (or, for `NnAttack`, of a profile), named by its marker file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Train,
    Eval,
    /// `ATTACK`, `NORM`.
    Attack(&'a str, &'a str),
    NnAttack,
}

impl Step<'_> {
    /// File name of the step's marker under `done/`.
    fn marker(&self) -> String {
        match self {
            Step::Train => "train".into(),
            Step::Eval => "eval".into(),
            Step::Attack(attack, norm) => format!("attack-{attack}-{norm}"),
            Step::NnAttack => "nn-attack".into(),
        }
    }
}

/// The folder of `dir` holding the markers of its finished steps.
fn done_dir(dir: &Path) -> PathBuf {
    dir.join("done")
}

/// Whether `step` of `dir` has finished: its marker exists. The step's outputs may exist
/// without it (written by a command that then failed, or cut short), and do not count.
fn is_done(dir: &Path, step: &Step<'_>) -> bool {
    done_dir(dir).join(step.marker()).is_file()
}

/// Records that `step` of `dir` has finished (call only after its command exited 0).
fn mark_done(dir: &Path, step: &Step<'_>) -> Result<()> {
    let done = done_dir(dir);
    std::fs::create_dir_all(&done)
        .with_context(|| format!("could not create {}", done.display()))?;
    let marker = done.join(step.marker());
    write_atomic(&marker, b"").with_context(|| format!("could not write {}", marker.display()))
}

/// Forgets every finished step of `dir`.
fn clear_done(dir: &Path) -> Result<()> {
    let done = done_dir(dir);
    match std::fs::remove_dir_all(&done) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("could not remove {}", done.display()))
        }
        _ => Ok(()),
    }
}

/// The `tulip train` flags of a run, as recorded in its flags file.
fn wanted_flags(profile: &Profile, run: &RunFile) -> String {
    let flags: Vec<&str> = profile
        .train
        .iter()
        .chain(&run.train)
        .map(String::as_str)
        .collect();
    flags.join(" ") + "\n"
}

/// The flags a run was started with are kept beside its directory (`<name>.flags`); if
/// the experiment file has changed since, the run is not silently mixed with the new
/// settings.
fn check_flags(profile: &Profile, run: &RunFile, run_dir: &Path, flags_file: &Path) -> Result<()> {
    if !run_dir.join("config.toml").exists() {
        return Ok(());
    }
    let wanted = wanted_flags(profile, run);
    let had = std::fs::read_to_string(flags_file).unwrap_or_default();
    if had != wanted {
        bail!(
            "{} was trained with other flags ({}) than its experiment file now gives ({}); \
             delete the directory to rerun it",
            run_dir.display(),
            had.trim(),
            wanted.trim()
        );
    }
    Ok(())
}

/// Trains one run, or resumes it if it has been started (its `config.toml` exists; its
/// flags have been checked). The run's other markers are removed first: their results
/// came from an older checkpoint.
fn train(
    tulip: &Path,
    profile: &Profile,
    run: &RunFile,
    run_dir: &Path,
    flags_file: &Path,
    data: &[String],
) -> Result<()> {
    clear_done(run_dir)?;
    if run_dir.join("config.toml").exists() {
        let mut cmd = Command::new(tulip);
        cmd.arg("train").arg("--resume").arg(run_dir);
        return status(
            &mut cmd,
            &format!("tulip train --resume {}", run_dir.display()),
        );
    }
    let mut cmd = Command::new(tulip);
    cmd.arg("train")
        .args(profile.train.iter().chain(&run.train))
        .args(data)
        .arg("--log-dir")
        .arg(run_dir);
    // Record the flags before the run starts, so a crash mid-run resumes the same run.
    write_atomic(flags_file, wanted_flags(profile, run).as_bytes())
        .with_context(|| format!("could not write {}", flags_file.display()))?;
    status(
        &mut cmd,
        &format!("tulip train … --log-dir {}", run_dir.display()),
    )
}

/// One row of the results table.
struct Row {
    name: String,
    description: String,
    test_error: Option<f64>,
    lipschitz: Option<f64>,
    lower_bound: Option<f64>,
    /// Per norm: median distance over all images, median over the images the model
    /// classifies correctly, fraction misclassified at the profile's ε, failures.
    l2: Column,
    linf: Column,
    /// The per-image "best attack" records behind the curves.
    best_l2: Vec<AttackRecord>,
    best_linf: Vec<AttackRecord>,
}

/// One norm's columns of a row.
struct Column {
    median: Option<f64>,
    median_correct: Option<f64>,
    at_epsilon: f64,
    failures: usize,
}

/// Per image, the smallest distance any attack of `norm` found (0 if the image is already
/// misclassified; a failure only if every attack failed on it).
fn best_of(attacks: &[Vec<AttackRecord>], norm: DistanceNorm) -> Vec<AttackRecord> {
    let mut best: BTreeMap<usize, AttackRecord> = BTreeMap::new();
    for records in attacks {
        for r in records {
            let better = match (best.get(&r.index), r.distance(norm)) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(old), Some(d)) => old.distance(norm).is_none_or(|o| d < o),
            };
            if better {
                best.insert(r.index, *r);
            }
        }
    }
    best.into_values().collect()
}

fn results_table(
    profile: &Profile,
    runs: &BTreeMap<String, RunFile>,
    out: &Path,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, run) in runs {
        let run_dir = out.join(name);
        let eval: Value = std::fs::read_to_string(run_dir.join("eval.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let num = |k: &str| eval.get(k).and_then(Value::as_f64);
        let mut by_norm: BTreeMap<&str, Vec<Vec<AttackRecord>>> = BTreeMap::new();
        for spec in &profile.attacks {
            let Ok(AttackSpec { attack, norm, .. }) = AttackSpec::parse(spec) else {
                continue;
            };
            let csv = run_dir.join("attacks").join(format!("{attack}-{norm}.csv"));
            if let Ok(records) = read_attack_csv(&csv) {
                by_norm
                    .entry(if norm == "l2" { "l2" } else { "linf" })
                    .or_default()
                    .push(records);
            }
        }
        let best_l2 = best_of(
            by_norm.get("l2").map_or(&[][..], Vec::as_slice),
            DistanceNorm::L2,
        );
        let best_linf = best_of(
            by_norm.get("linf").map_or(&[][..], Vec::as_slice),
            DistanceNorm::Linf,
        );
        let column = |records: &[AttackRecord], norm, eps| {
            // Over the images the model gets right, the median is informative even when
            // most images are misclassified (and the overall median is 0).
            let correct: Vec<AttackRecord> = records
                .iter()
                .filter(|r| r.status != AttackStatus::AlreadyMisclassified)
                .copied()
                .collect();
            Column {
                median: DistanceStats::of(records, norm).median,
                median_correct: DistanceStats::of(&correct, norm).median,
                at_epsilon: fraction_misclassified(records, norm, eps),
                failures: records
                    .iter()
                    .filter(|r| r.distance(norm).is_none())
                    .count(),
            }
        };
        rows.push(Row {
            name: name.clone(),
            description: run.description.clone(),
            test_error: num("test_error_percent"),
            lipschitz: num("lipschitz_estimate"),
            lower_bound: num("distance_lower_bound"),
            l2: column(&best_l2, DistanceNorm::L2, profile.epsilon_l2),
            linf: column(&best_linf, DistanceNorm::Linf, profile.epsilon_linf),
            best_l2,
            best_linf,
        });
    }
    Ok(rows)
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() && x != 0.0 && x.abs() < 1e-3 => format!("{x:.2e}"),
        Some(x) if x.is_finite() => format!("{x:.4}"),
        _ => "—".into(),
    }
}

fn write_results(rows: &[Row], profile: &Profile, out: &Path) -> Result<()> {
    let nn: Value = std::fs::read_to_string(out.join("nn-attack.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let (e2, einf) = (profile.epsilon_l2, profile.epsilon_linf);
    let mut md = format!(
        "# Reproduction of arXiv:1810.00953 — {}\n\n\
         Written by `cargo xtask reproduce-paper`. Distances are per image the smallest any \
         attack of that norm found (attacks: {}); the median counts already-misclassified \
         images as 0 and leaves failures out (counted in their own column). The Lipschitz \
         estimate is max over test images of the per-example, unscaled ‖∇ₓℓ‖₂; the lower \
         bound is the reference's margin / (2 · weight-product norm).\n\n\
         | run | setting | test error % | Lipschitz estimate | median L2 | median L2, correct images | % misclassified at L2 ε={e2} | L2 failures | median L∞ | median L∞, correct images | % misclassified at L∞ ε={einf:.4} | L∞ failures | certified lower bound |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        profile.description,
        profile.attacks.join(", "),
    );
    let mut csv = String::from(
        "run,setting,test_error_percent,lipschitz_estimate,median_l2,median_l2_correct,misclassified_at_l2,l2_failures,median_linf,median_linf_correct,misclassified_at_linf,linf_failures,distance_lower_bound\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} | {} |\n",
            r.name,
            r.description,
            r.test_error.map_or("—".into(), |e| format!("{e:.2}")),
            fmt(r.lipschitz),
            fmt(r.l2.median),
            fmt(r.l2.median_correct),
            100.0 * r.l2.at_epsilon,
            r.l2.failures,
            fmt(r.linf.median),
            fmt(r.linf.median_correct),
            100.0 * r.linf.at_epsilon,
            r.linf.failures,
            fmt(r.lower_bound),
        );
        let nan = f64::NAN;
        csv += &format!(
            "{},\"{}\",{},{},{},{},{},{},{},{},{},{},{}\n",
            r.name,
            r.description.replace('"', "'"),
            r.test_error.unwrap_or(nan),
            r.lipschitz.unwrap_or(nan),
            r.l2.median.unwrap_or(nan),
            r.l2.median_correct.unwrap_or(nan),
            r.l2.at_epsilon,
            r.l2.failures,
            r.linf.median.unwrap_or(nan),
            r.linf.median_correct.unwrap_or(nan),
            r.linf.at_epsilon,
            r.linf.failures,
            r.lower_bound.unwrap_or(nan),
        );
    }
    if let (Some(mean), Some(median)) = (
        nn.get("mean").and_then(Value::as_f64),
        nn.get("median").and_then(Value::as_f64),
    ) {
        md += &format!(
            "\nThe data itself (nearest test→train image of another label, L2): mean {mean:.4}, \
             median {median:.4}, Lipschitz constant of the labelling {}.\n",
            fmt(nn.get("data_lipschitz").and_then(Value::as_f64))
        );
    }
    md += "\nRobustness curves: `robustness-l2.svg`, `robustness-linf.svg`.\n";

    for (norm, file) in [
        (DistanceNorm::L2, "robustness-l2.svg"),
        (DistanceNorm::Linf, "robustness-linf.svg"),
    ] {
        let series: Vec<Series> = rows
            .iter()
            .map(|r| {
                let records = if norm == DistanceNorm::L2 {
                    &r.best_l2
                } else {
                    &r.best_linf
                };
                Series::new(&r.name, misclassification_curve(records, norm))
            })
            .collect();
        write_svg(&out.join(file), &robustness_curves(norm, &series))?;
    }
    for (file, text) in [("results.md", &md), ("results.csv", &csv)] {
        let path = out.join(file);
        write_atomic(&path, text.as_bytes())
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    println!("{md}");
    eprintln!(
        "reproduce-paper: wrote {}/results.md, results.csv and the robustness curves",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new empty directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-reproduce-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_step_is_done_by_its_marker_never_by_its_outputs() {
        let out = Scratch::new("markers");
        let run_dir = out.0.join("baseline");
        // What a crash (or a full disk) leaves: every output present, some of them empty,
        // and the training logs of a run that may not have finished.
        std::fs::create_dir_all(run_dir.join("attacks")).unwrap();
        for file in [
            "config.toml",
            "test.csv",
            "eval.json",
            "attacks/deepfool-l2.json",
        ] {
            std::fs::write(run_dir.join(file), "").unwrap();
        }
        std::fs::write(out.0.join("nn-attack.json"), "").unwrap();
        let deepfool = Step::Attack("deepfool", "l2");
        for step in [Step::Train, Step::Eval, deepfool] {
            assert!(!is_done(&run_dir, &step), "{step:?}");
        }
        assert!(!is_done(&out.0, &Step::NnAttack));

        mark_done(&run_dir, &Step::Eval).unwrap();
        mark_done(&run_dir, &deepfool).unwrap();
        mark_done(&out.0, &Step::NnAttack).unwrap();
        assert!(is_done(&run_dir, &Step::Eval) && is_done(&run_dir, &deepfool));
        assert!(is_done(&out.0, &Step::NnAttack));
        // Each marker is its own empty file; no temporary file is left beside it.
        assert!(!is_done(&run_dir, &Step::Train));
        assert!(!is_done(&run_dir, &Step::Attack("deepfool", "linf")));
        assert!(!is_done(&run_dir, &Step::NnAttack));
        let mut markers: Vec<String> = std::fs::read_dir(run_dir.join("done"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        markers.sort();
        assert_eq!(markers, ["attack-deepfool-l2", "eval"]);
        assert_eq!(std::fs::read(run_dir.join("done/eval")).unwrap(), b"");
        // Marking twice is harmless.
        mark_done(&run_dir, &Step::Eval).unwrap();
        assert!(is_done(&run_dir, &Step::Eval));
    }

    #[test]
    fn training_again_forgets_every_finished_step_of_the_run() {
        let out = Scratch::new("clear");
        let run_dir = out.0.join("baseline");
        clear_done(&run_dir).unwrap(); // nothing to forget yet
        let steps = [Step::Train, Step::Eval, Step::Attack("fgsm", "linf")];
        for step in &steps {
            mark_done(&run_dir, step).unwrap();
        }
        mark_done(&out.0, &Step::NnAttack).unwrap();
        clear_done(&run_dir).unwrap();
        for step in &steps {
            assert!(!is_done(&run_dir, step), "{step:?}");
        }
        // The profile's own step is not the run's.
        assert!(is_done(&out.0, &Step::NnAttack));
    }

    #[test]
    fn best_of_takes_each_images_smallest_distance_and_fails_only_when_all_failed() {
        let l2 = DistanceNorm::L2;
        let deepfool = vec![
            AttackRecord::found(0, 3, 1, 0.5, 0.1),
            AttackRecord::failed(1, 3, 3),
            AttackRecord::failed(2, 3, 3),
            AttackRecord::found(3, 3, 2, 0.2, 0.05),
        ];
        let fgsm = vec![
            AttackRecord::found(0, 3, 1, 0.7, 0.02),
            AttackRecord::found(1, 3, 5, 0.9, 0.03),
            AttackRecord::failed(2, 3, 3),
            AttackRecord::already_misclassified(3, 3, 2),
        ];
        let best = best_of(&[deepfool, fgsm], l2);
        let d: Vec<Option<f64>> = best.iter().map(|r| r.distance(l2)).collect();
        assert_eq!(d, vec![Some(0.5), Some(0.9), None, Some(0.0)]);
        assert_eq!(
            best.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // In L∞ image 0's best is FGSM's, not DeepFool's.
        let best_linf = best_of(
            &[
                vec![AttackRecord::found(0, 3, 1, 0.5, 0.1)],
                vec![AttackRecord::found(0, 3, 1, 0.7, 0.02)],
            ],
            DistanceNorm::Linf,
        );
        assert_eq!(best_linf[0].distance(DistanceNorm::Linf), Some(0.02));
    }

    #[test]
    fn the_committed_profiles_and_runs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/paper");
        for profile in ["quick", "standard", "full"] {
            let dir = root.join(profile);
            let p: Profile = read_toml(&dir.join("profile.toml")).unwrap();
            for spec in &p.attacks {
                let AttackSpec {
                    attack,
                    norm,
                    epsilon,
                } = AttackSpec::parse(spec).unwrap();
                let kind: tulip_adversarial::AttackKind = attack.parse().unwrap();
                let norm: tulip_adversarial::AttackNorm = norm.parse().unwrap();
                assert!(kind.valid_norms().contains(&norm), "{profile}: {spec}");
                assert_eq!(
                    epsilon.is_some(),
                    kind == tulip_adversarial::AttackKind::Pgd,
                    "{profile}: {spec}: PGD, and only PGD, attacks at a fixed ε"
                );
            }
            let runs = read_runs(&dir, &[]).unwrap();
            let names: Vec<&str> = runs.keys().map(String::as_str).collect();
            let grid = ["baseline", "best", "decay", "j1", "j2", "jinf", "lip", "pgd"];
            if profile == "standard" {
                // A second seed of the baseline and of the best setting.
                let mut want = grid.to_vec();
                want.extend(["baseline-seed1", "best-seed1"]);
                want.sort_unstable();
                assert_eq!(names, want, "{profile}");
            } else {
                assert_eq!(names, grid, "{profile}");
            }
        }
    }
}

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
//!
//! Then the results ([`results`]): results.md holds one row per setting, a run and its
//! seeds (`X-seedN` is a seed of `X`) as mean ± half their range; results.csv every run.
//! Fixed-radius attacks (PGD) get robust-accuracy columns of their own; the
//! minimum-distance columns fold the other attacks per image. Every certified bound is
//! checked against every attack distance of its image, and a bound above one fails the
//! command. Below the table, each of the paper's claims gets a verdict computed from it
//! ([`verdicts`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tulip_models::checkpoint::write_atomic;

mod results;
mod verdicts;

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

    let grid = results::Grid::collect(&profile, &runs, &out)?;
    results::write(&grid, &args.profile, &out)?;
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
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_done_by_its_marker_never_by_its_outputs() {
        let out = tempfile::tempdir().unwrap();
        let run_dir = out.path().join("baseline");
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
        std::fs::write(out.path().join("nn-attack.json"), "").unwrap();
        let deepfool = Step::Attack("deepfool", "l2");
        for step in [Step::Train, Step::Eval, deepfool] {
            assert!(!is_done(&run_dir, &step), "{step:?}");
        }
        assert!(!is_done(out.path(), &Step::NnAttack));

        mark_done(&run_dir, &Step::Eval).unwrap();
        mark_done(&run_dir, &deepfool).unwrap();
        mark_done(out.path(), &Step::NnAttack).unwrap();
        assert!(is_done(&run_dir, &Step::Eval) && is_done(&run_dir, &deepfool));
        assert!(is_done(out.path(), &Step::NnAttack));
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
        let out = tempfile::tempdir().unwrap();
        let run_dir = out.path().join("baseline");
        clear_done(&run_dir).unwrap(); // nothing to forget yet
        let steps = [Step::Train, Step::Eval, Step::Attack("fgsm", "linf")];
        for step in &steps {
            mark_done(&run_dir, step).unwrap();
        }
        mark_done(out.path(), &Step::NnAttack).unwrap();
        clear_done(&run_dir).unwrap();
        for step in &steps {
            assert!(!is_done(&run_dir, step), "{step:?}");
        }
        // The profile's own step is not the run's.
        assert!(is_done(out.path(), &Step::NnAttack));
    }

    #[test]
    fn the_committed_profiles_and_runs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/paper");
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
                let norm: tulip_adversarial::Norm = norm.parse().unwrap();
                assert!(kind.valid_norms().contains(&norm), "{profile}: {spec}");
                assert_eq!(
                    epsilon.is_some(),
                    kind == tulip_adversarial::AttackKind::Pgd,
                    "{profile}: {spec}: PGD, and only PGD, attacks at a fixed ε"
                );
            }
            // Every attack parses for the table, and a fixed-radius one gets its own
            // robust-accuracy column.
            let attacks: Vec<results::Attack> = p
                .attacks
                .iter()
                .map(|s| results::Attack::parse(s).unwrap())
                .collect();
            let keys: Vec<String> = results::columns(&p, &attacks)
                .into_iter()
                .map(|c| c.key)
                .collect();
            let robust: Vec<&String> = keys.iter().filter(|k| k.contains("robust")).collect();
            assert_eq!(
                robust.len(),
                attacks.iter().filter(|a| a.epsilon.is_some()).count(),
                "{profile}: {keys:?}"
            );
            if profile == "standard" {
                assert_eq!(
                    robust,
                    [
                        "pgd_l2_0.5_robust_accuracy_percent",
                        "pgd_linf_0.1_robust_accuracy_percent"
                    ]
                );
            }
            let runs = read_runs(&dir, &[]).unwrap();
            let names: Vec<&str> = runs.keys().map(String::as_str).collect();
            let grid = [
                "baseline", "best", "decay", "j1", "j2", "jinf", "lip", "pgd",
            ];
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

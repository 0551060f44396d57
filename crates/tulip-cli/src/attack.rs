//! `tulip attack`: minimum-distance adversarial attacks on a trained run's test images
//! (docs/method.md §5), with a per-image CSV, a summary, and the robustness curve.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use tulip_adversarial::{AdversarialError, AttackConfig, AttackKind, Norm};
use tulip_eval::plot::Subject;
use tulip_eval::{attack_split, read_certified_csv, write_attack_files, AttackSummary, EvalError};
use tulip_train::{DeviceChoice, RunSource};

use crate::eval::CERTIFIED_CSV;

/// Flags of `tulip attack`.
#[derive(Args, Debug)]
#[command(after_help = "Attacks and their norms:
  deepfool   l2, linf   DeepFool (linearise every class, step to the nearest boundary)
  iterative  l2, linf   basic iterative method (L∞: I-FGSM), smallest ε by search
  fgsm       linf       fast gradient sign method, smallest ε by search
  gradient   l2         single normalised-gradient step, smallest ε by search
  boundary   l2         decision-based Boundary attack (needs no gradients)
  pgd        l2, linf   projected gradient descent at a fixed --epsilon (robust accuracy)

Examples:
  tulip attack RUN_DIR --attack deepfool --norm l2 --images 1000
  tulip attack RUN_DIR --attack pgd --norm linf --epsilon 0.1 --steps 40
  tulip attack RUN_DIR --attack boundary --norm l2 --images 100 --steps 2000

Writes RUN_DIR/attacks/ATTACK-NORM.csv (per image: index,label,predicted,l2,linf,success),
ATTACK-NORM.json (the summary) and ATTACK-NORM.svg (fraction misclassified vs ε). When
`tulip eval` has written RUN_DIR/certified.csv, also ATTACK-NORM-certified.svg (certified
lower bound against attack distance) and a count of images whose attack distance is
below their bound.

An image the model already misclassifies has distance 0; an image the attack fails on is
a failure, counted apart and left out of the median and mean (never counted as 0).")]
pub struct AttackArgs {
    /// Run directory written by `tulip train`.
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    /// The attack.
    #[arg(long, value_parser = parse_kind)]
    attack: AttackKind,
    /// The norm it minimises (for pgd: the norm of the ε-ball).
    #[arg(long, value_parser = parse_norm)]
    norm: Norm,
    /// Attack the first N test images.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    images: usize,
    /// Images attacked together.
    #[arg(long, value_name = "N", default_value_t = 100)]
    batch_size: usize,
    /// Iterations [default per attack: deepfool 50, iterative 10, pgd 20, boundary 5000].
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// pgd: the fixed radius (required; fractions like 8/255 are accepted). iterative,
    /// fgsm, gradient: the first ε of the search.
    #[arg(long, value_parser = parse_number)]
    epsilon: Option<f64>,
    /// Bisection steps of the ε search (iterative, fgsm, gradient).
    #[arg(long, value_name = "N")]
    search_steps: Option<usize>,
    /// Seed of the random streams (Boundary noise, PGD random start).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// L2 budgets at which to report the fraction misclassified.
    #[arg(long, value_delimiter = ',', value_parser = parse_number, default_value = "0.1,0.25,0.5,1,2")]
    eps_l2: Vec<f64>,
    /// L∞ budgets at which to report the fraction misclassified.
    #[arg(long, value_delimiter = ',', value_parser = parse_number, default_value = "1/255,2/255,4/255,8/255,0.1,0.2,0.3")]
    eps_linf: Vec<f64>,
    /// Checkpoint to attack [default: RUN_DIR/best.safetensors, else
    /// RUN_DIR/checkpoint.safetensors].
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Directory holding the dataset [default: the run's, then the usual places].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where to write the results [default: RUN_DIR/attacks].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_kind(s: &str) -> Result<AttackKind, String> {
    s.parse::<AttackKind>().map_err(|e| e.to_string())
}

fn parse_norm(s: &str) -> Result<Norm, String> {
    s.parse::<Norm>()
}

/// A non-negative number, or a fraction `a/b` (budgets are often written `8/255`).
fn parse_number(s: &str) -> Result<f64, String> {
    match tulip_adversarial::parse_fraction(s) {
        Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Some(_) => Err(format!("{s:?} must be a finite number ≥ 0")),
        None => Err(format!("{s:?} is not a number (e.g. 0.5 or 8/255)")),
    }
}

pub fn run(args: AttackArgs) -> anyhow::Result<ExitCode> {
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut cfg = AttackConfig::new(args.attack, args.norm).with_seed(args.seed);
    if let Some(steps) = args.steps {
        cfg = cfg.with_steps(steps);
    }
    if let Some(eps) = args.epsilon {
        cfg = cfg.with_epsilon(eps);
    }
    if let Some(n) = args.search_steps {
        cfg = cfg.with_search_steps(n);
    }
    // Before any file is read: an attack/norm pair that does not exist is a usage error.
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("--attack/--norm: {e}"))?;

    let loaded = crate::run_loading::load(RunSource {
        dir: &args.run_dir,
        checkpoint: args.checkpoint.as_deref(),
        data: args.data.as_deref(),
        device: args.device,
        test_limit: Some(args.images),
    })?;
    let test = &loaded.test;
    let name = format!("{}-{}", args.attack.name(), args.norm.name());
    eprintln!(
        "attack {name}: {} ({}) on {} {} test images",
        loaded.checkpoint.display(),
        loaded.config.model.architecture,
        test.len(),
        loaded.config.dataset
    );

    let bar = crate::progress::bar(test.len() as u64, name.clone(), "images");
    let mut attacked = 0;
    let mut failed = 0;
    let outcomes = attack_split(
        &loaded.model,
        test,
        &cfg,
        args.batch_size,
        &loaded.device,
        |batch| {
            attacked += batch.len();
            failed += batch.iter().filter(|o| !o.is_misclassified()).count();
            bar.set_message(format!("({failed} failed)"));
            bar.set_position(attacked as u64);
        },
    )
    .map_err(|e| match e {
        // The library names the image; the user also needs to know which weights overflow.
        EvalError::Attack(e) => match *e {
            AdversarialError::NonFiniteCleanLogits { image } => anyhow::anyhow!(
                "test image {image}: the model's clean logits are not finite (inf or NaN), so \
                 its prediction and any attack distance would be meaningless; {} overflows on \
                 this input (its weights are finite but too large)",
                loaded.checkpoint.display()
            ),
            e => e.into(),
        },
        e => e.into(),
    })?;
    bar.finish_and_clear();

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| loaded.run.path().join("attacks"));
    let summary = AttackSummary::new(&name, &outcomes, &args.eps_l2, &args.eps_linf);
    let subject = Subject {
        run: loaded.run.path().file_name().map_or_else(
            || loaded.run.path().display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        model: loaded.config.model.architecture.to_string(),
        images: outcomes.len(),
    };
    // The certified lower bounds of `tulip eval`, if it has been run on this checkpoint.
    let certified_csv = loaded.run.file(CERTIFIED_CSV);
    let certified = if certified_csv.is_file() {
        Some(read_certified_csv(&certified_csv)?)
    } else {
        None
    };
    let files = write_attack_files(
        &out,
        &summary,
        &outcomes,
        args.norm,
        &subject,
        certified.as_deref(),
    )
    .with_context(|| format!("cannot write the results into {}", out.display()))?;

    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.to_table());
        match files.violations {
            Some(0) => println!("certified lower bound   no attack distance below it"),
            Some(n) => println!(
                "certified lower bound   {n} images attacked below their bound (the bound uses the \
                 linearised model's norm and is not guaranteed for a ReLU network)"
            ),
            None => println!(
                "certified lower bound   run `tulip eval {}` to compare with it",
                args.run_dir.display()
            ),
        }
        for p in &files.written {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

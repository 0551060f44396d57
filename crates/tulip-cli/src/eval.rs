//! `tulip eval`: the summary statistics (docs/method.md §5) of a trained run on the test
//! set.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use tulip_eval::{summary, write_certified_csv, SummaryModel, SummaryOptions};
use tulip_train::{DeviceChoice, RunSource};

/// Summary file written into the run directory.
pub const EVAL_JSON: &str = "eval.json";
/// Per-image certified lower bounds written into the run directory.
pub const CERTIFIED_CSV: &str = "certified.csv";

/// Flags of `tulip eval`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  tulip eval runs/fashion-mnist/resnet22/20261125-140000
  tulip eval RUN_DIR --limit 1000 --json
  tulip eval RUN_DIR --checkpoint RUN_DIR/checkpoint.safetensors

Writes RUN_DIR/eval.json (the summary) and RUN_DIR/certified.csv (each correctly
classified image's margin and certified L2 lower bound).")]
pub struct EvalArgs {
    /// Run directory written by `tulip train` (its config.toml gives model and dataset).
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    /// Checkpoint to evaluate [default: RUN_DIR/best.safetensors, else
    /// RUN_DIR/checkpoint.safetensors].
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Evaluate on the first N test images only [default: the whole test set, whatever
    /// --limit-test the run was trained with].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Images per batch (each costs one forward pass and one backward pass per class
    /// plus one).
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value_t = 500
    )]
    batch_size: usize,
    /// Compute the Jacobian norm over the first N evaluated images only [default: all].
    /// It costs one backward pass per class, most of the time of an evaluation. N must be
    /// at least 1: a norm over no image would not be a norm of the model.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    jacobian_limit: Option<usize>,
    /// Directory holding the dataset [default: the run's, then the usual places].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1 (leave it out to evaluate every test image)");
    }
    if args.jacobian_limit == Some(0) {
        bail!(
            "--jacobian-limit must be at least 1 (leave it out to compute the Jacobian norm \
             over every evaluated image)"
        );
    }
    let loaded = crate::run_loading::load(RunSource {
        dir: &args.run_dir,
        checkpoint: args.checkpoint.as_deref(),
        data: args.data.as_deref(),
        device: args.device,
        test_limit: args.limit,
    })?;
    let (run, config, model, ck_path) = (
        &loaded.run,
        &loaded.config,
        &loaded.model,
        &loaded.checkpoint,
    );
    let test = &loaded.test;
    eprintln!(
        "evaluating {} ({}) on {} {} test images",
        ck_path.display(),
        config.model.architecture,
        test.len(),
        config.dataset
    );

    let bar = crate::progress::bar(test.len() as u64, "eval", "images");
    let options = SummaryOptions {
        batch_size: args.batch_size,
        tanh_scale: model.tanh_scale()?,
        jacobian_images: args.jacobian_limit,
    };
    let report = summary(
        &SummaryModel::of_classifier(model)?,
        test,
        &options,
        &mut |done, _| {
            bar.set_position(done as u64);
            if done == test.len() {
                bar.set_message("weight-product norm…");
            }
        },
    )?;
    bar.finish_and_clear();

    let mut json = serde_json::to_value(&report.summary)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("checkpoint".into(), ck_path.display().to_string().into());
        obj.insert("dataset".into(), config.dataset.name().into());
        obj.insert(
            "lipschitz_estimate_note".into(),
            "max over images of the per-example, unscaled ‖∇ₓℓ_i‖₂".into(),
        );
    }
    let eval_json = run.file(EVAL_JSON);
    tulip_models::checkpoint::write_atomic(
        &eval_json,
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )
    .with_context(|| format!("cannot write {}", eval_json.display()))?;
    write_certified_csv(&run.file(CERTIFIED_CSV), &report.certified)?;

    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.summary.to_table());
        eprintln!(
            "wrote {} and {}",
            eval_json.display(),
            run.file(CERTIFIED_CSV).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `tulip nn-attack`: distance of each image to the nearest training image with another
//! label, and the data's Lipschitz constant (docs/method.md §5).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use tulip_data::DatasetKind;
use tulip_eval::{nearest_different_label, NnOptions};
use tulip_train::DeviceChoice;

/// Flags of `tulip nn-attack`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  tulip nn-attack                         # 10,000 test × 60,000 training images
  tulip nn-attack --train-only --limit 5000
  tulip nn-attack --out nn.csv

The distances are saved as CSV (index,label,distance), one image per line.")]
pub struct NnAttackArgs {
    /// Dataset.
    #[arg(long, value_enum, default_value_t = DatasetKind::FashionMnist)]
    dataset: DatasetKind,
    /// Directory holding the dataset files [default: $TULIP_DATA, ./data/<dataset>, then
    /// /usr/share/datasets/fashion-mnist].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Distances among the training images (each image's nearest *other* training image
    /// with another label) instead of test against training.
    #[arg(long)]
    train_only: bool,
    /// Only the first N query images (test images, or training images with
    /// --train-only); the training set searched stays whole.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Where to save the distances [default: nn-<dataset>-<test|train>.csv].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Query images per block.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value_t = 1000
    )]
    query_block: usize,
    /// Training images per block.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value_t = 10_000
    )]
    reference_block: usize,
    /// Device of the matrix products: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Print the statistics as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: NnAttackArgs) -> anyhow::Result<ExitCode> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1 (leave it out to use every image)");
    }
    for (flag, v) in [
        ("--query-block", args.query_block),
        ("--reference-block", args.reference_block),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let device = args.device.open()?;
    let dir = tulip_data::locate(args.dataset, args.data.as_deref())?;
    let data = tulip_data::load(args.dataset, &dir)?;
    let which = if args.train_only { "train" } else { "test" };
    let mut queries = if args.train_only {
        data.train.clone()
    } else {
        data.test.clone()
    };
    if let Some(n) = args.limit {
        queries.truncate(n);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("nn-{}-{which}.csv", args.dataset)));
    eprintln!(
        "nearest different-label training image of {} {} {which} images among {}",
        queries.len(),
        args.dataset,
        data.train.len()
    );

    let bar = crate::progress::bar(0, "nn", "blocks");
    let options = NnOptions {
        query_block: args.query_block,
        reference_block: args.reference_block,
    };
    let started = Instant::now();
    let nn = nearest_different_label(&queries, &data.train, &options, &device, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64);
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let stats = nn.stats().with_context(|| {
        format!(
            "{which} images against the training images of {}",
            dir.display()
        )
    })?;
    nn.write_csv(&out)
        .with_context(|| format!("cannot save the distances to {}", out.display()))?;

    if args.json {
        let mut v = serde_json::to_value(&stats)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("seconds".into(), seconds.into());
            o.insert("out".into(), out.display().to_string().into());
        }
        println!("{v}");
    } else {
        let opt =
            |v: Option<f64>| v.map_or_else(|| "— (all distances 0)".into(), |v| format!("{v:.6}"));
        println!("images                  {}", stats.images);
        if stats.without_neighbour > 0 {
            println!("without neighbour       {}", stats.without_neighbour);
        }
        println!("mean distance (L2)      {:.6}", stats.mean);
        println!("median distance (L2)    {:.6}", stats.median);
        println!("duplicates (distance 0) {}", stats.zero_distance);
        println!("min positive distance   {}", opt(stats.min_positive));
        println!("data Lipschitz 1/min    {}", opt(stats.data_lipschitz));
        eprintln!("{:.1}s; distances saved to {}", seconds, out.display());
    }
    Ok(ExitCode::SUCCESS)
}

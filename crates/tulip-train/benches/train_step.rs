//! Seconds per training step, images per second and peak memory for each model × method
//! (issues 3, 4 and 7), on synthetic data, printed as a Markdown table and JSON lines.
//!
//!     cargo bench -p tulip-train --bench train_step
//!     TULIP_BENCH=resnet22:plain,resnet22:lip TULIP_BENCH_STEPS=5 cargo bench -p tulip-train --bench train_step
//!
//! Each case runs in its own process (the bench re-executes itself), so its peak RSS
//! (`VmHWM`) belongs to it. The figure is the median over the timed steps after one
//! warm-up step. Compare with PyTorch side by side: `../shared/bench/README.md`.

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use tulip_adversarial::{PerturbationKind, PgdConfig};
use tulip_data::{Dataset, DatasetKind, Split};
use tulip_models::{Architecture, ModelConfig};
use tulip_penalties::PenaltyMethod;
use tulip_train::{ObjectiveConfig, TrainConfig, Trainer};

const DEFAULT_CASES: &str =
    "resnet22:plain,resnet22:lip,resnet22:fd,resnet22:j2,resnet22:lipj2,resnet22:pgd,\
resnet22_fashion:plain,allcnn:plain";

fn objective(mode: &str) -> (ObjectiveConfig, bool) {
    let base = ObjectiveConfig::default();
    match mode {
        "plain" => (base, false),
        "lip" => (ObjectiveConfig { lip: 0.1, ..base }, false),
        "fd" => (
            ObjectiveConfig {
                lip: 0.1,
                penalty_method: PenaltyMethod::FiniteDifference,
                decay: 5e-4,
                ..base
            },
            false,
        ),
        "j2" => (
            ObjectiveConfig {
                perturbation: Some(PerturbationKind::J2 { epsilon: 0.01 }),
                ..base
            },
            false,
        ),
        "lipj2" => (
            ObjectiveConfig {
                lip: 0.1,
                decay: 5e-4,
                perturbation: Some(PerturbationKind::J2 { epsilon: 0.01 }),
                ..base
            },
            true,
        ),
        "pgd" => (
            ObjectiveConfig {
                perturbation: Some(PerturbationKind::PgdInf(PgdConfig::default())),
                ..base
            },
            false,
        ),
        other => panic!("unknown mode {other}: plain, lip, fd, j2, lipj2, pgd"),
    }
}

fn synthetic(kind: DatasetKind, n: usize) -> Dataset {
    let (c, h, w) = kind.image_shape();
    let len = n * c * h * w;
    let images: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % kind.classes()) as u8).collect();
    let split = Split::new(images, labels, (c, h, w)).unwrap();
    Dataset {
        kind,
        train: split.clone(),
        test: split,
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn run_case(case: &str, steps: usize) {
    let (model_name, mode) = case.split_once(':').expect("model:mode");
    let (arch, kind) = match model_name {
        "resnet22" => (Architecture::ResNet22, DatasetKind::Cifar10),
        "resnet22_fashion" => (Architecture::ResNet22, DatasetKind::FashionMnist),
        "allcnn" => (Architecture::AllCnn, DatasetKind::Cifar10),
        "resnext34" => (Architecture::ResNeXt34, DatasetKind::Cifar10),
        other => panic!("unknown model {other}"),
    };
    let (objective, tanh) = objective(mode);
    let batch = 128;
    let model = ModelConfig {
        tanh,
        ..ModelConfig::new(arch, kind.classes(), kind.image_shape())
    };
    let config = TrainConfig {
        batch_size: batch,
        objective,
        ..TrainConfig::new(kind, model)
    };
    let data = synthetic(kind, batch);
    let tmp = std::env::temp_dir().join(format!("tulip-bench-{}-{case}", std::process::id()));
    let mut trainer = Trainer::new(config, data.clone(), &tmp).unwrap();
    let loader = tulip_data::Loader::test(&data.train, batch, &Device::Cpu).unwrap();
    let b = loader.epoch(0).next().unwrap().unwrap();
    let (x, y): (Tensor, Tensor) = (b.images, b.labels);
    trainer.train_step(&x, &y).unwrap(); // warm-up
    let mut times: Vec<f64> = (0..steps)
        .map(|_| {
            let t = Instant::now();
            trainer.train_step(&x, &y).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "{{\"case\":\"{case}\",\"batch\":{batch},\"steps\":{steps},\"median_s\":{median:.4},\"min_s\":{:.4},\"images_per_s\":{:.1},\"peak_rss_mib\":{:.0}}}",
        times[0],
        batch as f64 / median,
        peak_rss_mib()
    );
}

fn main() {
    // Exact penalties need second-order gradients before the first backward pass.
    tulip_penalties::enable_second_order_gradients();
    let steps: usize = std::env::var("TULIP_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    if let Ok(case) = std::env::var("TULIP_BENCH_CASE") {
        run_case(&case, steps);
        return;
    }
    let cases = std::env::var("TULIP_BENCH").unwrap_or_else(|_| DEFAULT_CASES.to_string());
    println!("| case | median s/step | images/s | peak RSS MiB |\n|---|---|---|---|");
    for case in cases.split(',') {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("TULIP_BENCH_CASE", case)
            .env("TULIP_BENCH_STEPS", steps.to_string())
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let line = line.lines().find(|l| l.starts_with('{')).unwrap_or("");
        let field = |k: &str| -> String {
            line.split(&format!("\"{k}\":"))
                .nth(1)
                .map(|r| r.split([',', '}']).next().unwrap_or("").to_string())
                .unwrap_or_else(|| "?".into())
        };
        if line.is_empty() {
            println!(
                "| {case} | failed: {} | | |",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        } else {
            println!(
                "| {case} | {} | {} | {} |",
                field("median_s"),
                field("images_per_s"),
                field("peak_rss_mib")
            );
        }
        eprintln!("{line}");
    }
}

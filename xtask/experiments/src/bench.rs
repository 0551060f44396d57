//! `cargo xtask bench`: the project's performance figures, and the side-by-side
//! comparison with the PyTorch reference (`bench/torch/torch_step_bench.py`).
//!
//! Every case runs in a process of its own (this binary re-executed with the hidden
//! `bench-case` command), so the peak RSS it reports (`VmHWM`) belongs to that case alone.
//! With `--torch PYTHON`, the PyTorch script runs the same case right after ours, with the
//! same threads and malloc settings, so that the ratio compares like with like on a shared,
//! noisy machine: only the ratio is meaningful, absolute times drift between hosts. With
//! `--rounds N` each case is measured N times, the two sides taking turns to go first, and
//! the table gives the median of the rounds' ratios and their range: the host's slow spells
//! (which move a single run's ratios noticeably) then weigh on both sides alike.
//!
//! With `--isa avx2` (or `avx512`, `scalar`) both sides run one instruction set: our
//! kernels through `tulip_models::set_cpu_isa`, PyTorch pinned by environment variables
//! whose effect a probe run reads back first ([`isa`]); so the AVX2 path can be measured
//! on a CPU that has AVX-512.
//!
//! The goals the table checks: every case at most 0.8× PyTorch's time (0.7× on AVX2), and
//! the nearest-neighbour attack within 1.5× of one GEMM of its size. The table and JSON go to
//! `--out` (`bench/RESULTS.md` and `bench/results.json` by default, replaced whole; the
//! committed `RESULTS.md` carries, below its latest table, the earlier runs and what each
//! optimisation bought, added by hand).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use tulip_adversarial::{AttackConfig, AttackKind, PerturbationKind, PgdConfig};
use tulip_data::{Dataset, DatasetKind, Split};
use tulip_models::{Architecture, CpuIsa, Model, ModelConfig};
use tulip_penalties::{Norm, PenaltyMethod};
// glibc malloc told to keep the memory it has: the PyTorch script's default, and what the
// `tulip` binary sets for itself.
use tulip_train::malloc::RETAIN_FREED_MEMORY;
use tulip_train::{DeviceChoice, ObjectiveConfig, TrainConfig, Trainer};

mod isa;

/// The cases of the default table: every training mode on ResNet22 (CIFAR shape, as the
/// PyTorch anchor), evaluation throughput, the max-gradient-norm pass, the
/// nearest-neighbour attack.
/// Test images an attack case attacks unless told otherwise.
const ATTACK_IMAGES: u64 = 200;

pub const DEFAULT_CASES: &str = "resnet22:plain,resnet22:lip,resnet22:fd,resnet22:j2,\
resnet22:lipj2,resnet22:pgd,resnet22:infer,resnet22:gradpass,fashion:nn-attack";

/// The global allocator of this build (`--features mimalloc` or the system's).
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "glibc malloc"
};

/// Images of the reference max-gradient-norm pass (the test set); fewer are extrapolated.
const GRADPASS_IMAGES: usize = 10_000;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated `model:mode` cases. Models: resnet22 (3×32×32), resnet22_fashion
    /// (1×28×28), resnet8_fashion, allcnn, resnext34. Modes: plain, lip, fd, j2, lipj2, pgd (training
    /// steps, batch 128), infer (eval forward, batch 1000), gradpass (max ‖∇ₓℓ‖ over the
    /// test images, batch 1000); and `fashion:nn-attack` (10k × 60k Fashion-MNIST).
    #[arg(long, default_value = DEFAULT_CASES)]
    pub cases: String,
    /// Timed training steps per case (after one untimed warm-up step); the median is
    /// reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Times each case is measured, back to back (with `--torch`: the two sides taking
    /// turns to go first); the table gives the medians, and with `--torch` the median and
    /// range of the rounds' ratios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Images of the max-gradient-norm pass (the reference figure is for 10,000; fewer
    /// are extrapolated linearly and marked).
    #[arg(long, default_value_t = GRADPASS_IMAGES)]
    pub gradpass_images: usize,
    /// Also run the PyTorch side with this Python (a venv with torch; see
    /// `bench/torch/README.md`), case by case right after ours, and print the ratios.
    #[arg(long, value_name = "PYTHON")]
    pub torch: Option<PathBuf>,
    /// The PyTorch benchmark script (a relative path is taken from the current directory,
    /// normally the repository root).
    #[arg(long, default_value = "bench/torch/torch_step_bench.py")]
    pub torch_script: PathBuf,
    /// glibc malloc settings for both sides: `retain` (keep freed memory, the PyTorch
    /// script's default) or `default`.
    #[arg(long, default_value = "retain", value_parser = ["retain", "default"])]
    pub malloc: String,
    /// The instruction set of both sides: `native` (each side's best), or `avx512`,
    /// `avx2`, `scalar` to run our kernels with that set (an error if the CPU lacks it)
    /// and pin PyTorch to it (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`,
    /// `MKL_ENABLE_INSTRUCTIONS`, checked by a probe run before the cases).
    #[arg(long, default_value = "native")]
    pub isa: CpuIsa,
    /// The trained run (a `tulip train` directory) whose weights the attack cases
    /// (`run:deepfool-l2`, `run:deepfool-linf`, `run:pgd-l2`, `run:pgd-linf`) attack, on
    /// both sides.
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Test images of an attack case (the first ones; one pass over them is timed, after
    /// an untimed batch).
    #[arg(long, default_value_t = ATTACK_IMAGES, value_parser = clap::value_parser!(u64).range(1..))]
    pub attack_images: u64,
    /// The PyTorch side of the attack cases (Foolbox 3 on the run's weights).
    #[arg(long, default_value = "bench/torch/attack_bench.py")]
    pub attack_script: PathBuf,
    /// Where to write `RESULTS.md` and `results.json`.
    #[arg(long, default_value = "bench")]
    pub out: PathBuf,
    /// Directory of the Fashion-MNIST files for the nn-attack case (default: the usual
    /// search: $TULIP_DATA, ./data/fashion-mnist, /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// One measured case (either side).
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// Seconds: per training step, per eval batch, per 10k-image pass, or per nn-attack.
    pub seconds: f64,
    images_per_s: f64,
    peak_rss_mib: f64,
    raw: Value,
}

/// Runs `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let cases: Vec<&str> = args
        .cases
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    for case in &cases {
        if matches!(parse_case(case)?.2, Mode::Attack(_)) && args.run.is_none() {
            bail!("bench case {case}: the attack cases need --run DIR (a trained run)");
        }
    }
    if let Some(py) = &args.torch {
        if !args.torch_script.exists() {
            bail!(
                "--torch-script {}: no such file (the PyTorch benchmark is \
                 bench/torch/torch_step_bench.py in the repository: run `cargo xtask bench` \
                 from the repository root, or pass its path)",
                args.torch_script.display()
            );
        }
        if !py.exists() {
            bail!("--torch {}: no such Python interpreter", py.display());
        }
    }
    isa::require(args.isa, &cpu_model())?;
    let torch_isa = match &args.torch {
        Some(py) => {
            let reported = isa::probe_torch(py, &args.torch_script, args.isa)?;
            eprintln!("bench: {}", reported.describe(args.isa));
            Some(reported)
        }
        None => None,
    };
    let ours = OurSide {
        data: args.data.as_deref(),
        malloc: &args.malloc,
        device: DeviceChoice::Cpu,
        isa: args.isa,
        run: args.run.as_deref(),
        attack_images: args.attack_images,
    };
    let mut rows = Vec::new();
    for case in &cases {
        let mut row = Row {
            case: case.to_string(),
            ours: Vec::new(),
            torch: Vec::new(),
        };
        for round in 0..args.rounds {
            // ABBA…: each side goes first in every other round.
            let torch_first = round % 2 == 1;
            if torch_first {
                row.torch.extend(run_torch(args, case)?);
            }
            eprintln!("bench: {case} (tulip, round {})…", round + 1);
            row.ours
                .push(ours.run(case, args.steps, args.gradpass_images)?);
            if !torch_first {
                row.torch.extend(run_torch(args, case)?);
            }
        }
        print_row(&row);
        rows.push(row);
    }
    write_results(args, &rows, torch_isa.as_ref())
}

/// One case's rounds: ours, and PyTorch's (none without `--torch`, or for a case it does
/// not have).
struct Row {
    case: String,
    ours: Vec<Measured>,
    torch: Vec<Measured>,
}

impl Row {
    /// Our median seconds.
    fn ours(&self) -> f64 {
        median(self.ours.iter().map(|m| m.seconds))
    }

    /// PyTorch's median seconds, if it ran.
    fn torch(&self) -> Option<f64> {
        (!self.torch.is_empty()).then(|| median(self.torch.iter().map(|m| m.seconds)))
    }

    /// Each round's ratio, ours over PyTorch's (measured back to back).
    fn ratios(&self) -> Vec<f64> {
        let pairs = self.ours.iter().zip(&self.torch);
        pairs.map(|(o, t)| o.seconds / t.seconds).collect()
    }

    /// The highest peak RSS of the rounds of a side.
    fn peak_rss(side: &[Measured]) -> f64 {
        side.iter().map(|m| m.peak_rss_mib).fold(f64::NAN, f64::max)
    }
}

/// The smallest and the largest of some positive values (`(∞, 0)` for none).
fn range(values: &[f64]) -> (f64, f64) {
    let bounds = (f64::INFINITY, 0f64);
    values
        .iter()
        .fold(bounds, |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// The median of some values (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The PyTorch side of `case` once, if `--torch` is given and the script has the case.
fn run_torch(args: &BenchArgs, case: &str) -> Result<Option<Measured>> {
    let Some(py) = &args.torch else {
        return Ok(None);
    };
    let side = TorchSide {
        python: py,
        script: &args.torch_script,
        malloc: &args.malloc,
        device: DeviceChoice::Cpu,
        isa: args.isa,
        attack: args.run.as_deref().map(|run| TorchAttack {
            script: &args.attack_script,
            run,
            images: args.attack_images,
            data: args.data.as_deref(),
        }),
    };
    side.run(case, args.steps, args.gradpass_images)
}

/// How to run our side of a case: in a process of its own (this binary's hidden
/// `bench-case`), with which dataset, malloc settings and device.
pub(crate) struct OurSide<'a> {
    pub data: Option<&'a Path>,
    pub malloc: &'a str,
    pub device: DeviceChoice,
    pub isa: CpuIsa,
    /// The run of the attack cases, and their image count.
    pub run: Option<&'a Path>,
    pub attack_images: u64,
}

impl OurSide<'_> {
    /// Runs `case` once with `steps` timed steps (after one warm-up).
    pub(crate) fn run(&self, case: &str, steps: usize, gradpass_images: usize) -> Result<Measured> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["bench-case", case, "--steps", &steps.to_string()])
            .args(["--gradpass-images", &gradpass_images.to_string()])
            .args(["--device", &self.device.to_string()])
            .args(["--isa", self.isa.name()])
            .args(["--attack-images", &self.attack_images.to_string()])
            .args(
                self.run
                    .iter()
                    .flat_map(|r| ["--run".as_ref(), r.as_os_str()]),
            )
            .args(
                self.data
                    .iter()
                    .flat_map(|d| ["--data".as_ref(), d.as_os_str()]),
            );
        run_child(&mut cmd, self.malloc).with_context(|| format!("tulip side of {case}"))
    }
}

/// How to run the PyTorch script: which interpreter and script, with which malloc
/// settings, on which device.
pub(crate) struct TorchSide<'a> {
    pub python: &'a Path,
    pub script: &'a Path,
    pub malloc: &'a str,
    pub device: DeviceChoice,
    /// The instruction set PyTorch is pinned to on the CPU.
    pub isa: CpuIsa,
    /// The attack cases' script and run, if any.
    pub attack: Option<TorchAttack<'a>>,
}

/// How the PyTorch side runs an attack case: Foolbox 3 on a run's weights.
pub(crate) struct TorchAttack<'a> {
    pub script: &'a Path,
    pub run: &'a Path,
    pub images: u64,
    pub data: Option<&'a Path>,
}

impl TorchSide<'_> {
    /// Runs `case` once with `steps` timed steps (after one warm-up), or `None` for a case
    /// the script does not have.
    pub(crate) fn run(
        &self,
        case: &str,
        steps: usize,
        test_images: usize,
    ) -> Result<Option<Measured>> {
        if let Some(attack) = case.strip_prefix("run:") {
            let Some(run) = &self.attack else {
                return Ok(None);
            };
            eprintln!("bench: {case} (pytorch + foolbox, {})…", self.device);
            let mut cmd = Command::new(self.python);
            cmd.arg(run.script)
                .arg(run.run)
                .args(["--attack", attack, "--images", &run.images.to_string()])
                .args(["--threads", "2", "--device", &torch_device(self.device)])
                .args(
                    run.data
                        .iter()
                        .flat_map(|d| ["--data".as_ref(), d.as_os_str()]),
                )
                .envs(isa::torch_env(self.isa));
            let measured = run_child(&mut cmd, self.malloc)
                .with_context(|| format!("PyTorch side of {case}"))?;
            return Ok(Some(measured));
        }
        let Some(single) = torch_case(case) else {
            return Ok(None);
        };
        eprintln!("bench: {case} (pytorch, {})…", self.device);
        let mut cmd = Command::new(self.python);
        cmd.arg(self.script)
            .args(["--single", &single, "--threads", "2", "--warmup", "1"])
            .args(["--device", &torch_device(self.device)])
            .args(["--min-steps", &steps.to_string()])
            .args(["--max-steps", &steps.to_string()])
            .args(["--test-images", &test_images.to_string()])
            .envs(isa::torch_env(self.isa));
        let measured =
            run_child(&mut cmd, self.malloc).with_context(|| format!("PyTorch side of {case}"))?;
        Ok(Some(measured))
    }
}

/// PyTorch's name for a device.
fn torch_device(device: DeviceChoice) -> String {
    match device {
        DeviceChoice::Cpu => "cpu".into(),
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
    }
}

/// The PyTorch script's name for a case, if it has one.
fn torch_case(case: &str) -> Option<String> {
    let (model, mode) = case.split_once(':')?;
    (mode != "nn-attack").then(|| format!("{model}:{mode}"))
}

fn run_child(cmd: &mut Command, malloc: &str) -> Result<Measured> {
    if malloc == "retain" {
        cmd.envs(RETAIN_FREED_MEMORY);
    } else {
        for (k, _) in RETAIN_FREED_MEMORY {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .output()
        .context("could not start the benchmark process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "the case printed no result ({}): {}",
            out.status,
            stderr.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        );
    };
    let raw: Value = serde_json::from_str(line).context("unreadable RESULT line")?;
    let num = |k: &str| raw.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    // A gradient pass is reported per 10,000 images (the test set), on both sides.
    let seconds = match raw.get("kind").and_then(Value::as_str) {
        Some("gradpass") => num("pass_s") * GRADPASS_IMAGES as f64 / num("images"),
        _ => num("median_s"),
    };
    Ok(Measured {
        seconds,
        images_per_s: num("images_per_s"),
        peak_rss_mib: num("peak_rss_mib"),
        raw,
    })
}

fn unit(case: &str) -> &'static str {
    match case.split_once(':').map(|(_, m)| m) {
        Some("infer") => "s/batch 1000",
        Some("gradpass") => "s/10k images",
        Some("nn-attack") => "s",
        _ if case.starts_with("run:") => "s/pass",
        _ => "s/step",
    }
}

fn print_row(row: &Row) {
    let (case, u) = (&row.case, unit(&row.case));
    let ratios = row.ratios();
    match row.torch() {
        Some(t) => eprintln!(
            "bench: {case}: tulip {:.3} {u}, pytorch {t:.3} {u}, ratio {:.2} (rounds: {})",
            row.ours(),
            median(ratios.iter().copied()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => eprintln!("bench: {case}: tulip {:.3} {u}", row.ours()),
    }
}

/// The flags that chose the cases, as given (none for the default cases), so that the
/// command at the head of the results reruns the same cases.
fn case_flags(args: &BenchArgs) -> String {
    let mut flags = String::new();
    if args.cases != DEFAULT_CASES {
        flags += &format!(" --cases {}", args.cases);
    }
    if let Some(run) = &args.run {
        flags += &format!(" --run {}", run.display());
        if args.attack_images != ATTACK_IMAGES {
            flags += &format!(" --attack-images {}", args.attack_images);
        }
    }
    flags
}

fn write_results(args: &BenchArgs, rows: &[Row], torch_isa: Option<&isa::TorchIsa>) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("could not create {}", args.out.display()))?;
    let with_torch = rows.iter().any(|r| !r.torch.is_empty());
    let rounds = args.rounds > 1;
    let mut md = String::from("# Tulip-rs performance figures\n\n");
    md += &format!(
        "    cargo xtask bench{} --isa {} --steps {}{}{}{}\n\n",
        case_flags(args),
        args.isa,
        args.steps,
        match args.gradpass_images {
            GRADPASS_IMAGES => String::new(),
            n => format!(" --gradpass-images {n}"),
        },
        if rounds {
            format!(" --rounds {}", args.rounds)
        } else {
            String::new()
        },
        if with_torch {
            " --torch ../torch-venv/bin/python"
        } else {
            ""
        }
    );
    md += &format!(
        "{}, {} CPUs; instruction set {}; tulip allocator {ALLOCATOR}, glibc malloc settings `{}`, {}. Training steps: batch 128, median of {} timed steps \
         after one warm-up; synthetic data. Peak RSS is each case's own process.",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        isa_description(args.isa),
        args.malloc,
        chrono_like_date(),
        args.steps
    );
    if rounds {
        md += &format!(
            " Each case was measured {} times, back to back{}; the table gives the medians{}, \
             and the highest peak RSS.",
            args.rounds,
            if with_torch {
                ", the two sides taking turns to go first"
            } else {
                ""
            },
            if with_torch {
                " (the ratio is the median of the rounds' ratios, each of two runs back to \
                 back; their range beside it)"
            } else {
                ""
            }
        );
    }
    if let Some(reported) = torch_isa {
        md += " ";
        md += &reported.describe(args.isa);
    }
    md += "\n\n";
    if with_torch {
        md += "| case | unit | tulip | pytorch | tulip / pytorch |";
        md += if rounds { " rounds' range |" } else { "" };
        md += &format!(
            " goal ≤ {} | tulip RSS MiB | pytorch RSS MiB |\n",
            goal(args.isa)
        );
        md += if rounds {
            "|---|---|---|---|---|---|---|---|---|\n"
        } else {
            "|---|---|---|---|---|---|---|---|\n"
        };
    } else {
        md += "| case | unit | tulip | images/s | peak RSS MiB |\n|---|---|---|---|---|\n";
    }
    let mut json_rows = Vec::new();
    for row in rows {
        let (case, u) = (&row.case, unit(&row.case));
        let ratios = row.ratios();
        let ratio = median(ratios.iter().copied());
        let (lo, hi) = range(&ratios);
        let ours_rss = Row::peak_rss(&row.ours);
        match row.torch() {
            Some(t) if with_torch => {
                md += &format!(
                    "| {case} | {u} | {:.3} | {t:.3} | {ratio:.2} |{} {} | {ours_rss:.0} | {:.0} |\n",
                    row.ours(),
                    if rounds {
                        format!(" {lo:.2}–{hi:.2} |")
                    } else {
                        String::new()
                    },
                    if ratio <= goal(args.isa) { "met" } else { "not met" },
                    Row::peak_rss(&row.torch)
                );
            }
            _ if with_torch => {
                md += &format!(
                    "| {case} | {u} | {:.3} | — | — |{} — | {ours_rss:.0} | — |\n",
                    row.ours(),
                    if rounds { " — |" } else { "" }
                );
            }
            _ => {
                let images_per_s = median(row.ours.iter().map(|m| m.images_per_s));
                md += &format!(
                    "| {case} | {u} | {:.3} | {images_per_s:.1} | {ours_rss:.0} |\n",
                    row.ours()
                );
            }
        }
        json_rows.push(json!({
            "case": case,
            "unit": u,
            "tulip_seconds": row.ours(),
            "pytorch_seconds": row.torch(),
            "ratio": (!ratios.is_empty()).then_some(ratio),
            "ratios": ratios,
            "tulip": row.ours.iter().map(|m| m.raw.clone()).collect::<Vec<_>>(),
            "pytorch": row.torch.iter().map(|m| m.raw.clone()).collect::<Vec<_>>(),
        }));
    }
    for row in rows {
        let field = |k: &str| median(row.ours.iter().filter_map(|m| m.raw.get(k)?.as_f64()));
        let (gemm, ratio) = (field("gemm_s"), field("nn_over_gemm"));
        if gemm.is_finite() && ratio.is_finite() {
            md += &format!(
                "\n{}: {:.2} s against {gemm:.2} s for one f32 GEMM of the same size \
                 ([10000×784]·[784×60000]) on the same machine: {ratio:.2}× (goal ≤ 1.5×).\n",
                row.case,
                row.ours()
            );
        }
    }
    if with_torch {
        // The canary's level depends on the CPU (AVX2 or AVX-512), so only its spread
        // within one run says something: a case whose canary sags was disturbed.
        let canaries: Vec<f64> = rows
            .iter()
            .flat_map(|r| &r.torch)
            .filter_map(|m| m.raw["canary_gflops"].as_array())
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        // The attack cases' script times none.
        if !canaries.is_empty() {
            let (lo, hi) = range(&canaries);
            md += &format!(
                "\nThe PyTorch side times a 1024×1024 sgemm \"canary\" (GFLOPS) before and \
                 after each case (results.json); in this run it ranged {lo:.0}–{hi:.0}. Its level \
                 depends on the CPU; a case whose canary sags well below the others was slowed \
                 by the host.\n"
            );
        }
    }
    if args.gradpass_images != GRADPASS_IMAGES {
        md += &format!(
            "\nThe gradient pass ran over {} images; its figure per 10k is extrapolated \
             linearly.\n",
            args.gradpass_images
        );
    }
    let md_path = args.out.join("RESULTS.md");
    let json_path = args.out.join("results.json");
    let write = tulip_models::checkpoint::write_atomic;
    write(&md_path, md.as_bytes())
        .with_context(|| format!("could not write {}", md_path.display()))?;
    write(
        &json_path,
        (serde_json::to_string_pretty(&json_rows)? + "\n").as_bytes(),
    )
    .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("{md}");
    eprintln!(
        "bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// The ratio to PyTorch's time each row should meet: 0.7 on AVX2 (where most CPUs that
/// researchers train on stop), 0.8 elsewhere.
fn goal(isa: CpuIsa) -> f64 {
    match isa.resolved() {
        CpuIsa::Avx2 => 0.7,
        _ => 0.8,
    }
}

/// The instruction set of our side, as the results name it: `avx2 (chosen)` or, for
/// `native`, what it resolves to on this CPU.
fn isa_description(isa: CpuIsa) -> String {
    match isa {
        CpuIsa::Native => format!("native ({} on this CPU)", isa.resolved()),
        other => format!("{other} (chosen with --isa)"),
    }
}

/// The CPU's model name with its family and model numbers, which tell its generation
/// where the name does not (a VM's "AMD EPYC": family 25 model 1 is Zen 3, model 17 Zen 4;
/// family 26 is Zen 5).
pub(crate) fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpu_model_of(&info)
}

fn cpu_model_of(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(name), Some(family), Some(model)) => {
            format!("{name} (family {family}, model {model})")
        }
        (Some(name), _, _) => name,
        _ => "unknown CPU".into(),
    }
}

pub(crate) fn chrono_like_date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// One case, in its own process.
// ---------------------------------------------------------------------------------------

/// Options of the hidden `cargo xtask bench-case MODEL:MODE` (one case, one process).
#[derive(clap::Args, Debug)]
pub struct CaseArgs {
    /// `model:mode`.
    pub case: String,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Images of the gradient pass.
    #[arg(long, default_value_t = GRADPASS_IMAGES)]
    pub gradpass_images: usize,
    /// Fashion-MNIST directory for the nn-attack case.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Device of the model cases (`cpu`, `cuda`, `cuda:N`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Instruction set of the CPU kernels.
    #[arg(long, default_value = "native")]
    pub isa: CpuIsa,
    /// The trained run of an attack case.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Test images of an attack case.
    #[arg(long, default_value_t = ATTACK_IMAGES)]
    pub attack_images: u64,
}

enum Mode {
    Train(ObjectiveConfig, bool),
    Infer,
    GradPass,
    NnAttack,
    /// An evaluation attack on a trained run's test images.
    Attack(AttackConfig),
}

/// The attack cases: `tulip attack`'s defaults, PGD at the reproduction's radii.
fn attack_case(case: &str, attack: &str) -> Result<AttackConfig> {
    Ok(match attack {
        "deepfool-l2" => AttackConfig::new(AttackKind::DeepFool, Norm::L2),
        "deepfool-linf" => AttackConfig::new(AttackKind::DeepFool, Norm::Linf),
        "pgd-l2" => AttackConfig::pgd(Norm::L2, 0.5),
        "pgd-linf" => AttackConfig::pgd(Norm::Linf, 0.1),
        other => bail!(
            "bench case {case:?}: unknown attack {other:?} (deepfool-l2, deepfool-linf, pgd-l2, pgd-linf)"
        ),
    })
}

fn parse_case(case: &str) -> Result<(Architecture, DatasetKind, Mode)> {
    let Some((model, mode)) = case.split_once(':') else {
        bail!("bench case {case:?}: expected MODEL:MODE, e.g. resnet22:plain");
    };
    if mode == "nn-attack" {
        return Ok((
            Architecture::ResNet22,
            DatasetKind::FashionMnist,
            Mode::NnAttack,
        ));
    }
    if model == "run" {
        // The model and data are the run's.
        let attack = attack_case(case, mode)?;
        return Ok((
            Architecture::ResNet22,
            DatasetKind::FashionMnist,
            Mode::Attack(attack),
        ));
    }
    let (arch, kind) = match model {
        "resnet22" => (Architecture::ResNet22, DatasetKind::Cifar10),
        "resnet22_fashion" => (Architecture::ResNet22, DatasetKind::FashionMnist),
        "resnet8_fashion" => (Architecture::ResNet8, DatasetKind::FashionMnist),
        "allcnn" => (Architecture::AllCnn, DatasetKind::Cifar10),
        "resnext34" => (Architecture::ResNeXt34, DatasetKind::Cifar10),
        other => bail!(
            "bench case {case:?}: unknown model {other:?} (resnet22, resnet22_fashion, resnet8_fashion, allcnn, resnext34)"
        ),
    };
    let base = ObjectiveConfig::default();
    let j2 = Some(PerturbationKind::J2 { epsilon: 0.01 });
    let mode = match mode {
        "plain" => Mode::Train(base, false),
        "lip" => Mode::Train(ObjectiveConfig { lip: 0.1, ..base }, false),
        // The anchor's fd case: penalty 0.1, h 0.01, weight decay 5e-4.
        "fd" => Mode::Train(
            ObjectiveConfig {
                lip: 0.1,
                penalty_method: PenaltyMethod::FiniteDifference,
                decay: 5e-4,
                ..base
            },
            false,
        ),
        "j2" => Mode::Train(ObjectiveConfig { perturbation: j2, ..base }, false),
        "lipj2" => Mode::Train(best_objective(), true),
        "pgd" => Mode::Train(
            ObjectiveConfig {
                perturbation: Some(PerturbationKind::PgdInf(PgdConfig::default())),
                ..base
            },
            false,
        ),
        "infer" => Mode::Infer,
        "gradpass" => Mode::GradPass,
        other => bail!(
            "bench case {case:?}: unknown mode {other:?} (plain, lip, fd, j2, lipj2, pgd, infer, gradpass, nn-attack)"
        ),
    };
    Ok((arch, kind, mode))
}

/// The paper's best setting, without its tanh output layer (a model setting): exact
/// Lipschitz penalty 0.1, weight decay 5e-4, J2 at 0.01. The `lipj2` case, and what
/// `gpu-check` trains.
pub(crate) fn best_objective() -> ObjectiveConfig {
    ObjectiveConfig {
        lip: 0.1,
        decay: 5e-4,
        perturbation: Some(PerturbationKind::J2 { epsilon: 0.01 }),
        ..ObjectiveConfig::default()
    }
}

/// Deterministic synthetic images (the anchor uses uniform noise too).
pub(crate) fn synthetic(kind: DatasetKind, n: usize) -> Result<Dataset> {
    let (c, h, w) = kind.image_shape();
    let images: Vec<u8> = (0..n * c * h * w)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % kind.classes()) as u8).collect();
    let split = Split::new(images, labels, (c, h, w))?;
    Ok(Dataset {
        kind,
        train: split.clone(),
        test: split,
    })
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs `f` once untimed (warm-up: allocations, lazily built state), then `steps` times
/// (at least once), and returns the seconds of each timed call.
fn time_repeats(steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    (0..steps.max(1))
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Stores the timings of a repeated case (the PyTorch script's field names).
fn record_times(result: &mut Value, batch: usize, times: &[f64]) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    result["batch"] = json!(batch);
    result["steps"] = json!(times.len());
    result["times_s"] = json!(times);
    result["median_s"] = json!(median);
    result["min_s"] = json!(sorted[0]);
    result["images_per_s"] = json!(batch as f64 / median);
}

/// Runs one case and prints `RESULT {json}` (the PyTorch script's protocol).
pub fn run_case(args: &CaseArgs) -> Result<()> {
    let (arch, kind, mode) = parse_case(&args.case)?;
    tulip_models::set_cpu_isa(args.isa).with_context(|| format!("--isa {}", args.isa))?;
    // As `tulip train`: second-order gradients (needed before the first backward pass)
    // only for the exact penalty, since they cost every other mode memory.
    if matches!(&mode, Mode::Train(objective, _) if objective.needs_second_order_gradients()) {
        tulip_penalties::enable_second_order_gradients();
    }
    let (model_name, mode_name) = args.case.split_once(':').unwrap_or_default();
    let mut result = json!({
        "model": model_name,
        "kind": mode_name,
        "allocator": ALLOCATOR,
        "device": args.device.to_string(),
        "isa": args.isa.resolved().name(),
    });
    let device = args.device.open()?;
    match mode {
        Mode::Train(objective, tanh) => {
            let batch = 128;
            let config = TrainConfig {
                batch_size: batch,
                objective,
                device: args.device,
                ..TrainConfig::new(
                    kind,
                    ModelConfig {
                        tanh,
                        ..ModelConfig::new(arch, kind.classes(), kind.image_shape())
                    },
                )
            };
            let data = synthetic(kind, batch)?;
            let tmp = tempdir(&args.case);
            let mut trainer = Trainer::new(config, data.clone(), &tmp)?;
            let loader = tulip_data::Loader::test(&data.train, batch, &device)?;
            let b = loader.epoch(0).next().context("empty loader")??;
            let timed = time_repeats(args.steps, || {
                trainer.train_step(&b.images, &b.labels)?;
                Ok(())
            });
            let _ = std::fs::remove_dir_all(&tmp);
            record_times(&mut result, batch, &timed?);
        }
        Mode::Infer => {
            let batch = 1000;
            let model = model(arch, kind, &device)?;
            let x = synthetic_batch(kind, batch, &device)?;
            let times = time_repeats(args.steps, || {
                // Reading the logits back forces the whole computation.
                tulip_models::predict(&model, &x)?.to_vec2::<f32>()?;
                Ok(())
            })?;
            record_times(&mut result, batch, &times);
        }
        Mode::GradPass => {
            let batch = 1000;
            let total = args.gradpass_images.max(1);
            let model = model(arch, kind, &device)?;
            let classes = kind.classes() as u32;
            let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes).collect();
            let y = Tensor::new(labels, &device)?;
            let x = synthetic_batch(kind, batch, &device)?;
            let batch_max = |x: &Tensor, y: &Tensor| -> Result<f32> {
                let g = tulip_penalties::input_gradient(&model, x, y, false)?.gradient;
                Ok(tulip_penalties::row_norms(&g, Norm::L2)?
                    .max(0)?
                    .to_scalar::<f32>()?)
            };
            batch_max(&x, &y)?; // warm-up
            let t = Instant::now();
            let mut gmax = 0f32;
            let mut done = 0;
            while done < total {
                let n = batch.min(total - done);
                gmax = gmax.max(batch_max(&x.narrow(0, 0, n)?, &y.narrow(0, 0, n)?)?);
                done += n;
            }
            let elapsed = t.elapsed().as_secs_f64();
            result["batch"] = json!(batch);
            result["images"] = json!(total);
            result["pass_s"] = json!(elapsed);
            result["median_s"] = json!(elapsed);
            result["images_per_s"] = json!(total as f64 / elapsed);
            result["max_grad_norm"] = json!(gmax);
        }
        Mode::NnAttack => nn_attack_case(args.data.as_deref(), &mut result)?,
        Mode::Attack(cfg) => attack_run_case(args, &cfg, &mut result)?,
    }
    result["peak_rss_mib"] = json!(peak_rss_mib());
    println!("RESULT {result}");
    Ok(())
}

fn tempdir(case: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tulip-bench-{}-{}",
        std::process::id(),
        case.replace(':', "-")
    ))
}

fn model(arch: Architecture, kind: DatasetKind, device: &Device) -> Result<Model> {
    let cfg = ModelConfig::new(arch, kind.classes(), kind.image_shape());
    Ok(Model::init(&cfg, 0, DType::F32, device)?)
}

fn synthetic_batch(kind: DatasetKind, n: usize, device: &Device) -> Result<Tensor> {
    let (c, h, w) = kind.image_shape();
    let data = synthetic(kind, n)?;
    let loader = tulip_data::Loader::test(&data.test, n, device)?;
    let b = loader.epoch(0).next().context("empty loader")??;
    debug_assert_eq!(b.images.dims(), [n, c, h, w]);
    Ok(b.images)
}

/// Images attacked together (`tulip attack`'s default; the PyTorch side uses it too).
const ATTACK_BATCH: usize = 100;

/// One attack over a run's first test images: one batch untimed, then one timed pass
/// over all of them, as `tulip attack` runs it.
fn attack_run_case(args: &CaseArgs, cfg: &AttackConfig, result: &mut Value) -> Result<()> {
    let dir = args
        .run
        .as_deref()
        .context("an attack case needs --run DIR")?;
    let images = usize::try_from(args.attack_images)?;
    let loaded = tulip_train::load_run(&tulip_train::RunSource {
        dir,
        checkpoint: None,
        data: args.data.as_deref(),
        device: args.device,
        test_limit: Some(images),
    })
    .with_context(|| format!("--run {}", dir.display()))?;
    let mut warm_up = loaded.test.clone();
    warm_up.truncate(ATTACK_BATCH.min(images));
    let attack = |split| {
        tulip_eval::attack_split(
            &loaded.model,
            split,
            cfg,
            ATTACK_BATCH,
            &loaded.device,
            |_| {},
        )
    };
    attack(&warm_up)?;
    let start = Instant::now();
    let outcomes = attack(&loaded.test)?;
    let seconds = start.elapsed().as_secs_f64();
    let failed = outcomes.iter().filter(|o| !o.is_misclassified()).count();
    result["run"] = json!(dir.display().to_string());
    result["images"] = json!(outcomes.len());
    result["failed"] = json!(failed);
    result["median_s"] = json!(seconds);
    result["images_per_s"] = json!(outcomes.len() as f64 / seconds);
    Ok(())
}

/// The nearest-different-neighbour attack over the real 10k × 60k Fashion-MNIST, beside
/// one f32 GEMM of the same size (the yardstick: the goal is within 1.5× of it).
fn nn_attack_case(data: Option<&Path>, result: &mut Value) -> Result<()> {
    let dir = tulip_data::locate(DatasetKind::FashionMnist, data)?;
    let ds = tulip_data::load(DatasetKind::FashionMnist, &dir)?;
    let t = Instant::now();
    let nn = tulip_eval::nearest_different_label(
        &ds.test,
        &ds.train,
        &tulip_eval::NnOptions::default(),
        &Device::Cpu,
        &mut |_, _| {},
    )?;
    let nn_s = t.elapsed().as_secs_f64();
    let stats = nn.stats()?;
    let (m, k, n) = (ds.test.len(), 784, ds.train.len());
    let a = Tensor::rand(0f32, 1f32, (m, k), &Device::Cpu)?;
    let b = Tensor::rand(0f32, 1f32, (k, n), &Device::Cpu)?;
    a.matmul(&b.narrow(1, 0, 1000)?)?; // warm-up
    let t = Instant::now();
    let c = a.matmul(&b)?;
    let gemm_s = t.elapsed().as_secs_f64();
    drop(c);
    result["median_s"] = json!(nn_s);
    result["images_per_s"] = json!(m as f64 / nn_s);
    result["gemm_s"] = json!(gemm_s);
    result["nn_over_gemm"] = json!(nn_s / gemm_s);
    result["mean_distance"] = json!(stats.mean);
    result["median_distance"] = json!(stats.median);
    result["stats"] = json!(BTreeMap::from([("m", m), ("k", k), ("n", n)]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_cases_take_the_reproductions_settings_and_refuse_unknown_attacks() {
        let Mode::Attack(cfg) = parse_case("run:pgd-linf").unwrap().2 else {
            panic!("run:pgd-linf is an attack case");
        };
        assert_eq!(
            (cfg.kind, cfg.norm, cfg.epsilon),
            (AttackKind::Pgd, Norm::Linf, Some(0.1))
        );
        let Mode::Attack(cfg) = parse_case("run:deepfool-l2").unwrap().2 else {
            panic!("run:deepfool-l2 is an attack case");
        };
        assert_eq!(
            (cfg.kind, cfg.norm, cfg.steps),
            (AttackKind::DeepFool, Norm::L2, 50)
        );
        let err = parse_case("run:boundary-l2").err().unwrap().to_string();
        assert!(
            err.contains("boundary-l2") && err.contains("deepfool-l2"),
            "{err}"
        );
        assert_eq!(unit("run:pgd-l2"), "s/pass");
    }

    #[test]
    fn the_results_command_line_names_the_cases_it_ran() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let flags = |argv: &[&str]| {
            let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
            case_flags(&cli.bench)
        };
        assert_eq!(flags(&["bench"]), "");
        assert_eq!(
            flags(&[
                "bench",
                "--cases",
                "run:pgd-l2",
                "--run",
                "r",
                "--attack-images",
                "100"
            ]),
            " --cases run:pgd-l2 --run r --attack-images 100"
        );
        assert_eq!(
            flags(&["bench", "--cases", "run:pgd-l2", "--run", "r"]),
            " --cases run:pgd-l2 --run r"
        );
    }

    #[test]
    fn the_cpu_is_named_with_its_family_and_model() {
        let info = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model_of(info), "AMD EPYC (family 25, model 17)");
        assert_eq!(cpu_model_of("model name\t: Some CPU\n"), "Some CPU");
        assert_eq!(cpu_model_of(""), "unknown CPU");
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    fn measured(seconds: f64, rss: f64) -> Measured {
        Measured {
            seconds,
            images_per_s: 128.0 / seconds,
            peak_rss_mib: rss,
            raw: json!({ "median_s": seconds }),
        }
    }

    /// Three rounds: the table gives the median seconds of each side, the median of the
    /// rounds' ratios (not the ratio of the medians), their range and the highest RSS.
    #[test]
    fn rounds_give_the_median_ratio_its_range_and_the_highest_rss() {
        let out = std::env::temp_dir().join(format!("tulip-bench-test-{}", std::process::id()));
        let args = BenchArgs {
            cases: "resnet22:plain".into(),
            steps: 5,
            rounds: 3,
            gradpass_images: GRADPASS_IMAGES,
            torch: Some("python".into()),
            torch_script: "script.py".into(),
            malloc: "retain".into(),
            out: out.clone(),
            data: None,
            isa: CpuIsa::Avx2,
            run: None,
            attack_images: 200,
            attack_script: "attack.py".into(),
        };
        let torch_isa = isa::TorchIsa {
            aten: "AVX2".into(),
            onednn: Some("Intel AVX2".into()),
            onednn_convolution: Some("jit:avx2".into()),
            mkl: None,
        };
        // Ratios 0.5, 0.9, 0.8: median 0.8 (the medians' ratio would be 0.7 / 1.0 = 0.7).
        let row = Row {
            case: "resnet22:plain".into(),
            ours: vec![
                measured(0.5, 600.0),
                measured(0.9, 620.0),
                measured(0.7, 610.0),
            ],
            torch: vec![
                measured(1.0, 1200.0),
                measured(1.0, 1250.0),
                measured(0.875, 1190.0),
            ],
        };
        write_results(&args, &[row], Some(&torch_isa)).unwrap();
        let md = std::fs::read_to_string(out.join("RESULTS.md")).unwrap();
        let line = md
            .lines()
            .find(|l| l.starts_with("| resnet22:plain"))
            .unwrap();
        assert_eq!(
            line,
            "| resnet22:plain | s/step | 0.700 | 1.000 | 0.80 | 0.50–0.90 | not met | 620 | 1250 |"
        );
        assert!(
            md.contains("--isa avx2") && md.contains("--rounds 3"),
            "{md}"
        );
        // The table names the CPU, our instruction set and PyTorch's pins as read back.
        assert!(md.contains(&cpu_model()), "{md}");
        assert!(
            md.contains("instruction set avx2 (chosen with --isa)"),
            "{md}"
        );
        assert!(md.contains("`ONEDNN_MAX_CPU_ISA=AVX2`"), "{md}");
        assert!(md.contains("goal ≤ 0.7"), "{md}");
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json[0]["ratios"].as_array().unwrap().len(), 3);
        assert!((json[0]["ratio"].as_f64().unwrap() - 0.8).abs() < 1e-12);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

//! `cargo xtask gpu-check`: the acceptance check of a GPU build, one prepared script.
//!
//! 1. **Training agrees with the CPU.** The paper's best setting (tanh output, weight
//!    decay, exact Lipschitz penalty, J2 perturbation) trains for `--steps` steps on the
//!    device and on the CPU from the same seed, on the same Fashion-MNIST batches. The first
//!    step's objective must agree to [`FIRST_STEP_TOLERANCE`] (same weights, same batch:
//!    only the order of floating-point sums differs), and the mean objective of the last
//!    fifth of the steps to [`LAST_STEPS_TOLERANCE`] (rounding differences grow along a
//!    trajectory; two runs that follow the same optimisation stay close on average).
//! 2. **The exact penalty's gradient is right on the device.** In f64, the gradient of the
//!    paper's Lipschitz penalty with respect to parameter entries of a ResNet8, by double
//!    backpropagation, against central differences of the penalty
//!    ([`GRADIENT_TOLERANCE`]).
//! 3. **Step times** of ResNet22 on CIFAR-shaped batches of 128 (plain, lip, lip+J2, PGD),
//!    each case in its own process as in `cargo xtask bench`; with `--torch`, PyTorch's
//!    time for the same case on the same device beside it.
//! 4. **One JSON** with every figure (`--out`, `bench/gpu-check.json` by default).
//!
//! `--device cpu` runs the whole script on the CPU with the ops on their portable
//! implementations (the GPU's code path, [`tulip_models::portable_ops`]) against the CPU
//! kernels: the test suite runs it so, and the script stays ready for a GPU.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ModuleT;
use serde_json::{json, Value};
use tulip_models::{Architecture, Classifier, Model, ModelConfig, ParamKind};
use tulip_penalties::{LipschitzPenalty, Penalty, PenaltyInputs};
use tulip_train::{DeviceChoice, TrainConfig, Trainer};

use crate::bench::{self, OurSide, TorchSide};

/// Relative difference allowed between the device's and the CPU's first-step objective.
pub const FIRST_STEP_TOLERANCE: f64 = 1e-4;
/// Relative difference allowed between the two runs' mean objective over their last
/// fifth of steps.
pub const LAST_STEPS_TOLERANCE: f64 = 0.05;
/// Relative difference allowed between a penalty derivative by autodiff and by central
/// differences (in f64), beyond the difference quotient's rounding noise.
pub const GRADIENT_TOLERANCE: f64 = 1e-5;

/// The training modes timed, as `cargo xtask bench` modes.
const TIMED_MODES: [&str; 4] = ["plain", "lip", "lipj2", "pgd"];

/// Options of `cargo xtask gpu-check`.
#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    /// The device to check: `cuda`, `cuda:N`, or `cpu` (the CPU through the ops' portable
    /// implementations, the GPU's code path, against the CPU kernels: a check of the
    /// script itself).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceChoice,
    /// Training steps of the device-against-CPU comparison.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Images per training step of the comparison.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// The model of the training comparison (on Fashion-MNIST).
    #[arg(long, value_enum, default_value = "resnet22")]
    pub model: Architecture,
    /// Timed steps per training mode (0: no timing).
    #[arg(long, default_value_t = 10)]
    pub timing_steps: usize,
    /// The `cargo xtask bench` model of the timed cases.
    #[arg(long, default_value = "resnet22")]
    pub timing_model: String,
    /// Also time PyTorch on the same device with this Python (a venv with a CUDA build of
    /// torch; see `bench/torch/README.md`).
    #[arg(long, value_name = "PYTHON")]
    pub torch: Option<PathBuf>,
    /// The PyTorch benchmark script.
    #[arg(long, default_value = "bench/torch/torch_step_bench.py")]
    pub torch_script: PathBuf,
    /// Where to write the JSON.
    #[arg(long, default_value = "bench/gpu-check.json")]
    pub out: PathBuf,
    /// Fashion-MNIST directory (default: the usual search; where none is found, the
    /// training comparison uses synthetic images).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Runs `cargo xtask gpu-check`.
pub fn run(args: &GpuCheckArgs) -> Result<()> {
    if args.steps < 5 {
        bail!(
            "--steps {}: at least 5 are needed to compare the last fifth",
            args.steps
        );
    }
    // The exact penalty needs gradients of gradients, set before the first backward pass.
    tulip_penalties::enable_second_order_gradients();
    let device = args
        .device
        .open()
        .with_context(|| format!("--device {}", args.device))?;

    eprintln!(
        "gpu-check: training {} steps on {} and on the CPU…",
        args.steps, args.device
    );
    let clock = Instant::now();
    let mut training = compare_training(args)?;
    training["seconds"] = json!(clock.elapsed().as_secs_f64());
    eprintln!(
        "gpu-check: the exact penalty's gradient on {}…",
        args.device
    );
    let clock = Instant::now();
    let mut gradient = on_device(args.device, || gradient_check(&device))?;
    gradient["seconds"] = json!(clock.elapsed().as_secs_f64());
    let timing = time_steps(args)?;

    let passed = training["passed"] == json!(true) && gradient["passed"] == json!(true);
    let report = json!({
        "device": args.device.to_string(),
        "path": match args.device {
            DeviceChoice::Cpu => "portable ops on the CPU",
            DeviceChoice::Cuda(_) => "CUDA",
        },
        "cpu": bench::cpu_model(),
        "date": bench::chrono_like_date(),
        "training": training,
        "gradient_check": gradient,
        "timing": timing,
        "passed": passed,
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    tulip_models::checkpoint::write_atomic(
        &args.out,
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )
    .with_context(|| format!("could not write {}", args.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("gpu-check: wrote {}", args.out.display());
    if !passed {
        bail!(
            "gpu-check failed: see training.passed and gradient_check.passed in {}",
            args.out.display()
        );
    }
    Ok(())
}

/// Runs `f` on `device`'s code path: on the CPU, through the ops' portable
/// implementations (what a GPU runs) rather than the CPU kernels.
fn on_device<R>(device: DeviceChoice, f: impl FnOnce() -> R) -> R {
    match device {
        DeviceChoice::Cpu => tulip_models::portable_ops(f),
        DeviceChoice::Cuda(_) => f(),
    }
}

/// The best setting of the paper (tanh output, weight decay, exact penalty, J2), on the
/// CPU.
fn best_setting(args: &GpuCheckArgs) -> TrainConfig {
    let kind = tulip_data::DatasetKind::FashionMnist;
    let model = ModelConfig {
        tanh: true,
        ..ModelConfig::new(args.model, kind.classes(), kind.image_shape())
    };
    TrainConfig {
        data_dir: args.data.clone(),
        download: false,
        objective: bench::best_objective(),
        ..TrainConfig::new(kind, model)
    }
}

/// Check 1: the objective of every step, on the device and on the CPU.
fn compare_training(args: &GpuCheckArgs) -> Result<Value> {
    // Fifty distinct batches, cycled: enough variety, little loading.
    let batches = args.steps.min(50);
    let config = TrainConfig {
        limit_train: batches * args.batch,
        limit_test: args.batch,
        batch_size: args.batch,
        ..best_setting(args)
    };
    // A GPU machine may lack the dataset and the network to fetch it: without `--data`,
    // synthetic images (the benchmark's) serve as well for comparing two devices.
    let (data, source) = match tulip_train::load_dataset(&config) {
        Ok(data) => (data, "fashion-mnist"),
        Err(e) if args.data.is_none() => {
            eprintln!("gpu-check: {e}; training on synthetic images instead");
            let kind = config.dataset;
            (bench::synthetic(kind, batches * args.batch)?, "synthetic")
        }
        Err(e) => return Err(e.into()),
    };
    let objectives = |device: DeviceChoice| -> Result<Vec<f64>> {
        let config = TrainConfig {
            device,
            ..config.clone()
        };
        let dev = device.open()?;
        let tmp = tempfile::tempdir()?;
        let mut trainer = Trainer::new(config, data.clone(), tmp.path())?;
        let loader = tulip_data::Loader::test(&data.train, args.batch, &dev)?;
        let batches = loader.epoch(0).collect::<Result<Vec<_>, _>>()?;
        (0..args.steps)
            .map(|s| {
                let b = &batches[s % batches.len()];
                Ok(trainer.train_step(&b.images, &b.labels)?.objective)
            })
            .collect()
    };
    let clock = Instant::now();
    let cpu = objectives(DeviceChoice::Cpu)?;
    let cpu_seconds = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let on = on_device(args.device, || objectives(args.device))?;
    let device_seconds = clock.elapsed().as_secs_f64();

    let relative = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE);
    let tail = args.steps / 5;
    let mean = |v: &[f64]| v[v.len() - tail..].iter().sum::<f64>() / tail as f64;
    let first = relative(on[0], cpu[0]);
    let last = relative(mean(&on), mean(&cpu));
    let finite = on.iter().chain(&cpu).all(|v| v.is_finite());
    Ok(json!({
        "setting": "tanh, decay 5e-4, lip 0.1 (exact, L2, max), J2 0.01",
        "model": args.model.name(),
        "data": source,
        "steps": args.steps,
        "batch": args.batch,
        "seconds_device": device_seconds,
        "seconds_cpu": cpu_seconds,
        "objective_device": on,
        "objective_cpu": cpu,
        "first_step_relative_difference": first,
        "first_step_tolerance": FIRST_STEP_TOLERANCE,
        "last_fifth_mean_relative_difference": last,
        "last_fifth_tolerance": LAST_STEPS_TOLERANCE,
        "passed": finite && first <= FIRST_STEP_TOLERANCE && last <= LAST_STEPS_TOLERANCE,
    }))
}

/// Check 2: ∂P/∂θ of the exact Lipschitz penalty by autodiff against central differences,
/// in f64 on `device`, for entries spread over a ResNet8's parameters.
fn gradient_check(device: &Device) -> Result<Value> {
    let kind = tulip_data::DatasetKind::FashionMnist;
    let cfg = ModelConfig::new(Architecture::ResNet8, kind.classes(), kind.image_shape());
    let model = Model::init(&cfg, 3, DType::F64, device)?;
    let (c, h, w) = kind.image_shape();
    let x = Tensor::rand(0f64, 1f64, (4, c, h, w), &Device::Cpu)?.to_device(device)?;
    let y = Tensor::new(&[0u32, 3, 5, 9], device)?;
    let penalty = LipschitzPenalty::paper()?;
    let value = || -> Result<Tensor> {
        let xv = Var::from_tensor(&x)?;
        let logits = model.forward_t(xv.as_tensor(), true)?;
        let loss = tulip_models::loss::cross_entropy(&logits, &y)?;
        Ok(penalty.value(&PenaltyInputs {
            model: &model,
            x: xv.as_tensor(),
            labels: &y,
            logits: &logits,
            loss: &loss,
        })?)
    };
    let p = value()?;
    let p0 = p.to_scalar::<f64>()?;
    if p0.is_nan() {
        bail!("the penalty is NaN on {device:?}");
    }
    let grads = p.backward()?;
    let trainable: Vec<_> = model
        .params()
        .all()
        .iter()
        .filter(|q| q.kind == ParamKind::Trainable)
        .collect();
    // Every third parameter tensor, first and middle entries.
    let mut probes = Vec::new();
    let mut passed = p0 > 0.0;
    for param in trainable.iter().step_by(3) {
        let original = param.var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let shape = param.var.shape().clone();
        let gradient = match grads.get(param.var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => vec![0.0; original.len()],
        };
        for idx in [0, original.len() / 2] {
            let auto = gradient[idx];
            let at = |delta: f64| -> Result<f64> {
                let mut v = original.clone();
                v[idx] += delta;
                param
                    .var
                    .set(&Tensor::from_vec(v, shape.clone(), device)?)?;
                Ok(value()?.to_scalar::<f64>()?)
            };
            let difference = smooth_central_difference(p0, &at)?;
            at(0.0)?;
            let ok = difference.is_some_and(|(central, noise)| {
                (auto - central).abs() <= GRADIENT_TOLERANCE * auto.abs().max(central.abs()) + noise
            });
            passed &= ok;
            probes.push(json!({
                "parameter": param.name,
                "index": idx,
                "autodiff": auto,
                "central_difference": difference.map(|(c, _)| c),
                "agrees": ok,
            }));
        }
    }
    Ok(json!({
        "model": "resnet8",
        "dtype": "f64",
        "penalty": "exact Lipschitz (L2, max over the batch)",
        "penalty_value": p0,
        "difference_steps": DIFFERENCE_STEPS,
        "tolerance": GRADIENT_TOLERANCE,
        "probes": probes,
        "passed": passed,
    }))
}

/// Steps of the central differences, tried in turn (see [`smooth_central_difference`]).
const DIFFERENCE_STEPS: [f64; 3] = [1e-6, 1e-7, 1e-8];

/// The central difference `(f(h) − f(−h)) / 2h` of a penalty whose value at 0 is `f0`, with
/// its rounding noise, at the first step of [`DIFFERENCE_STEPS`] where `f` is smooth.
/// The penalty is a norm of the input gradient of a ReLU network, which jumps wherever a
/// pre-activation changes sign; with tens of thousands of activations a step of 10⁻⁵ often
/// crosses one, and the quotient then measures the jump, not the derivative. A jump shows
/// as one-sided quotients that disagree beyond their noise; the step is then made smaller.
/// `None` if every step crossed one.
fn smooth_central_difference(
    f0: f64,
    f: &dyn Fn(f64) -> Result<f64>,
) -> Result<Option<(f64, f64)>> {
    for h in DIFFERENCE_STEPS {
        let (up, down) = (f(h)?, f(-h)?);
        // A few ulps of each value, over h.
        let noise = 64.0 * f64::EPSILON * f0.abs().max(1.0) / h;
        let (forward, backward) = ((up - f0) / h, (f0 - down) / h);
        let smooth =
            (forward - backward).abs() <= 1e-3 * forward.abs().max(backward.abs()) + 4.0 * noise;
        if smooth {
            return Ok(Some(((up - down) / (2.0 * h), noise)));
        }
    }
    Ok(None)
}

/// Check 3: step times of the timed modes, ours and (with `--torch`) PyTorch's.
fn time_steps(args: &GpuCheckArgs) -> Result<Value> {
    if args.timing_steps == 0 {
        return Ok(json!([]));
    }
    let ours = OurSide {
        data: args.data.as_deref(),
        malloc: "retain",
        device: args.device,
        isa: tulip_models::CpuIsa::Native,
        run: None,
        attack_images: 0,
    };
    let torch = args.torch.as_deref().map(|python| TorchSide {
        python,
        script: &args.torch_script,
        malloc: "retain",
        device: args.device,
        isa: tulip_models::CpuIsa::Native,
        attack: None,
    });
    let mut rows = Vec::new();
    for mode in TIMED_MODES {
        let case = format!("{}:{mode}", args.timing_model);
        eprintln!("gpu-check: timing {case} on {}…", args.device);
        let ours = ours.run(&case, args.timing_steps, 1000)?;
        let theirs = match &torch {
            Some(side) => side.run(&case, args.timing_steps, 1000)?,
            None => None,
        };
        let pytorch = theirs.as_ref().map(|m| m.seconds);
        rows.push(json!({
            "case": case,
            "unit": "s/step (batch 128)",
            "tulip_seconds": ours.seconds,
            "pytorch_seconds": pytorch,
            "ratio": pytorch.map(|t| ours.seconds / t),
        }));
    }
    Ok(Value::Array(rows))
}

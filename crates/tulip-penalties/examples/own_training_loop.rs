//! The Lipschitz penalty and J2 adversarial training in your own Candle training loop.
//!
//! A small CNN written with candle-nn alone (a `VarMap`, `candle_nn::conv2d`, an
//! optimiser from `candle_nn::optim`) is trained twice on Fashion-MNIST, from the same
//! initial weights and the same batches: once as it is, once with the lines marked
//! `+ Tulip` switched on. Both runs' accuracy and Lipschitz estimate (the largest
//! per-image input-gradient norm of the loss, `max_i ‖∇ₓℓ_i‖₂`) are printed; the program
//! fails if the penalty did not lower the estimate.
//!
//! ```text
//! cargo run --release -p tulip-penalties --example own_training_loop [STEPS]
//! ```
//! (Fashion-MNIST from `$TULIP_DATA`, `./data/fashion-mnist` or the Debian package
//! `dataset-fashion-mnist`; `cargo xtask download` fetches it.)

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, ModuleT, Optimizer, VarBuilder, VarMap};
use tulip_adversarial::{GradientAscent, Perturbation};
use tulip_data::{load, locate, Augmentation, DatasetKind, Loader, Split};
use tulip_penalties::{LipschitzPenalty, Penalty, PenaltyInputs};

/// The user's own model: nothing in it comes from Tulip.
struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

impl Cnn {
    fn new(vb: VarBuilder<'_>) -> Result<Self> {
        let strided = Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: candle_nn::conv2d(1, 16, 3, strided, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(16, 32, 3, strided, vb.pp("conv2"))?,
            fc: candle_nn::linear(32 * 7 * 7, 10, vb.pp("fc"))?,
        })
    }
}

impl Module for Cnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(x)?.relu()?;
        let h = self.conv2.forward(&h)?.relu()?;
        self.fc.forward(&h.flatten_from(1)?)
    }
}

/// Weight of the Lipschitz penalty (fifty times the paper's, for a difference a few hundred
/// steps can show) and step of J2 (the paper's).
const LIP_WEIGHT: f64 = 5.0;
const J2_EPSILON: f64 = 0.01;

/// Trains the CNN from the weights `init` for `steps` batches of 64; with `tulip`, adds J2
/// and the penalty.
fn train(init: &VarMap, train_split: &Split, steps: usize, tulip: bool) -> Result<Cnn> {
    let device = Device::Cpu;
    let mut vars = VarMap::new();
    let model = Cnn::new(VarBuilder::from_varmap(&vars, DType::F32, &device))?;
    let init = init
        .data()
        .lock()
        .expect("no other thread holds the weights");
    vars.set(init.iter().map(|(name, var)| (name, var.as_tensor())))?;
    let mut optimiser = candle_nn::SGD::new(vars.all_vars(), 0.05)?;
    let lipschitz = LipschitzPenalty::paper()?; // + Tulip
    let j2 = GradientAscent::new(J2_EPSILON)?; // + Tulip
    let loader = Loader::train(train_split, 64, Augmentation::none(), 0, &device)?;
    for batch in loader.epoch(0).take(steps) {
        let (x, labels) = {
            let b = batch?;
            (b.images, b.labels)
        };
        let x = if tulip {
            j2.perturb(&model, &x, &labels)?
        } else {
            x
        }; // + Tulip
        let x = Var::from_tensor(&x)?; // + Tulip: the penalty differentiates w.r.t. x
        let logits = model.forward_t(x.as_tensor(), true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let objective = if tulip {
            let inputs = PenaltyInputs {
                model: &model,
                x: x.as_tensor(),
                labels: &labels,
                logits: &logits,
                loss: &loss,
            }; // + Tulip
            (&loss + (lipschitz.value(&inputs)? * LIP_WEIGHT)?)? // + Tulip
        } else {
            loss
        };
        optimiser.backward_step(&objective)?;
    }
    Ok(model)
}

/// Test accuracy (%) and Lipschitz estimate `max_i ‖∇ₓℓ_i‖₂` on the first 1,000 test images.
fn measure(model: &dyn ModuleT, test: &Split) -> Result<(f64, f64)> {
    let (mut correct, mut lipschitz, mut seen) = (0usize, 0f64, 0usize);
    for batch in Loader::test(test, 250, &Device::Cpu)?.epoch(0).take(4) {
        let batch = batch?;
        let g = tulip_penalties::input_gradient(model, &batch.images, &batch.labels, false)?;
        let predicted = g.logits.argmax(D::Minus1)?;
        correct += predicted
            .eq(&batch.labels)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()? as usize;
        let norms = tulip_penalties::row_norms(&g.gradient, tulip_penalties::Norm::L2)?;
        lipschitz = lipschitz.max(norms.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        seen += batch.labels.dim(0)?;
    }
    Ok((100.0 * correct as f64 / seen as f64, lipschitz))
}

fn main() -> Result<()> {
    // Before any tensor work: Candle differentiates a gradient only in this mode.
    tulip_penalties::enable_second_order_gradients(); // + Tulip
    let steps = std::env::args().nth(1).map_or(Ok(200), |s| s.parse())?;
    let kind = DatasetKind::FashionMnist;
    let data = load(kind, &locate(kind, None)?)?;
    println!("{steps} steps of 64 Fashion-MNIST images, then 1,000 test images:");
    // One random initialisation for both runs (Candle's CPU generator takes no seed).
    let init = VarMap::new();
    Cnn::new(VarBuilder::from_varmap(&init, DType::F32, &Device::Cpu))?;
    let mut estimates = Vec::new();
    for tulip in [false, true] {
        let model = train(&init, &data.train, steps, tulip)?;
        let (accuracy, lipschitz) = measure(&model, &data.test)?;
        let name = if tulip {
            "+ J2 + Lipschitz penalty"
        } else {
            "plain"
        };
        println!("  {name:<25} accuracy {accuracy:5.1} %   Lipschitz estimate {lipschitz:.3}");
        estimates.push(lipschitz);
    }
    ensure!(
        estimates[1] < estimates[0],
        "the penalty did not lower the Lipschitz estimate ({:.3} ≥ {:.3})",
        estimates[1],
        estimates[0]
    );
    Ok(())
}

#[test]
fn the_penalty_lowers_the_lipschitz_estimate() -> Result<()> {
    main()
}

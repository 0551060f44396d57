//! DeepFool distances and PGD robust accuracy of your own Candle model.
//!
//! A small CNN written with candle-nn alone is trained for a few hundred steps on
//! Fashion-MNIST, then attacked on test images: DeepFool (L2) finds the smallest
//! perturbation that changes each prediction; PGD at a fixed L∞ radius ε = 0.1 gives the
//! robust accuracy. The attacks take the model as a `candle_nn::ModuleT`.
//!
//! ```text
//! cargo run --release -p tulip-adversarial --example attack_own_model [IMAGES]
//! ```

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, Optimizer, VarBuilder, VarMap};
use tulip_adversarial::{run_attack, AttackConfig, AttackKind, AttackStatus, Norm};
use tulip_data::{load, locate, Augmentation, DatasetKind, Loader};

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

fn main() -> Result<()> {
    let images = std::env::args().nth(1).map_or(Ok(200), |s| s.parse())?;
    let device = Device::Cpu;
    let kind = DatasetKind::FashionMnist;
    let data = load(kind, &locate(kind, None)?)?;

    // The user's training, plain candle-nn.
    let vars = VarMap::new();
    let model = Cnn::new(VarBuilder::from_varmap(&vars, DType::F32, &device))?;
    let mut optimiser = candle_nn::SGD::new(vars.all_vars(), 0.05)?;
    let loader = Loader::train(&data.train, 64, Augmentation::none(), 0, &device)?;
    for batch in loader.epoch(0).take(300) {
        let batch = batch?;
        let logits = model.forward(&batch.images)?;
        optimiser.backward_step(&candle_nn::loss::cross_entropy(&logits, &batch.labels)?)?;
    }

    // The attacks: any ModuleT, images in [0, 1], integer labels.
    let test = Loader::test(&data.test, images, &device)?.epoch(0).next();
    let batch = test.expect("the test split is not empty")?;
    let deepfool = AttackConfig::new(AttackKind::DeepFool, Norm::L2);
    let outcomes = run_attack(&model, &batch.images, &batch.labels, &deepfool)?;
    let count = |status| outcomes.iter().filter(|o| o.status == status).count();
    let (correct, failed) = (
        images - count(AttackStatus::AlreadyMisclassified),
        count(AttackStatus::Failed),
    );
    let mut distances: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.status == AttackStatus::Found)
        .map(|o| o.l2)
        .collect();
    distances.sort_by(f64::total_cmp);
    ensure!(!distances.is_empty(), "DeepFool fooled no image");
    println!(
        "{images} test images, {correct} classified correctly\n  DeepFool L2: median distance {:.3} over {} fooled images ({failed} failures)",
        distances[distances.len() / 2],
        distances.len()
    );

    let pgd = AttackConfig::pgd(Norm::Linf, 0.1);
    let outcomes = run_attack(&model, &batch.images, &batch.labels, &pgd)?;
    let robust = outcomes
        .iter()
        .filter(|o| o.status == AttackStatus::Failed)
        .count();
    println!(
        "  PGD L∞ ε = 0.1: robust accuracy {:.1} % (clean {:.1} %)",
        100.0 * robust as f64 / images as f64,
        100.0 * correct as f64 / images as f64
    );
    ensure!(robust <= correct, "PGD left more images correct than were");
    Ok(())
}

#[test]
fn deepfool_and_pgd_attack_a_candle_nn_model() -> Result<()> {
    main()
}

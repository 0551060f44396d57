//! The summary statistics of your own Candle model.
//!
//! A small CNN written with candle-nn alone is trained for a few hundred steps on
//! Fashion-MNIST; `tulip_eval::summary` then reports its test error, loss, Lipschitz
//! estimate, Jacobian norm and margins. Given the model's `VarMap` it adds the weight
//! norm; given the model with its ReLUs replaced by the identity (an affine map), the
//! weight-product norm and the certified lower bound on the L2 distance to a change of
//! prediction.
//!
//! ```text
//! cargo run --release -p tulip-eval --example summarise_own_model [IMAGES]
//! ```

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, Optimizer, VarBuilder, VarMap};
use tulip_data::{load, locate, Augmentation, DatasetKind, Loader};
use tulip_eval::{summary, SummaryModel, SummaryOptions};

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

    /// The same network with every ReLU the identity: an affine map of the input.
    fn forward_linearised(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv2.forward(&self.conv1.forward(x)?)?;
        self.fc.forward(&h.flatten_from(1)?)
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
    let images = std::env::args().nth(1).map_or(Ok(1000), |s| s.parse())?;
    let device = Device::Cpu;
    let kind = DatasetKind::FashionMnist;
    let mut data = load(kind, &locate(kind, None)?)?;

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

    // The summary: the model as a ModuleT, plus (optional) its tensors and linearised form.
    let linearised = |x: &Tensor| model.forward_linearised(x);
    let subject = SummaryModel::new(&model, DType::F32, &device)
        .with_varmap(&vars)
        .with_linearised(&linearised);
    data.test.truncate(images);
    let options = SummaryOptions {
        jacobian_images: Some(100),
        ..SummaryOptions::default()
    };
    let report = summary(&subject, &data.test, &options, &mut |_, _| {})?;
    print!("{}", report.summary.to_table());
    ensure!(
        report.summary.weight_product_norm.is_some() && report.summary.weight_norm.is_some(),
        "the summary left out the norms it was given the means to compute"
    );
    Ok(())
}

#[test]
fn the_summary_of_a_candle_nn_model() -> Result<()> {
    main()
}

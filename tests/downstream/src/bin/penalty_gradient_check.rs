//! The exact Lipschitz penalty's parameter gradient, by double backpropagation through
//! stock candle-core, against central differences of the penalty's value.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Conv2dConfig, Module, ModuleT, VarBuilder, VarMap};
use tulip_penalties::{LipschitzPenalty, Penalty, PenaltyInputs};

/// A candle-nn model in f64: convolution, tanh (smooth, so differences converge), linear.
struct Small {
    conv: candle_nn::Conv2d,
    fc: candle_nn::Linear,
}

impl Module for Small {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv.forward(x)?.tanh()?;
        self.fc.forward(&h.flatten_from(1)?)
    }
}

fn penalty(model: &Small, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let x = Var::from_tensor(x)?;
    let logits = model.forward_t(x.as_tensor(), true)?;
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    Ok(LipschitzPenalty::paper()?.value(&PenaltyInputs {
        model,
        x: x.as_tensor(),
        labels,
        logits: &logits,
        loss: &loss,
    })?)
}

fn main() -> Result<()> {
    tulip_penalties::enable_second_order_gradients();
    let device = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &device);
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let model = Small {
        conv: candle_nn::conv2d(1, 3, 3, cfg, vb.pp("conv"))?,
        fc: candle_nn::linear(3 * 5 * 5, 4, vb.pp("fc"))?,
    };
    let x = Tensor::rand(0f64, 1., (3, 1, 5, 5), &device)?;
    let labels = Tensor::new(&[0u32, 3, 1], &device)?;

    let grads = penalty(&model, &x, &labels)?.backward()?;
    let mut checked = 0;
    let mut names: Vec<String> = vars.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    for name in names {
        let var = vars.data().lock().unwrap()[&name].clone();
        let analytic: Vec<f64> = grads.get(&var).expect("every parameter has a gradient").flatten_all()?.to_vec1()?;
        let theta: Vec<f64> = var.flatten_all()?.to_vec1()?;
        for i in (0..theta.len()).step_by(theta.len().div_ceil(5)) {
            let h = 1e-5;
            let at = |d: f64| -> Result<f64> {
                let mut v = theta.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &device)?)?;
                Ok(penalty(&model, &x, &labels)?.to_scalar::<f64>()?)
            };
            let numeric = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(theta.clone(), var.shape(), &device)?)?;
            let tolerance = 1e-6 + 1e-4 * numeric.abs().max(analytic[i].abs());
            ensure!(
                (numeric - analytic[i]).abs() <= tolerance,
                "{name}[{i}]: double backpropagation {} against central difference {numeric}",
                analytic[i]
            );
            checked += 1;
        }
    }
    println!("exact Lipschitz penalty: {checked} parameter-gradient entries agree with central differences");
    Ok(())
}

//! Cross-entropy written with one-hot products only, so that it can be differentiated
//! any number of times (Candle's `gather` backward is not itself differentiable, and
//! the Lipschitz penalty differentiates the gradient of this loss).

use candle_core::{DType, Result, Tensor, D};

/// One-hot encoding `[B, classes]` of integer labels `[B]`, in the dtype of `like`.
///
/// # Errors
/// Fails if a label is out of range or the tensors are on different devices.
pub fn one_hot(labels: &Tensor, classes: usize, like: &Tensor) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    let b = labels.dim(0)?;
    let range = Tensor::arange(0u32, classes as u32, labels.device())?.reshape((1, classes))?;
    labels
        .reshape((b, 1))?
        .broadcast_eq(&range)?
        .to_dtype(like.dtype())
}

/// Per-example cross-entropy `ℓ_i = −log softmax(z_i)[y_i]`, shape `[B]`.
///
/// # Errors
/// Fails on mismatched shapes.
pub fn cross_entropy_per_example(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let classes = logits.dim(D::Minus1)?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (log_p * one_hot(labels, classes, logits)?)?
        .sum(D::Minus1)?
        .neg()
}

/// Batch-mean cross-entropy `L = (1/B) Σ ℓ_i` (a scalar tensor).
///
/// # Errors
/// Fails on mismatched shapes.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    cross_entropy_per_example(logits, labels)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_closed_form() {
        let z = Tensor::new(&[[1.0f64, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[2u32, 1], &Device::Cpu).unwrap();
        let l: Vec<f64> = cross_entropy_per_example(&z, &y)
            .unwrap()
            .to_vec1()
            .unwrap();
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((l[0] - (lse - 3.0)).abs() < 1e-12);
        assert!((l[1] - 3f64.ln()).abs() < 1e-12);
        let m: f64 = cross_entropy(&z, &y).unwrap().to_scalar().unwrap();
        assert!((m - (l[0] + l[1]) / 2.0).abs() < 1e-12);
    }
}

//! Clean loss and error of a model on a split (evaluation mode, no augmentation).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::ModuleT;
use tulip_data::{Loader, Split};
use tulip_models::loss;

use crate::Result;

/// Mean cross-entropy and error of a model on a data split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean per-example cross-entropy.
    pub loss: f64,
    /// Misclassified fraction, in percent.
    pub error: f64,
}

/// Number of correct predictions in a batch.
///
/// # Errors
/// A tensor operation fails.
pub fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let hits = pred
        .eq(&labels.to_dtype(DType::U32)?)?
        .to_dtype(DType::U32)?
        .sum_all()?;
    Ok(hits.to_scalar::<u32>()? as usize)
}

/// Evaluates `model` in evaluation mode on every example of `split`.
///
/// # Errors
/// A tensor operation fails.
pub fn evaluate(
    model: &dyn ModuleT,
    split: &Split,
    batch_size: usize,
    device: &Device,
) -> Result<Evaluation> {
    let loader = Loader::test(split, batch_size.min(split.len()).max(1), device)?;
    let (mut loss_sum, mut correct, mut n) = (0.0, 0usize, 0usize);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = tulip_models::predict(model, &batch.images)?;
        let per_example = loss::cross_entropy_per_example(&logits, &batch.labels)?;
        loss_sum += per_example
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        correct += count_correct(&logits, &batch.labels)?;
        n += batch.labels.dim(0)?;
        tulip_models::failpoint::hit("evaluate");
    }
    let n = n.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        error: 100.0 * (1.0 - correct as f64 / n),
    })
}

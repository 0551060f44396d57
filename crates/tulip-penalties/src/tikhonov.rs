//! The Tikhonov (squared parameter norm) penalty.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tulip_models::{Param, Params};

use crate::{Penalty, PenaltyInputs, Result};

/// Which trainable tensors the Tikhonov penalty sums over. Batch-norm running statistics
/// (buffers) are never included.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[non_exhaustive]
#[serde(rename_all = "kebab-case")]
pub enum TikhonovScope {
    /// Every trainable parameter: weights, biases, batch-norm scales and shifts, the tanh
    /// scale `t`. This is what the reference's code actually penalises (its stated intent
    /// was to skip biases), so `--decay 5e-4` means what it meant there.
    #[default]
    AllTrainable,
    /// Only convolution and linear weights ([`Param::is_weight_matrix`]): the reference's
    /// stated intent.
    WeightsOnly,
}

impl TikhonovScope {
    /// Whether `p` is penalised under this scope.
    pub fn includes(self, p: &Param) -> bool {
        match self {
            TikhonovScope::AllTrainable => p.kind == tulip_models::ParamKind::Trainable,
            TikhonovScope::WeightsOnly => p.is_weight_matrix(),
        }
    }
}

/// `Σ ‖θ‖²` (no ½) over the parameters in its [`TikhonovScope`] (docs/method.md §1.3). As
/// a term of the objective with weight `decay` it equals SGD weight decay `2·decay`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TikhonovPenalty {
    scope: TikhonovScope,
}

impl TikhonovPenalty {
    /// A penalty over `scope`.
    pub fn new(scope: TikhonovScope) -> Self {
        Self { scope }
    }

    /// The scope.
    pub fn scope(&self) -> TikhonovScope {
        self.scope
    }

    /// `Σ ‖θ‖²` over the tensors of `params` in scope, a scalar tensor differentiable with
    /// respect to them (0 when there are none).
    ///
    /// # Errors
    /// Fails if the tensors are on different devices or of different dtypes.
    pub fn sum_of_squares(&self, params: &Params) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for p in params.all().iter().filter(|p| self.scope.includes(p)) {
            let s = p.var.as_tensor().sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => {
                let (dtype, device) = params
                    .all()
                    .first()
                    .map(|p| (p.var.dtype(), p.var.device().clone()))
                    .unwrap_or((DType::F32, Device::Cpu));
                Ok(Tensor::zeros((), dtype, &device)?)
            }
        }
    }
}

impl Penalty for TikhonovPenalty {
    fn name(&self) -> &'static str {
        "tikhonov"
    }

    fn value(&self, inputs: &PenaltyInputs<'_>) -> Result<Tensor> {
        self.sum_of_squares(inputs.model.params())
    }
}

//! The Tikhonov (squared parameter norm) penalty.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use tulip_models::{Param, Params};

use crate::{Penalty, PenaltyError, PenaltyInputs, Result};

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

/// `Σ ‖θ‖²` (no ½) over a fixed list of parameters (docs/method.md §1.3). As a term of
/// the objective with weight `decay` it equals SGD weight decay `2·decay`.
///
/// The list is fixed when the penalty is built, and summed in that order:
/// [`TikhonovPenalty::new`] takes any variables, [`TikhonovPenalty::of_varmap`] a
/// candle-nn `VarMap` (sorted by name, since a `VarMap` keeps hash order),
/// [`TikhonovPenalty::of_params`] this workspace's models' parameters in a
/// [`TikhonovScope`]. The variables share their storage with the model, so the penalty
/// follows every optimizer step.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use tulip_penalties::TikhonovPenalty;
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
/// let _fc = candle_nn::linear(3, 2, vb.pp("fc"))?;
/// // Every weight and bias of the VarMap; the same value a plain sum of squares gives.
/// let tikhonov = TikhonovPenalty::of_varmap(&vars)?;
/// let by_hand: f32 = vars
///     .all_vars()
///     .iter()
///     .map(|v| v.as_tensor().sqr()?.sum_all()?.to_scalar::<f32>())
///     .sum::<candle_core::Result<f32>>()?;
/// let value = tikhonov.sum_of_squares()?.to_scalar::<f32>()?;
/// assert!((value - by_hand).abs() <= 1e-5 * by_hand);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TikhonovPenalty {
    vars: Vec<Var>,
}

impl TikhonovPenalty {
    /// A penalty over `vars`, summed in the order given.
    ///
    /// # Errors
    /// [`PenaltyError::InvalidConfig`] for an empty list (whose sum would have no dtype
    /// or device), or for variables on different devices or of different dtypes.
    pub fn new(vars: impl IntoIterator<Item = Var>) -> Result<Self> {
        let vars: Vec<Var> = vars.into_iter().collect();
        let first = vars.first().ok_or_else(|| {
            PenaltyError::InvalidConfig("a Tikhonov penalty over no parameters".into())
        })?;
        let (dtype, device) = (first.dtype(), first.device());
        if let Some(v) = vars
            .iter()
            .find(|v| v.dtype() != dtype || !v.device().same_device(device))
        {
            return Err(PenaltyError::InvalidConfig(format!(
                "a Tikhonov penalty over parameters of different dtypes or devices \
                 ({dtype:?} on {:?}, {:?} on {:?})",
                device.location(),
                v.dtype(),
                v.device().location()
            )));
        }
        Ok(Self { vars })
    }

    /// A penalty over every variable of a candle-nn `VarMap` (all trainable there), in the
    /// order of their names.
    ///
    /// # Errors
    /// As [`TikhonovPenalty::new`].
    pub fn of_varmap(vars: &VarMap) -> Result<Self> {
        let data = vars
            .data()
            .lock()
            .map_err(|_| PenaltyError::InvalidConfig("the VarMap's lock is poisoned".into()))?;
        let mut named: Vec<(&String, &Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        Self::new(named.into_iter().map(|(_, v)| v.clone()))
    }

    /// A penalty over the parameters of `params` in `scope` (never the buffers), in
    /// construction order.
    ///
    /// # Errors
    /// As [`TikhonovPenalty::new`] (a scope that selects nothing).
    pub fn of_params(params: &Params, scope: TikhonovScope) -> Result<Self> {
        Self::new(
            params
                .all()
                .iter()
                .filter(|p| scope.includes(p))
                .map(|p| p.var.clone()),
        )
    }

    /// The variables it sums over, in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// `Σ ‖θ‖²` over its variables, a scalar tensor differentiable with respect to them.
    ///
    /// # Errors
    /// Only Candle's errors.
    pub fn sum_of_squares(&self) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for v in &self.vars {
            let s = v.as_tensor().sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
        // `new` refuses an empty list.
        total.ok_or_else(|| PenaltyError::InvalidConfig("no parameters".into()))
    }
}

impl Penalty for TikhonovPenalty {
    fn name(&self) -> &'static str {
        "tikhonov"
    }

    fn value(&self, _inputs: &PenaltyInputs<'_>) -> Result<Tensor> {
        self.sum_of_squares()
    }
}

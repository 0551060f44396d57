//! Vector norms of the rows of a batch, and the matching steepest-ascent directions.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::Result;

/// A vector norm over the flattened pixels of one image: the norm of a penalty's gradient,
/// of a perturbation, of an attack's distance — one type for all of them.
///
/// Its text form is `l1`, `l2` or `linf` (as in file names and `config.toml`); parsing also
/// accepts `1`, `2`, `inf`, `l-inf` and `infinity`, case-insensitively. On the command line
/// of `tulip train` the values are written `1`, `2`, `inf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// `‖v‖₁ = Σ |v_j|`.
    #[value(name = "1", alias = "l1")]
    L1,
    /// `‖v‖₂ = (Σ v_j²)^½` (the paper's default).
    #[value(name = "2", alias = "l2")]
    L2,
    /// `‖v‖_∞ = max |v_j|`.
    #[value(name = "inf", alias = "linf")]
    Linf,
}

impl Norm {
    /// The name in file names and configurations: `l1`, `l2` or `linf`.
    pub fn name(self) -> &'static str {
        match self {
            Norm::L1 => "l1",
            Norm::L2 => "l2",
            Norm::Linf => "linf",
        }
    }

    /// The name for people: `L1`, `L2` or `L∞`.
    pub fn label(self) -> &'static str {
        match self {
            Norm::L1 => "L1",
            Norm::L2 => "L2",
            Norm::Linf => "L∞",
        }
    }

    /// The dual norm (`1 ↔ ∞`, `2 ↔ 2`).
    pub fn dual(self) -> Norm {
        match self {
            Norm::L1 => Norm::Linf,
            Norm::L2 => Norm::L2,
            Norm::Linf => Norm::L1,
        }
    }
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Norm {
    type Err = String;

    /// `l1`/`1`, `l2`/`2`, or `linf`/`inf`/`l-inf`/`infinity`, case-insensitively.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "l1" | "1" => Ok(Norm::L1),
            "l2" | "2" => Ok(Norm::L2),
            "linf" | "inf" | "l-inf" | "infinity" => Ok(Norm::Linf),
            _ => Err(format!("unknown norm {s:?} (expected l1, l2 or linf)")),
        }
    }
}

fn rows(g: &Tensor) -> Result<Tensor> {
    let b = g.dim(0)?;
    Ok(g.reshape((b, ()))?)
}

/// The norms `[B]` of the rows of `g` (each of shape `[…]` flattened), differentiable (twice)
/// wherever the norm is.
///
/// The 2-norm of a zero row is 0 with a zero gradient (not the `NaN` that `sqrt` at 0 would
/// give), so a penalty over a model whose loss ignores the input stays finite. At ties of the
/// ∞-norm, Candle's `max` passes the full gradient to every maximal entry.
///
/// A row holding a `NaN` has norm `NaN` in every norm, so that a gradient gone `NaN` shows in
/// a penalty or a Lipschitz estimate rather than counting as a zero (or smaller) norm.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use tulip_penalties::{row_norms, Norm};
///
/// let g = Tensor::new(&[[3f64, -4.], [0., 0.]], &Device::Cpu)?;
/// assert_eq!(row_norms(&g, Norm::L2)?.to_vec1::<f64>()?, [5.0, 0.0]);
/// assert_eq!(row_norms(&g, Norm::L1)?.to_vec1::<f64>()?, [7.0, 0.0]);
/// assert_eq!(row_norms(&g, Norm::Linf)?.to_vec1::<f64>()?, [4.0, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Fails if `g` has rank 0.
pub fn row_norms(g: &Tensor, norm: Norm) -> Result<Tensor> {
    let r = rows(g)?;
    Ok(match norm {
        Norm::L1 => r.abs()?.sum(D::Minus1)?,
        Norm::L2 => {
            let s = r.sqr()?.sum(D::Minus1)?;
            let positive = s.gt(0.0)?;
            // sqrt only of positive values, so that neither branch produces NaN gradients.
            let safe = positive.where_cond(&s, &s.ones_like()?)?;
            // Not positive: 0 (a zero row), or NaN, which `gt` counts as not positive and
            // which must stay NaN. Detached, as the zero it replaces was: no gradient.
            positive.where_cond(&safe.sqrt()?, &s.detach())?
        }
        Norm::Linf => {
            let a = r.abs()?;
            nan_where_nan(&a, 1, &a.max(D::Minus1)?)?
        }
    })
}

/// `reduced`, a reduction of `x` along `dim`, with `NaN` wherever the slice of `x` it was
/// reduced from holds a `NaN`, and untouched (values and gradients) elsewhere.
///
/// Candle's `max` keeps a `NaN` only where it comes first in its slice (a comparison with
/// `NaN` is false), so a maximum would otherwise skip it.
pub(crate) fn nan_where_nan(x: &Tensor, dim: usize, reduced: &Tensor) -> Result<Tensor> {
    let x = x.detach();
    let has_nan = x.ne(&x)?.to_dtype(x.dtype())?.sum(dim)?.gt(0.0)?;
    let nan =
        Tensor::full(f64::NAN, reduced.shape(), reduced.device())?.to_dtype(reduced.dtype())?;
    Ok(has_nan.where_cond(&nan, reduced)?)
}

/// For each row `g_i` of `g`, the steepest-ascent direction `d_i` of the given norm: the
/// vector in the unit ball of the *dual* norm with `⟨g_i, d_i⟩ = ‖g_i‖`, so that to first
/// order `f(x + h d) − f(x) = h ‖∇f‖` (same shape as `g`, detached):
///
/// - [`Norm::L1`]: `sign(g_i)` (∞-norm 1);
/// - [`Norm::L2`]: `g_i / ‖g_i‖₂`;
/// - [`Norm::Linf`]: `sign(g_ik) e_k` with `k = argmax_j |g_ij|` (1-norm 1; the first index
///   at ties).
///
/// Zero rows give zero directions (and `sign(0) = 0` entry-wise).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use tulip_penalties::{steepest_ascent_direction, Norm};
///
/// let g = Tensor::new(&[[3f64, -4.]], &Device::Cpu)?;
/// let l2 = steepest_ascent_direction(&g, Norm::L2)?;
/// assert_eq!(l2.to_vec2::<f64>()?, [[0.6, -0.8]]);
/// let l1 = steepest_ascent_direction(&g, Norm::L1)?;
/// assert_eq!(l1.to_vec2::<f64>()?, [[1.0, -1.0]]);
/// let linf = steepest_ascent_direction(&g, Norm::Linf)?;
/// assert_eq!(linf.to_vec2::<f64>()?, [[0.0, -1.0]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Fails if `g` has rank 0.
pub fn steepest_ascent_direction(g: &Tensor, norm: Norm) -> Result<Tensor> {
    let g = g.detach();
    let r = rows(&g)?;
    let d = match norm {
        Norm::L1 => r.sign()?,
        Norm::L2 => {
            let n = row_norms(&r, Norm::L2)?.unsqueeze(1)?;
            let safe = n.gt(0.0)?.where_cond(&n, &n.ones_like()?)?;
            r.broadcast_div(&safe)?
        }
        Norm::Linf => {
            let n = r.dim(1)?;
            let k = r.abs()?.argmax_keepdim(D::Minus1)?;
            let idx = Tensor::arange(0u32, n as u32, r.device())?.unsqueeze(0)?;
            let mask = idx.broadcast_eq(&k)?.to_dtype(r.dtype())?;
            (r.sign()? * mask)?
        }
    };
    Ok(d.reshape(g.shape())?)
}

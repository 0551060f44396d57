//! # tulip-adversarial
//!
//! The adversarial-training perturbations of Tulip-rs (docs/method.md §3): J1 (FGSM scaled to an L2
//! step), J2 (normalised gradient ascent), J∞ (max-entry) and PGD in the L∞ ball. Each
//! implements [`Perturbation`]; [`PerturbationKind`] is the serialisable selection the
//! trainer's configuration holds, and [`PerturbationKind::build`] turns it into one.
//!
//! The evaluation attacks of docs/method.md §5 (DeepFool, basic iterative method, FGSM, gradient,
//! Boundary, and PGD at a fixed ε) are in [`attacks`]; [`run_attack`] runs one on a batch.
//!
//! Every perturbation and attack takes any Candle model that implements
//! [`candle_nn::ModuleT`] (a closure through `candle_nn::func_t` too). Sits above
//! `tulip-models` and `tulip-penalties` (whose [`tulip_penalties::input_gradient`] and
//! [`tulip_penalties::steepest_ascent_direction`] it uses), below the trainer.
//!
//! ## Design record (choices and deviations)
//! - Every perturbation is computed with the model in **evaluation mode** (batch norm uses,
//!   and does not update, its running statistics) and only first-order gradients; the
//!   result is detached. The trainer then computes the loss on it in training mode.
//! - The direction is `d = ∇_x L` at the clean batch, per example. It is computed from the
//!   *summed* per-example losses; the scale of `L` changes neither a sign nor a normalised
//!   direction, so this is the same step as from the batch mean.
//! - J1/J2/J∞ do **not** clip to `[0, 1]` (reference behaviour). `sign(0) = 0`, so a pixel
//!   (J1) or an image (J1, J2, J∞) with zero gradient is left unchanged; J1's
//!   `‖δ‖₂ = ε` holds when no gradient entry is exactly 0. J∞ takes the first index at ties.
//! - PGD clips its random start to `[0, 1]` as well as every step (as Madry et al.'s code
//!   does, and as docs/method.md §3 describes), so its output is in the ε-ball and in
//!   `[0, 1]` for any number of steps. Its randomness is seeded and derived per call (see
//!   [`PgdLinf`]).
//! - [`PerturbationKind::build`] validates (ε finite and ≥ 0 for J1/J2/J∞, see
//!   [`PgdConfig::validate`] for PGD) and so returns a `Result`.
#![warn(missing_docs)]

pub mod attacks;
mod budget;
mod error;
mod pgd;
mod single_step;
mod step;

pub use attacks::{
    run_attack, run_attack_with_adversarials, AttackConfig, AttackKind, AttackOutcome, AttackRun,
    AttackStatus, DEEPFOOL_BOUNDARY_MARGIN,
};
pub use budget::parse_fraction;
pub use error::{AdversarialError, Result};
pub use pgd::{PgdConfig, PgdConfigBuilder, PgdLinf};
pub use single_step::{Fgsm, GradientAscent, MaxEntry};
/// The norm of perturbations and distances: the same type as the penalties'.
pub use tulip_penalties::Norm;

use candle_core::Tensor;
use candle_nn::ModuleT;
use serde::{Deserialize, Serialize};

/// A training-time perturbation of the input batch.
pub trait Perturbation: Send + Sync {
    /// Short name (`j1`, `j2`, `jinf`, `pgd-inf`), as on the command line.
    fn name(&self) -> &'static str;

    /// A perturbed copy of `x` (detached), computed with the model in evaluation mode
    /// (`forward_t(.., false)`), without touching the parameters or batch-norm statistics.
    ///
    /// # Errors
    /// Fails on a shape mismatch between model, images and labels.
    fn perturb(&self, model: &dyn ModuleT, x: &Tensor, labels: &Tensor) -> Result<Tensor>;
}

/// Which perturbation adversarial training uses, as stored in a run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PerturbationKind {
    /// J1 / FGSM: `x + ε·sign(d)/√N` ([`Fgsm`]).
    J1 {
        /// Step ε (the L2 norm of the perturbation).
        epsilon: f64,
    },
    /// J2 / gradient ascent: `x + ε·d/‖d‖₂` ([`GradientAscent`]).
    J2 {
        /// Step ε (the L2 norm of the perturbation).
        epsilon: f64,
    },
    /// J∞ / max-entry: `x + ε·sign(d_k)·e_k` ([`MaxEntry`]).
    Jinf {
        /// Step ε (the size of the one changed pixel).
        epsilon: f64,
    },
    /// PGD in the L∞ ball ([`PgdLinf`]).
    PgdInf(PgdConfig),
}

impl PerturbationKind {
    /// The command-line name of the method (`j1`, `j2`, `jinf`, `pgd-inf`).
    pub fn name(&self) -> &'static str {
        match self {
            PerturbationKind::J1 { .. } => "j1",
            PerturbationKind::J2 { .. } => "j2",
            PerturbationKind::Jinf { .. } => "jinf",
            PerturbationKind::PgdInf(_) => "pgd-inf",
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`AdversarialError::InvalidConfig`] naming the method and the bad value.
    pub fn validate(&self) -> Result<()> {
        match self {
            PerturbationKind::J1 { epsilon }
            | PerturbationKind::J2 { epsilon }
            | PerturbationKind::Jinf { epsilon } => {
                budget::check_non_negative(self.name(), "epsilon", *epsilon)
            }
            PerturbationKind::PgdInf(cfg) => cfg.validate(),
        }
    }

    /// The perturbation.
    ///
    /// # Errors
    /// As [`PerturbationKind::validate`].
    pub fn build(&self) -> Result<Box<dyn Perturbation>> {
        self.build_resumed(0)
    }

    /// The perturbation as it stands after `calls` earlier calls to
    /// [`Perturbation::perturb`], so that a resumed training run draws the same random
    /// starts as an uninterrupted one (only PGD is random; the others ignore `calls`).
    ///
    /// # Errors
    /// As [`PerturbationKind::validate`].
    pub fn build_resumed(&self, calls: u64) -> Result<Box<dyn Perturbation>> {
        Ok(match self {
            PerturbationKind::J1 { epsilon } => Box::new(Fgsm::new(*epsilon)?),
            PerturbationKind::J2 { epsilon } => Box::new(GradientAscent::new(*epsilon)?),
            PerturbationKind::Jinf { epsilon } => Box::new(MaxEntry::new(*epsilon)?),
            PerturbationKind::PgdInf(cfg) => Box::new(PgdLinf::new(*cfg)?.with_first_call(calls)),
        })
    }
}

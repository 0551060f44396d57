//! Projected gradient descent (ascent) in the L∞ ball: configuration and perturbation.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;
use candle_nn::ModuleT;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tulip_penalties::input_gradient;

use crate::budget::{check_positive, parse_fraction};
use crate::step::linf_ascent_step;
use crate::{AdversarialError, Perturbation, Result};

/// Configuration of [`PgdLinf`]. Defaults: ε = 8/255, 10 steps of 2/255, random start, seed 0.
///
/// Its text form (what `--pgd-inf` takes, and what [`fmt::Display`] writes) is a
/// comma-separated list of `key=value` pairs, any subset, in any order, missing keys taking
/// their defaults: `eps=8/255,steps=10,step-size=2/255,random-start=true,seed=0`. Numbers may
/// be written as fractions `a/b`; `epsilon` and `step_size` are accepted as key spellings
/// too, and `random-start` takes `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgdConfig {
    /// Radius ε of the L∞ ball around the clean image.
    pub epsilon: f64,
    /// Number of ascent steps.
    pub steps: usize,
    /// Size of each signed-gradient step.
    pub step_size: f64,
    /// Start from a uniform random point of the ball (clipped to `[0, 1]`) rather than from
    /// the clean image.
    pub random_start: bool,
    /// Seed of the random start.
    pub seed: u64,
}

impl Default for PgdConfig {
    fn default() -> Self {
        Self {
            epsilon: 8.0 / 255.0,
            steps: 10,
            step_size: 2.0 / 255.0,
            random_start: true,
            seed: 0,
        }
    }
}

impl PgdConfig {
    /// A builder starting from the defaults with radius `epsilon`.
    pub fn builder(epsilon: f64) -> PgdConfigBuilder {
        PgdConfigBuilder {
            cfg: PgdConfig {
                epsilon,
                ..PgdConfig::default()
            },
        }
    }

    /// Checks the values: ε and the step size positive and finite, at least one step.
    ///
    /// # Errors
    /// [`AdversarialError::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        check_positive("pgd-inf", "eps", self.epsilon)?;
        check_positive("pgd-inf", "step-size", self.step_size)?;
        if self.steps == 0 {
            return Err(AdversarialError::InvalidConfig(
                "pgd-inf: steps must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for PgdConfig {
    /// The text form, which [`PgdConfig::from_str`] reads back exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "eps={},steps={},step-size={},random-start={},seed={}",
            self.epsilon, self.steps, self.step_size, self.random_start, self.seed
        )
    }
}

fn parse_number(key: &str, value: &str) -> std::result::Result<f64, String> {
    parse_fraction(value)
        .ok_or_else(|| format!("{key}: {value:?} is not a number (e.g. 0.031 or 8/255)"))
}

fn parse_bool(key: &str, value: &str) -> std::result::Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("{key}: {value:?} is not true or false")),
    }
}

fn parse_integer<T: FromStr>(key: &str, value: &str) -> std::result::Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{key}: {value:?} is not a non-negative integer"))
}

impl FromStr for PgdConfig {
    type Err = AdversarialError;

    fn from_str(s: &str) -> Result<Self> {
        let fail = |reason: String| AdversarialError::Parse {
            input: s.to_string(),
            reason,
        };
        let mut cfg = PgdConfig::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| fail(format!("{item:?} is not of the form key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            let canonical = match key.to_ascii_lowercase().replace('_', "-").as_str() {
                "eps" | "epsilon" => {
                    cfg.epsilon = parse_number(key, value).map_err(fail)?;
                    "eps"
                }
                "steps" => {
                    cfg.steps = parse_integer(key, value).map_err(fail)?;
                    "steps"
                }
                "step-size" => {
                    cfg.step_size = parse_number(key, value).map_err(fail)?;
                    "step-size"
                }
                "random-start" => {
                    cfg.random_start = parse_bool(key, value).map_err(fail)?;
                    "random-start"
                }
                "seed" => {
                    cfg.seed = parse_integer(key, value).map_err(fail)?;
                    "seed"
                }
                _ => {
                    return Err(fail(format!(
                        "unknown key {key:?} (expected eps, steps, step-size, random-start, seed)"
                    )))
                }
            };
            if seen.contains(&canonical) {
                return Err(fail(format!("{canonical} given twice")));
            }
            seen.push(canonical);
        }
        cfg.validate().map_err(|e| match e {
            AdversarialError::InvalidConfig(reason) => fail(reason),
            other => other,
        })?;
        Ok(cfg)
    }
}

/// Builds a validated [`PgdConfig`]: `PgdConfig::builder(eps).steps(20).build()?`.
#[derive(Debug, Clone)]
pub struct PgdConfigBuilder {
    cfg: PgdConfig,
}

impl PgdConfigBuilder {
    /// Number of ascent steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.cfg.steps = steps;
        self
    }

    /// Size of each step.
    pub fn step_size(mut self, step_size: f64) -> Self {
        self.cfg.step_size = step_size;
        self
    }

    /// Whether to start from a random point of the ball.
    pub fn random_start(mut self, random_start: bool) -> Self {
        self.cfg.random_start = random_start;
        self
    }

    /// Seed of the random start.
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// The configuration.
    ///
    /// # Errors
    /// As [`PgdConfig::validate`].
    pub fn build(self) -> Result<PgdConfig> {
        self.cfg.validate()?;
        Ok(self.cfg)
    }
}

/// PGD in the L∞ ball (Madry et al.): from `x̂₀ = clip_[0,1](x + U(−ε, ε))` (or `x`), repeat
/// `x̂ ← clip_[0,1](Π_{‖x̂−x‖∞≤ε}(x̂ + step_size · sign ∇_x L(x̂)))`, with the model in
/// evaluation mode. Assumes clean inputs in `[0, 1]`; the result is then in the ε-ball and
/// in `[0, 1]`.
///
/// The random start is drawn on the host from a ChaCha8 stream seeded by `seed`, with the
/// stream number the index of the call to [`Perturbation::perturb`] on this value (0, 1, …):
/// a run is reproducible given the seed and the sequence of batches, and every batch gets
/// fresh noise. The counter starts at 0 for a new value (see [`PgdLinf::with_first_call`]
/// for resuming).
#[derive(Debug)]
pub struct PgdLinf {
    cfg: PgdConfig,
    calls: AtomicU64,
}

impl PgdLinf {
    /// PGD with the given configuration.
    ///
    /// # Errors
    /// As [`PgdConfig::validate`].
    pub fn new(cfg: PgdConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            calls: AtomicU64::new(0),
        })
    }

    /// The same perturbation with its call counter starting at `calls` (e.g. the number of
    /// training steps already taken when a run is resumed).
    pub fn with_first_call(self, calls: u64) -> Self {
        self.calls.store(calls, Ordering::Relaxed);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PgdConfig {
        &self.cfg
    }

    fn random_start(&self, x: &Tensor) -> Result<Tensor> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(call, seed = self.cfg.seed, "pgd-inf random start");
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(call);
        let eps = self.cfg.epsilon;
        let noise: Vec<f64> = (0..x.elem_count())
            .map(|_| rng.gen_range(-eps..=eps))
            .collect();
        let noise = Tensor::from_vec(noise, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x + noise)?.clamp(0f64, 1f64)?)
    }
}

impl Perturbation for PgdLinf {
    fn name(&self) -> &'static str {
        "pgd-inf"
    }

    fn perturb(&self, model: &dyn ModuleT, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let x = x.detach();
        let batch = x.dim(0)?;
        let step = vec![self.cfg.step_size; batch];
        let radius = vec![self.cfg.epsilon; batch];
        let mut adv = if self.cfg.random_start {
            self.random_start(&x)?
        } else {
            x.clone()
        };
        for _ in 0..self.cfg.steps {
            let g = input_gradient(model, &adv, labels, false)?.gradient;
            adv = linf_ascent_step(&x, &adv, &g, &step, &radius)?;
        }
        Ok(adv.detach())
    }
}

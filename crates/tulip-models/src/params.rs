//! Named model tensors in a stable order, split into trainable parameters and buffers.
//!
//! Candle's `VarMap` keeps its variables in hash order and does not tell parameters from
//! batch-norm running statistics. Both matter here: SGD and the Tikhonov penalty must see
//! only trainable parameters, in a reproducible order, and checkpoints must hold both. So
//! models are built through a [`ParamBuilder`] (shaped like candle-nn's `VarBuilder`:
//! `pp("name")` extends a PyTorch-style dotted path) that records every tensor, in
//! construction order, with its [`ParamKind`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Whether a named tensor is learned by the optimizer or is running state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Stepped by the optimizer (weights, biases, batch-norm affine terms, the tanh scale).
    Trainable,
    /// State updated by the forward pass (batch-norm running statistics); never stepped,
    /// never penalised, but saved in checkpoints.
    Buffer,
}

/// One named tensor of a model.
#[derive(Debug, Clone)]
pub struct Param {
    /// PyTorch `state_dict` name, e.g. `layer1.0.convs.0.weight`.
    pub name: String,
    /// The variable itself (shared with the layer that uses it).
    pub var: Var,
    /// Trainable parameter or buffer.
    pub kind: ParamKind,
}

impl Param {
    /// Whether this is a "weight" in the sense of the Tikhonov penalty's bias-free variant
    /// and of the `‖w‖₂` statistic: a trainable tensor of rank ≥ 2 (convolution and linear
    /// weights), as opposed to biases, batch-norm scales and shifts, and the tanh scale.
    pub fn is_weight_matrix(&self) -> bool {
        self.kind == ParamKind::Trainable && self.var.rank() >= 2
    }
}

/// All named tensors of a model, in construction order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    entries: Vec<Param>,
}

impl Params {
    /// Every tensor, parameters and buffers, in construction order.
    pub fn all(&self) -> &[Param] {
        &self.entries
    }

    /// The trainable parameters, in construction order.
    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.entries
            .iter()
            .filter(|p| p.kind == ParamKind::Trainable)
    }

    /// Number of scalars in trainable parameters (what PyTorch's `numel` sum reports).
    pub fn trainable_count(&self) -> usize {
        self.trainable().map(|p| p.var.elem_count()).sum()
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.entries.iter().find(|p| p.name == name)
    }

    /// All names, in construction order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|p| p.name.as_str()).collect()
    }

    /// The names, in construction order, of the tensors (parameters and buffers) that
    /// hold a NaN or an infinity; empty when every value is finite.
    ///
    /// # Errors
    /// Fails if Candle cannot evaluate the check ([`non_finite_tensors`]).
    pub fn non_finite(&self) -> Result<Vec<String>> {
        non_finite_tensors(
            self.entries
                .iter()
                .map(|p| (p.name.as_str(), p.var.as_tensor())),
        )
    }
}

/// The names of the tensors that hold a NaN or an infinity, in the order given; empty
/// when every value is finite.
///
/// Computed where the tensors live: per tensor, `sum(t − t)` is 0 when every element is
/// finite and NaN otherwise (`∞ − ∞` and `NaN − NaN` are NaN), so the only data brought
/// to the host is one number per tensor, read in a single transfer.
///
/// # Errors
/// Fails if Candle cannot evaluate the sums.
pub fn non_finite_tensors<'a>(
    named: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<String>> {
    let (names, sums): (Vec<&str>, Vec<Tensor>) = named
        .into_iter()
        .map(|(name, t)| Ok((name, t.sub(t)?.sum_all()?.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    if sums.is_empty() {
        return Ok(Vec::new());
    }
    let sums: Vec<f32> = Tensor::stack(&sums, 0)?.to_vec1()?;
    Ok(names
        .into_iter()
        .zip(sums)
        .filter(|(_, s)| !s.is_finite())
        .map(|(name, _)| name.to_string())
        .collect())
}

/// How a new parameter is filled.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Uniform in `[-bound, bound]` (PyTorch's default for convolutions and linear layers
    /// uses `bound = 1/√fan_in`).
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// Every entry equal to the value.
    Const(f64),
}

struct Shared {
    entries: Vec<Param>,
    rng: ChaCha8Rng,
    /// Set for a builder that rebuilds a model around existing tensors
    /// ([`ParamBuilder::frozen_view_of`]) instead of creating new ones.
    existing: Option<HashMap<String, Var>>,
}

/// Creates named tensors for a model, like candle-nn's `VarBuilder`, and records them.
///
/// Initial values come from a seeded ChaCha generator on the host, so the same seed gives
/// the same model on every device.
#[derive(Clone)]
pub struct ParamBuilder {
    shared: Arc<Mutex<Shared>>,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl ParamBuilder {
    /// A builder for a fresh model.
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                entries: Vec::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                existing: None,
            })),
            prefix: String::new(),
            dtype,
            device: device.clone(),
        }
    }

    /// A builder that hands out the tensors of `params` (looked up by name) detached from
    /// the autograd graph instead of creating new ones, so that building the same
    /// architecture through it gives a view of that model whose parameters no gradient
    /// reaches: the same storage (optimizer updates show through), but Candle's backward
    /// computes gradients only for the input. Buffers stay the model's own variables, so
    /// running statistics are shared too.
    ///
    /// Building a model that is not the one `params` came from fails with
    /// [`ModelError::InvalidConfig`](crate::ModelError::InvalidConfig).
    pub fn frozen_view_of(params: &Params) -> Self {
        let (dtype, device) = match params.all().first() {
            Some(p) => (p.var.dtype(), p.var.device().clone()),
            None => (DType::F32, Device::Cpu),
        };
        let existing = params
            .all()
            .iter()
            .map(|p| (p.name.clone(), p.var.clone()))
            .collect();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                entries: Vec::new(),
                rng: ChaCha8Rng::seed_from_u64(0),
                existing: Some(existing),
            })),
            prefix: String::new(),
            dtype,
            device,
        }
    }

    /// A builder whose names are prefixed by `name.` (PyTorch submodule path).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// Data type of the tensors created.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device of the tensors created.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A new trainable parameter.
    ///
    /// # Errors
    /// Fails if Candle cannot allocate the tensor.
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.create(name, shape, init, ParamKind::Trainable)
    }

    /// A new buffer (running state, not trained).
    ///
    /// # Errors
    /// Fails if Candle cannot allocate the tensor.
    pub fn buffer(&self, name: &str, shape: &[usize], value: f64) -> Result<Var> {
        self.create(name, shape, Init::Const(value), ParamKind::Buffer)?;
        let shared = self.lock();
        // Invariant: `create` just pushed this entry.
        Ok(shared
            .entries
            .last()
            .expect("entry just pushed")
            .var
            .clone())
    }

    /// A new trainable parameter whose initial value is given (after construction-time
    /// transforms such as the softmax-normalised 1×1 convolution).
    ///
    /// # Errors
    /// Fails if Candle cannot allocate the tensor.
    pub fn param_from(&self, name: &str, value: &Tensor) -> Result<Tensor> {
        if let Some(t) = self.existing(name, value.dims(), ParamKind::Trainable)? {
            return Ok(t);
        }
        let var = Var::from_tensor(&value.to_dtype(self.dtype)?.detach())?;
        self.push(name, var.clone(), ParamKind::Trainable);
        Ok(var.as_tensor().clone())
    }

    /// Draws values for `shape` from `init` on the host, in the builder's stream.
    ///
    /// # Errors
    /// Fails if Candle cannot allocate the tensor.
    pub fn sample(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if self.lock().existing.is_some() {
            // Rebuilding around existing tensors: the values are never used.
            return Ok(Tensor::zeros(shape, self.dtype, &self.device)?);
        }
        let values: Vec<f64> = match init {
            Init::Const(v) => vec![v; n],
            Init::Uniform { bound } => {
                let mut shared = self.lock();
                (0..n)
                    .map(|_| shared.rng.gen_range(-bound..=bound))
                    .collect()
            }
        };
        Ok(Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)
    }

    fn create(&self, name: &str, shape: &[usize], init: Init, kind: ParamKind) -> Result<Tensor> {
        if let Some(t) = self.existing(name, shape, kind)? {
            return Ok(t);
        }
        let var = Var::from_tensor(&self.sample(shape, init)?)?;
        self.push(name, var.clone(), kind);
        Ok(var.as_tensor().clone())
    }

    /// For a [`frozen_view_of`](Self::frozen_view_of) builder: records the existing tensor
    /// `name` and returns it detached. `None` for an ordinary builder.
    fn existing(&self, name: &str, shape: &[usize], kind: ParamKind) -> Result<Option<Tensor>> {
        let full = self.full_name(name);
        let var = {
            let shared = self.lock();
            let Some(existing) = &shared.existing else {
                return Ok(None);
            };
            existing.get(&full).cloned()
        };
        match var {
            Some(v) if v.dims() == shape => {
                self.push(name, v.clone(), kind);
                Ok(Some(v.as_tensor().detach()))
            }
            _ => Err(crate::ModelError::InvalidConfig(format!(
                "frozen view: the model has no tensor {full} of shape {shape:?}"
            ))),
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn push(&self, name: &str, var: Var, kind: ParamKind) {
        let full = self.full_name(name);
        self.lock().entries.push(Param {
            name: full,
            var,
            kind,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock means a panic mid-construction; the data is still consistent
        // (each push is a single Vec::push), so keep going.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tensors recorded so far by this builder and every builder derived from it.
    pub fn params(&self) -> Params {
        Params {
            entries: self.lock().entries.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(device: &Device) -> (ParamBuilder, Params) {
        let b = ParamBuilder::new(7, DType::F32, device);
        b.pp("conv")
            .param("weight", &[4, 3], Init::Uniform { bound: 0.5 })
            .unwrap();
        b.pp("conv").param("bias", &[4], Init::Const(0.1)).unwrap();
        b.pp("bn").buffer("running_var", &[4], 1.0).unwrap();
        b.pp("fc")
            .param("weight", &[2, 4], Init::Uniform { bound: 0.5 })
            .unwrap();
        let params = b.params();
        (b, params)
    }

    fn poison(params: &Params, name: &str, index: usize, value: f32) {
        let var = &params.get(name).unwrap().var;
        let mut values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        values[index] = value;
        let t = Tensor::from_vec(values, var.dims(), var.device()).unwrap();
        var.set(&t).unwrap();
    }

    #[test]
    fn non_finite_names_exactly_the_tensors_holding_nan_or_infinity() {
        let (_b, params) = model(&Device::Cpu);
        assert!(params.non_finite().unwrap().is_empty());

        // One bad element among finite ones is enough, in a parameter or a buffer, and
        // the names come in construction order whatever order they were spoiled in.
        poison(&params, "fc.weight", 5, f32::NAN);
        poison(&params, "bn.running_var", 0, f32::INFINITY);
        poison(&params, "conv.weight", 11, f32::NEG_INFINITY);
        assert_eq!(
            params.non_finite().unwrap(),
            ["conv.weight", "bn.running_var", "fc.weight"]
        );
    }

    #[test]
    fn non_finite_sees_large_finite_values_as_finite() {
        // Sums of the values themselves would overflow here; the check must not.
        let (_b, params) = model(&Device::Cpu);
        let w = &params.get("conv.weight").unwrap().var;
        w.set(&Tensor::full(f32::MAX, w.dims(), w.device()).unwrap())
            .unwrap();
        assert!(params.non_finite().unwrap().is_empty());
    }

    #[test]
    fn non_finite_of_no_tensors_is_empty() {
        assert!(Params::default().non_finite().unwrap().is_empty());
    }
}

//! Selecting and building a model: [`Architecture`], [`ModelConfig`], [`Model`].

use candle_core::{DType, Device, Result as CResult, Tensor};
use serde::{Deserialize, Serialize};

use crate::allcnn::AllCnn;
use crate::layers::{Mode, TanhOutput};
use crate::params::{ParamBuilder, Params};
use crate::resnet::{BlockKind, ResNet, ResNetSpec};
use crate::{Classifier, Linearised, ModelError, Result};

/// The architectures of the reference (docs/method.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[non_exhaustive]
pub enum Architecture {
    /// All-CNN-C (c1 = 96, c2 = 192).
    #[serde(rename = "allcnn")]
    #[value(name = "allcnn")]
    AllCnn,
    /// ResNet with three stages of 1 basic block, base width 16: not in the paper; a small model
    /// for quick experiments on a CPU (the quick profile of `cargo xtask reproduce-paper`).
    #[serde(rename = "resnet8")]
    #[value(name = "resnet8")]
    ResNet8,
    /// ResNet with three stages of 3 basic blocks, base width 16.
    #[serde(rename = "resnet22")]
    #[value(name = "resnet22")]
    ResNet22,
    /// ResNet with three stages of 5 basic blocks, base width 16.
    #[serde(rename = "resnet34")]
    #[value(name = "resnet34")]
    ResNet34,
    /// ResNeXt with three stages of 5 two-branch blocks, base width 32.
    #[serde(rename = "resnext34")]
    #[value(name = "resnext34")]
    ResNeXt34,
    /// Wide ResNet, depth 16, width factor 4.
    #[serde(rename = "wrn-16-4")]
    #[value(name = "wrn-16-4")]
    Wrn16_4,
    /// Wide ResNet, depth 16, width factor 8.
    #[serde(rename = "wrn-16-8")]
    #[value(name = "wrn-16-8")]
    Wrn16_8,
    /// Wide ResNet, depth 22, width factor 4.
    #[serde(rename = "wrn-22-4")]
    #[value(name = "wrn-22-4")]
    Wrn22_4,
    /// Wide ResNet, depth 28, width factor 10.
    #[serde(rename = "wrn-28-10")]
    #[value(name = "wrn-28-10")]
    Wrn28_10,
    /// Wide ResNet, depth 40, width factor 4.
    #[serde(rename = "wrn-40-4")]
    #[value(name = "wrn-40-4")]
    Wrn40_4,
}

impl Architecture {
    /// Every architecture, for listings and tests.
    pub const ALL: [Architecture; 10] = [
        Architecture::AllCnn,
        Architecture::ResNet8,
        Architecture::ResNet22,
        Architecture::ResNet34,
        Architecture::ResNeXt34,
        Architecture::Wrn16_4,
        Architecture::Wrn16_8,
        Architecture::Wrn22_4,
        Architecture::Wrn28_10,
        Architecture::Wrn40_4,
    ];

    /// The command-line / config name (`resnet22`, `wrn-16-4`, …).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::AllCnn => "allcnn",
            Architecture::ResNet8 => "resnet8",
            Architecture::ResNet22 => "resnet22",
            Architecture::ResNet34 => "resnet34",
            Architecture::ResNeXt34 => "resnext34",
            Architecture::Wrn16_4 => "wrn-16-4",
            Architecture::Wrn16_8 => "wrn-16-8",
            Architecture::Wrn22_4 => "wrn-22-4",
            Architecture::Wrn28_10 => "wrn-28-10",
            Architecture::Wrn40_4 => "wrn-40-4",
        }
    }

    /// The residual-network shape, or `None` for All-CNN.
    pub fn resnet_spec(self) -> Option<ResNetSpec> {
        Some(match self {
            Architecture::AllCnn => return None,
            Architecture::ResNet8 => ResNetSpec::resnet([1, 1, 1], 16, BlockKind::Basic),
            Architecture::ResNet22 => ResNetSpec::resnet([3, 3, 3], 16, BlockKind::Basic),
            Architecture::ResNet34 => ResNetSpec::resnet([5, 5, 5], 16, BlockKind::Basic),
            Architecture::ResNeXt34 => {
                ResNetSpec::resnet([5, 5, 5], 32, BlockKind::Branch { branches: 2 })
            }
            Architecture::Wrn16_4 => ResNetSpec::wide(16, 4),
            Architecture::Wrn16_8 => ResNetSpec::wide(16, 8),
            Architecture::Wrn22_4 => ResNetSpec::wide(22, 4),
            Architecture::Wrn28_10 => ResNetSpec::wide(28, 10),
            Architecture::Wrn40_4 => ResNetSpec::wide(40, 4),
        })
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything needed to build a model (and to rebuild it from a run directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which network.
    pub architecture: Architecture,
    /// Number of classes (logits).
    pub classes: usize,
    /// Input shape `(C, H, W)`.
    pub input_shape: (usize, usize, usize),
    /// Batch normalisation on (the reference default) or off.
    pub batch_norm: bool,
    /// Dropout probability (0 = off).
    pub dropout: f64,
    /// Side of the square convolution kernels (odd).
    pub kernel_size: usize,
    /// Append the tanh output layer.
    pub tanh: bool,
}

impl ModelConfig {
    /// The reference defaults for `architecture` on inputs of `input_shape`.
    pub fn new(
        architecture: Architecture,
        classes: usize,
        input_shape: (usize, usize, usize),
    ) -> Self {
        Self {
            architecture,
            classes,
            input_shape,
            batch_norm: true,
            dropout: 0.0,
            kernel_size: 3,
            tanh: false,
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        if self.classes < 2 {
            return bad(format!("classes must be at least 2, got {}", self.classes));
        }
        if self.kernel_size.is_multiple_of(2) {
            return bad(format!("kernel size must be odd, got {}", self.kernel_size));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        let (c, h, w) = self.input_shape;
        if c == 0 || h < 4 || w < 4 {
            return bad(format!(
                "input shape {c}×{h}×{w} is too small (at least 1×4×4)"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Net {
    AllCnn(AllCnn),
    ResNet(ResNet),
}

/// A built model: network, optional tanh output layer, and its named tensors.
#[derive(Debug, Clone)]
pub struct Model {
    net: Net,
    tanh: Option<TanhOutput>,
    params: Params,
    cfg: ModelConfig,
}

impl Model {
    /// Builds a freshly initialised model from `cfg`, tensors created through `pb`.
    ///
    /// # Errors
    /// An invalid configuration, or a failed allocation.
    pub fn new(cfg: &ModelConfig, pb: ParamBuilder) -> Result<Self> {
        cfg.validate()?;
        let (c, _, _) = cfg.input_shape;
        let net = match cfg.architecture.resnet_spec() {
            None => Net::AllCnn(AllCnn::new(
                c,
                cfg.classes,
                cfg.kernel_size,
                cfg.batch_norm,
                cfg.dropout,
                pb.clone(),
            )?),
            Some(spec) => Net::ResNet(ResNet::new(
                &spec,
                c,
                cfg.classes,
                cfg.kernel_size,
                cfg.batch_norm,
                cfg.dropout,
                pb.clone(),
            )?),
        };
        let tanh = cfg
            .tanh
            .then(|| TanhOutput::new(cfg.classes, pb.clone()))
            .transpose()?;
        Ok(Self {
            net,
            tanh,
            params: pb.params(),
            cfg: cfg.clone(),
        })
    }

    /// Builds a model initialised from `seed` in `dtype` on `device`.
    ///
    /// # Errors
    /// An invalid configuration, or a failed allocation.
    pub fn init(cfg: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(cfg, ParamBuilder::new(seed, dtype, device))
    }

    /// A view of this model whose parameters no gradient reaches (what a forward pass
    /// inside [`crate::grad_mode::frozen_parameters`] runs through): the same network
    /// rebuilt around detached views of the same tensors, which costs no copy.
    ///
    /// # Errors
    /// Only if Candle fails to build the (unused) placeholder of an initial value.
    pub fn frozen_view(&self) -> Result<Self> {
        Self::new(&self.cfg, ParamBuilder::frozen_view_of(&self.params))
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The tanh scale `|t|` if the model has the tanh output layer.
    ///
    /// # Errors
    /// Fails if the scalar cannot be read.
    pub fn tanh_scale(&self) -> Result<Option<f64>> {
        match &self.tanh {
            Some(t) => Ok(Some(
                t.scale().to_dtype(DType::F64)?.to_scalar::<f64>()?.abs(),
            )),
            None => Ok(None),
        }
    }

    /// Forward pass in an explicit [`Mode`].
    ///
    /// # Errors
    /// Fails on an input of the wrong shape.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let z = match &self.net {
            Net::AllCnn(m) => m.forward(x, mode)?,
            Net::ResNet(m) => m.forward(x, mode)?,
        };
        match &self.tanh {
            Some(t) => t.forward(&z, mode),
            None => Ok(z),
        }
    }
}

impl Classifier for Model {
    fn classes(&self) -> usize {
        self.cfg.classes
    }

    fn input_shape(&self) -> (usize, usize, usize) {
        self.cfg.input_shape
    }

    fn params(&self) -> &Params {
        &self.params
    }
}

impl Linearised for Model {
    fn forward_linearised(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_mode(x, Mode::Linearised)
    }
}

impl candle_nn::ModuleT for Model {
    /// Inside [`crate::grad_mode::frozen_parameters`] the pass runs through the model's
    /// [frozen view](Model::frozen_view), so no parameter is on its graph.
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        let mode = Mode::from_train_flag(train);
        if crate::grad_mode::parameters_frozen() {
            // Rebuilding the same configuration around its own tensors cannot mismatch;
            // if Candle failed anyway, the model itself gives the same result, only
            // slower.
            if let Ok(view) = self.frozen_view() {
                return view.forward_mode(x, mode);
            }
        }
        self.forward_mode(x, mode)
    }
}

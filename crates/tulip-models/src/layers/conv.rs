use candle_core::{Result as CResult, Tensor};

use crate::params::{Init, ParamBuilder};
use crate::Result;

/// Shape of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel_size: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side; `kernel_size / 2` keeps the size at stride 1.
    pub padding: usize,
    /// Channel groups (ResNeXt's branches).
    pub groups: usize,
    /// Whether the convolution adds a learned bias.
    pub bias: bool,
}

impl Conv2dConfig {
    /// A "same"-padded convolution with stride 1, one group.
    pub fn same(in_channels: usize, out_channels: usize, kernel_size: usize, bias: bool) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            padding: kernel_size / 2,
            groups: 1,
            bias,
        }
    }
}

/// A 2-D convolution with PyTorch's layout (`weight` is `O × I/groups × k × k`) and
/// PyTorch's default initialisation (uniform in `±1/√fan_in` for weight and bias).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

impl Conv2d {
    /// Creates `weight` (and `bias`) under `pb`.
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    pub fn new(cfg: &Conv2dConfig, pb: ParamBuilder) -> Result<Self> {
        let shape = Self::weight_shape(cfg);
        let bound = 1.0 / (Self::fan_in(cfg) as f64).sqrt();
        let weight = pb.param("weight", &shape, Init::Uniform { bound })?;
        let bias = Self::new_bias(cfg, &pb)?;
        Ok(Self {
            weight,
            bias,
            cfg: *cfg,
        })
    }

    /// The 1×1 width-changing convolution of the residual blocks: PyTorch's init followed
    /// by a softmax over the input channels of each output row (SPEC §4), so each output
    /// channel starts as a convex combination of the input channels.
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    pub fn new_softmax_init(cfg: &Conv2dConfig, pb: ParamBuilder) -> Result<Self> {
        let shape = Self::weight_shape(cfg);
        let bound = 1.0 / (Self::fan_in(cfg) as f64).sqrt();
        let raw = pb.sample(&shape, Init::Uniform { bound })?;
        let rows = raw.reshape((cfg.out_channels, ()))?;
        let normalised = candle_nn::ops::softmax_last_dim(&rows)?.reshape(shape.as_slice())?;
        let weight = pb.param_from("weight", &normalised)?;
        let bias = Self::new_bias(cfg, &pb)?;
        Ok(Self {
            weight,
            bias,
            cfg: *cfg,
        })
    }

    fn new_bias(cfg: &Conv2dConfig, pb: &ParamBuilder) -> Result<Option<Tensor>> {
        let bound = 1.0 / (Self::fan_in(cfg) as f64).sqrt();
        cfg.bias
            .then(|| pb.param("bias", &[cfg.out_channels], Init::Uniform { bound }))
            .transpose()
    }

    fn weight_shape(cfg: &Conv2dConfig) -> [usize; 4] {
        [
            cfg.out_channels,
            cfg.in_channels / cfg.groups,
            cfg.kernel_size,
            cfg.kernel_size,
        ]
    }

    fn fan_in(cfg: &Conv2dConfig) -> usize {
        cfg.in_channels / cfg.groups * cfg.kernel_size * cfg.kernel_size
    }

    /// Applies the convolution to `[B, I, H, W]`.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let y = x.conv2d(
            &self.weight,
            self.cfg.padding,
            self.cfg.stride,
            1,
            self.cfg.groups,
        )?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

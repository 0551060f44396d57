use candle_core::{Result as CResult, Tensor};

use crate::kernels::{self, ChannelStatistics};
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
    /// by a softmax over the input channels of each output row (docs/method.md §4), so
    /// each output channel starts as a convex combination of the input channels.
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

    /// Applies the convolution to `[B, I, H, W]` (`kernels::conv2d`, then the bias).
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let cfg = &self.cfg;
        let y = kernels::conv2d(x, &self.weight, cfg.padding, cfg.stride, cfg.groups)?;
        match &self.bias {
            Some(b) => kernels::channel_affine(&y, &b.ones_like()?, b),
            None => Ok(y),
        }
    }

    /// [`Conv2d::forward`], and where the convolution allows it (stride 1, one group, no
    /// bias, and a device whose kernel takes them) its output's per-channel batch mean and
    /// variance, taken as it is written (for a training-mode batch norm that follows).
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub(super) fn forward_with_statistics(
        &self,
        x: &Tensor,
    ) -> CResult<(Tensor, Option<ChannelStatistics>)> {
        if self.fusable() {
            return kernels::conv2d_with_statistics(x, &self.weight, self.cfg.padding);
        }
        Ok((self.forward(x)?, None))
    }

    /// Whether one op can run this convolution with something fused into its output.
    fn fusable(&self) -> bool {
        let cfg = &self.cfg;
        cfg.stride == 1 && cfg.groups == 1 && self.bias.is_none()
    }

    /// `relu(self.forward(x)·scale_o + shift_o [+ skip])` for `scale`, `shift: [O]` (an
    /// evaluation-mode batch norm) and `skip` (a residual connection, the output's shape),
    /// in one pass where the convolution allows it (stride 1, one group, no bias; see
    /// `kernels::conv2d_affine_relu`).
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward_affine_relu(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        skip: Option<&Tensor>,
    ) -> CResult<Tensor> {
        if self.fusable() {
            let padding = self.cfg.padding;
            return kernels::conv2d_affine_relu(x, &self.weight, scale, shift, skip, padding);
        }
        kernels::channel_affine_add_relu(&self.forward(x)?, scale, shift, skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    use crate::layers::max_abs_diff as max_diff;

    #[test]
    fn layer_matches_candle_conv2d_including_groups_bias_and_gradients() {
        for &(cin, cout, k, groups, bias) in &[
            (4, 6, 3, 2, false),
            (3, 4, 1, 1, true),
            (2, 3, 5, 1, true),
            (4, 4, 3, 4, true),
        ] {
            let cfg = Conv2dConfig {
                groups,
                ..Conv2dConfig::same(cin, cout, k, bias)
            };
            let pb = ParamBuilder::new(5, DType::F64, &Device::Cpu);
            let conv = Conv2d::new(&cfg, pb).unwrap();
            let x =
                Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, cin, 6, 5), &Device::Cpu).unwrap())
                    .unwrap();
            let reference = |x: &Tensor| -> CResult<Tensor> {
                let y = x.conv2d(&conv.weight, cfg.padding, 1, 1, groups)?;
                match &conv.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
                    None => Ok(y),
                }
            };
            let ours = conv.forward(x.as_tensor()).unwrap();
            let theirs = reference(x.as_tensor()).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-12);
            let r = Tensor::randn(0f64, 1.0, ours.dims(), &Device::Cpu).unwrap();
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut vars = vec![x.as_tensor().clone(), conv.weight.clone()];
            vars.extend(conv.bias.clone());
            for v in &vars {
                assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-12);
            }
        }
    }
}

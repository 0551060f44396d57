//! All-CNN-C (Springenberg et al. 2014) as the reference builds it.

use candle_core::{Result as CResult, Tensor};

use crate::layers::{self, BatchNorm, Conv2d, Conv2dConfig, Mode};
use crate::params::ParamBuilder;
use crate::Result;

/// Widths of the two halves of the network.
const C1: usize = 96;
const C2: usize = 192;

/// One `m.{i}` unit: convolution (with bias), optional batch norm without affine, ReLU.
#[derive(Debug, Clone)]
struct ConvUnit {
    conv: Conv2d,
    bn: Option<BatchNorm>,
}

impl ConvUnit {
    fn new(cfg: Conv2dConfig, batch_norm: bool, pb: ParamBuilder) -> Result<Self> {
        let conv = Conv2d::new(&cfg, pb.pp(0))?;
        let bn = batch_norm
            .then(|| BatchNorm::new(cfg.out_channels, false, pb.pp(1)))
            .transpose()?;
        Ok(Self { conv, bn })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        layers::conv_bn_relu(&self.conv, self.bn.as_ref(), x, None, mode)
    }
}

/// All-CNN-C: nine convolution units (stride-2 convolutions instead of pooling), dropout
/// after each stride-2 unit, a 1×1 convolution to the class scores and a global average.
///
/// Module indices follow the reference `nn.Sequential` `m`: units at 0–2, 4–6, 8–10,
/// dropout at 3 and 7, pooling at 11 and flatten at 12 (the last three hold no tensors).
#[derive(Debug, Clone)]
pub struct AllCnn {
    units: Vec<(usize, ConvUnit)>,
    dropout: f64,
}

impl AllCnn {
    /// Builds the network under `pb.pp("m")`.
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    pub fn new(
        in_channels: usize,
        classes: usize,
        kernel_size: usize,
        batch_norm: bool,
        dropout: f64,
        pb: ParamBuilder,
    ) -> Result<Self> {
        let k = kernel_size;
        let strided = |i, o| Conv2dConfig {
            stride: 2,
            ..Conv2dConfig::same(i, o, k, true)
        };
        let plan: [(usize, Conv2dConfig); 9] = [
            (0, Conv2dConfig::same(in_channels, C1, k, true)),
            (1, Conv2dConfig::same(C1, C1, k, true)),
            (2, strided(C1, C1)),
            (4, Conv2dConfig::same(C1, C2, k, true)),
            (5, Conv2dConfig::same(C2, C2, k, true)),
            (6, strided(C2, C2)),
            (8, Conv2dConfig::same(C2, C2, k, true)),
            (9, Conv2dConfig::same(C2, C2, k, true)),
            (10, Conv2dConfig::same(C2, classes, 1, true)),
        ];
        let m = pb.pp("m");
        let units = plan
            .into_iter()
            .map(|(i, cfg)| Ok((i, ConvUnit::new(cfg, batch_norm, m.pp(i))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { units, dropout })
    }

    /// Class scores `[B, classes]`.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let mut y = x.clone();
        for (i, unit) in &self.units {
            y = unit.forward(&y, mode)?;
            if *i == 2 || *i == 6 {
                y = layers::dropout(&y, self.dropout, mode)?;
            }
        }
        layers::global_avg_pool(&y)
    }
}

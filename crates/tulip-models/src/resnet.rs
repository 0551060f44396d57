//! The residual networks of the reference: ResNet22/34, ResNeXt34 and Wide ResNets.
//!
//! One trunk serves all of them (docs/method.md §4): a stem convolution, three stages of
//! blocks, global average pooling and a linear head. Every 3×3 convolution has stride 1;
//! a stage that halves the resolution ends its first block with a 2×2 average pool. When
//! a block changes width it first maps its input through a 1×1 convolution
//! (softmax-initialised), batch norm and ReLU, so the skip connection always adds tensors
//! of equal width.
//!
//! Deviation noted for the weight-product norm: in linearised mode the blocks keep their
//! skip connections (the reference's linearised basic block drops it, a slip of its code).

use candle_core::{Result as CResult, Tensor};

use crate::layers::{self, BatchNorm, Conv2d, Conv2dConfig, Linear, Mode};
use crate::params::ParamBuilder;
use crate::Result;

/// Which residual block a network is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// conv–BN–ReLU–(dropout)–conv–BN, add the input, ReLU.
    Basic,
    /// ResNeXt-style: a conv to `branches·w` channels, a conv grouped by branch, the
    /// branches averaged, add the input, ReLU.
    Branch {
        /// Number of branches.
        branches: usize,
    },
}

/// The shape of a residual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetSpec {
    /// Blocks in each of the three stages.
    pub blocks: [usize; 3],
    /// Output channels of the stem convolution.
    pub stem_width: usize,
    /// Channels of each stage.
    pub widths: [usize; 3],
    /// Block type.
    pub block: BlockKind,
}

impl ResNetSpec {
    /// CIFAR ResNet with base width `base` (stages `b, 2b, 4b`).
    pub fn resnet(blocks: [usize; 3], base: usize, block: BlockKind) -> Self {
        Self {
            blocks,
            stem_width: base,
            widths: [base, 2 * base, 4 * base],
            block,
        }
    }

    /// Wide ResNet WRN-`depth`-`k`: `(depth − 4)/6` basic blocks per stage, a 16-channel
    /// stem and stages `16k, 32k, 64k`.
    pub fn wide(depth: usize, k: usize) -> Self {
        let n = (depth - 4) / 6;
        Self {
            blocks: [n, n, n],
            stem_width: 16,
            widths: [16 * k, 32 * k, 64 * k],
            block: BlockKind::Basic,
        }
    }
}

/// Options shared by every block.
#[derive(Debug, Clone, Copy)]
struct BlockOptions {
    kernel_size: usize,
    batch_norm: bool,
    dropout: f64,
}

/// A convolution followed by (optional) affine batch norm; without batch norm the
/// convolution carries a bias instead.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: Option<BatchNorm>,
}

impl ConvBn {
    fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let y = self.conv.forward(x)?;
        match &self.bn {
            Some(bn) => bn.forward(&y, mode),
            None => Ok(y),
        }
    }

    /// `relu(self.forward(x))`, the ReLU fused into the batch norm where there is one, and
    /// in evaluation mode both into the convolution.
    fn forward_relu(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        layers::conv_bn_relu(&self.conv, self.bn.as_ref(), x, None, mode)
    }

    /// `relu(self.forward(x) + skip)`, in evaluation mode fused into the convolution.
    fn forward_add_relu(&self, x: &Tensor, skip: &Tensor, mode: Mode) -> CResult<Tensor> {
        layers::conv_bn_relu(&self.conv, self.bn.as_ref(), x, Some(skip), mode)
    }
}

/// `fcc`: the 1×1 width-changing map at the start of a block.
fn width_change(cin: usize, cout: usize, opt: BlockOptions, pb: &ParamBuilder) -> Result<ConvBn> {
    let pb = pb.pp("fcc");
    let conv =
        Conv2d::new_softmax_init(&Conv2dConfig::same(cin, cout, 1, !opt.batch_norm), pb.pp(0))?;
    let bn = opt
        .batch_norm
        .then(|| BatchNorm::new(cout, true, pb.pp(1)))
        .transpose()?;
    Ok(ConvBn { conv, bn })
}

#[derive(Debug, Clone)]
enum BlockBody {
    /// `[first, second]` conv–BN pairs.
    Basic([ConvBn; 2]),
    Branch {
        first: ConvBn,
        second: ConvBn,
        branches: usize,
    },
}

#[derive(Debug, Clone)]
struct Block {
    fcc: Option<ConvBn>,
    body: BlockBody,
    pool: bool,
    dropout: f64,
}

impl Block {
    fn new(
        kind: BlockKind,
        cin: usize,
        cout: usize,
        pool: bool,
        opt: BlockOptions,
        pb: ParamBuilder,
    ) -> Result<Self> {
        let fcc = (cin != cout)
            .then(|| width_change(cin, cout, opt, &pb))
            .transpose()?;
        let k = opt.kernel_size;
        let bias = !opt.batch_norm;
        let conv_bn =
            |cfg: Conv2dConfig, conv_pb: ParamBuilder, bn_pb: ParamBuilder| -> Result<ConvBn> {
                let conv = Conv2d::new(&cfg, conv_pb)?;
                let bn = opt
                    .batch_norm
                    .then(|| BatchNorm::new(cfg.out_channels, true, bn_pb))
                    .transpose()?;
                Ok(ConvBn { conv, bn })
            };
        let body = match kind {
            BlockKind::Basic => BlockBody::Basic([
                conv_bn(
                    Conv2dConfig::same(cout, cout, k, bias),
                    pb.pp("convs").pp(0),
                    pb.pp("bns").pp(0),
                )?,
                conv_bn(
                    Conv2dConfig::same(cout, cout, k, bias),
                    pb.pp("convs").pp(1),
                    pb.pp("bns").pp(1),
                )?,
            ]),
            BlockKind::Branch { branches } => {
                let wide = cout * branches;
                let grouped = Conv2dConfig {
                    groups: branches,
                    ..Conv2dConfig::same(wide, wide, k, bias)
                };
                BlockBody::Branch {
                    first: conv_bn(
                        Conv2dConfig::same(cout, wide, k, bias),
                        pb.pp("conv0"),
                        pb.pp("bn0"),
                    )?,
                    second: conv_bn(grouped, pb.pp("conv1"), pb.pp("bn1"))?,
                    branches,
                }
            }
        };
        Ok(Self {
            fcc,
            body,
            pool,
            dropout: opt.dropout,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let x = match &self.fcc {
            Some(fcc) => fcc.forward_relu(x, mode)?,
            None => x.clone(),
        };
        let y = match &self.body {
            BlockBody::Basic([first, second]) => {
                let y = first.forward_relu(&x, mode)?;
                let y = layers::dropout(&y, self.dropout, mode)?;
                second.forward_add_relu(&y, &x, mode)?
            }
            BlockBody::Branch {
                first,
                second,
                branches,
            } => {
                let y = first.forward_relu(&x, mode)?;
                let y = layers::dropout(&y, self.dropout, mode)?;
                let y = second.forward(&y, mode)?;
                // Channels are laid out branch-major: average the branches.
                let (b, c, h, w) = y.dims4()?;
                let y = y.reshape((b, *branches, c / branches, h, w))?.mean(1)?;
                layers::add_relu(&x, &y, mode)?
            }
        };
        if self.pool {
            layers::avg_pool2x2(&y)
        } else {
            Ok(y)
        }
    }
}

/// A residual network of the reference (see the module docs).
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: Conv2d,
    stem_bn: Option<BatchNorm>,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    /// Builds the network; names follow the reference (`layer0.0`, `layer{s}.{j}`, `fc`).
    ///
    /// # Errors
    /// Fails if the tensors cannot be allocated.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: &ResNetSpec,
        in_channels: usize,
        classes: usize,
        kernel_size: usize,
        batch_norm: bool,
        dropout: f64,
        pb: ParamBuilder,
    ) -> Result<Self> {
        let opt = BlockOptions {
            kernel_size,
            batch_norm,
            dropout,
        };
        let stem_cfg = Conv2dConfig::same(in_channels, spec.stem_width, kernel_size, true);
        let stem = Conv2d::new(&stem_cfg, pb.pp("layer0").pp(0))?;
        let stem_bn = batch_norm
            .then(|| BatchNorm::new(spec.stem_width, false, pb.pp("layer0").pp(1)))
            .transpose()?;
        let mut blocks = Vec::new();
        let mut cin = spec.stem_width;
        for (stage, (&n, &width)) in spec.blocks.iter().zip(&spec.widths).enumerate() {
            for j in 0..n {
                let pool = stage > 0 && j == 0;
                let pb = pb.pp(format!("layer{}", stage + 1)).pp(j);
                blocks.push(Block::new(spec.block, cin, width, pool, opt, pb)?);
                cin = width;
            }
        }
        let fc = Linear::new(cin, classes, pb.pp("fc"))?;
        Ok(Self {
            stem,
            stem_bn,
            blocks,
            fc,
        })
    }

    /// Class scores `[B, classes]`.
    ///
    /// # Errors
    /// Fails on a shape mismatch.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let mut y = layers::conv_bn_relu(&self.stem, self.stem_bn.as_ref(), x, None, mode)?;
        for block in &self.blocks {
            y = block.forward(&y, mode)?;
        }
        self.fc.forward(&layers::global_avg_pool(&y)?)
    }
}

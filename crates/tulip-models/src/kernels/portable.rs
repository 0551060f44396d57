//! The ops written with Candle's own tensor ops, which every device runs (CUDA, Metal):
//! each op's implementation off the CPU, and the reference the CPU kernels are tested
//! against. Candle differentiates these by itself, to any order.

use candle_core::{Result, Tensor};

use super::TrainingBatchNorm;

/// Every dimension of `x` but 1 (the channels).
fn all_but_channels(x: &Tensor) -> Vec<usize> {
    (0..x.rank()).filter(|&d| d != 1).collect()
}

/// `v: [C]` shaped `[1, C, 1, …]` to broadcast along dimension 1 of `x`.
fn along_channels(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    v.reshape(shape.as_slice())
}

/// `max(x, 0)`.
pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// `relu(x + y)`.
pub(crate) fn add_relu(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    (x + y)?.relu()
}

/// 2×2 average pooling with stride 2, flooring odd sizes: the even part cut out, then a
/// mean over each window.
pub(crate) fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?;
    x.reshape((b, c, h2, 2, w2, 2))?.mean((3, 5))
}

/// Sum over every dimension but 1: `[B, C, …] → [C]`.
pub(crate) fn channel_sum(x: &Tensor) -> Result<Tensor> {
    x.sum(all_but_channels(x).as_slice())
}

/// `Σ x·y` over every dimension but 1.
pub(crate) fn channel_dot(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    (x * y)?.sum(all_but_channels(x).as_slice())
}

/// `x·a_c + s_c` along dimension 1.
pub(crate) fn channel_affine(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&along_channels(a, x)?)?
        .broadcast_add(&along_channels(s, x)?)
}

/// `relu(x·a_c + s_c)`.
pub(crate) fn channel_affine_relu(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    channel_affine(x, a, s)?.relu()
}

/// Candle's 2-D convolution (dilation 1).
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, groups)
}

/// `relu(conv2d(x, w)·scale_o + shift_o [+ skip])` as separate ops.
pub(crate) fn conv2d_affine_relu(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    skip: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let y = conv2d(x, w, padding, 1, 1)?;
    match skip {
        None => channel_affine_relu(&y, scale, shift),
        Some(skip) => add_relu(&channel_affine(&y, scale, shift)?, skip),
    }
}

/// Training-mode batch norm from the per-channel ops: two-pass statistics (the mean, then
/// the mean square of the centred values) and one scale-and-shift of the centred input.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<TrainingBatchNorm> {
    let n = (x.elem_count() / x.dim(1)?) as f64;
    let mean = (channel_sum(x)? / n)?;
    let ones = mean.ones_like()?;
    let centred = channel_affine(x, &ones, &mean.neg()?)?;
    let variance = (channel_dot(&centred, &centred)? / n)?;
    let inv_std = (&variance + eps)?.sqrt()?.recip()?;
    let (scale, shift) = match affine {
        Some((w, b)) => ((w * inv_std)?, b.clone()),
        None => (inv_std.clone(), inv_std.zeros_like()?),
    };
    let output = if relu {
        channel_affine_relu(&centred, &scale, &shift)?
    } else {
        channel_affine(&centred, &scale, &shift)?
    };
    Ok(TrainingBatchNorm {
        output,
        mean,
        variance,
    })
}

/// Each op's CPU kernel against its portable implementation on the CPU, on seeded random
/// inputs: values, first-order gradients and second-order gradients (which run the
/// kernels' backward ops and those ops' own derivatives), in f64 and f32; then both
/// through a small stack of layers, as the training step and the Lipschitz penalties use
/// them. The two sides share no arithmetic: one is the kernels, the other Candle's ops
/// differentiated by Candle.
#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Result, Tensor, Var};

    use crate::kernels::test_values::seeded_uniform as randn;
    use crate::kernels::{self, cpu, force_portable, portable};
    use crate::layers::{self, second_order_on, BatchNorm, Conv2d, Conv2dConfig, Mode};
    use crate::{first_order_gradients, input_gradient_only, ParamBuilder, Params};

    /// Relative tolerances (of the largest reference entry) per type: f64 agrees to
    /// rounding; f32 sums in another order on each side.
    const TOLERANCES: [(DType, f64); 2] = [(DType::F64, 1e-12), (DType::F32, 1e-5)];

    /// `|a − b|∞ / |b|∞` (0 when both are zero).
    fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
        let max = |t: &Tensor| -> f64 {
            t.to_dtype(DType::F64)
                .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
                .expect("a float tensor")
        };
        let difference = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .expect("tensors of one shape");
        let (d, scale) = (max(&difference), max(b));
        if d == 0.0 {
            0.0
        } else {
            d / scale
        }
    }

    /// Asserts that every named tensor of `ours` is within `tol` of `reference`'s.
    fn assert_agree(
        case: &str,
        ours: &[(String, Tensor)],
        reference: &[(String, Tensor)],
        tol: f64,
    ) {
        let names = |r: &[(String, Tensor)]| r.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(ours), names(reference), "{case}: the same results");
        for ((name, a), (_, b)) in ours.iter().zip(reference) {
            assert_eq!(a.dims(), b.dims(), "{case}: {name}");
            let err = relative_error(a, b);
            assert!(err <= tol, "{case}: {name} differs by {err:e} (relative)");
        }
    }

    /// `z = op(inputs)` (the inputs made variables, unless `constant`), the gradients of
    /// `⟨z, q⟩` with respect to the variables, and those of `⟨z, r⟩ + Σ ‖∂⟨z, q⟩/∂v‖²`
    /// (`q`, `r` seeded, of `z`'s shape): the value, first and second order.
    fn value_and_gradients(
        op: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        constant: &[usize],
    ) -> Vec<(String, Tensor)> {
        let vars: Vec<Option<Var>> = (0..inputs.len())
            .map(|i| (!constant.contains(&i)).then(|| Var::from_tensor(&inputs[i]).unwrap()))
            .collect();
        let args: Vec<Tensor> = vars
            .iter()
            .zip(inputs)
            .map(|(v, t)| {
                v.as_ref()
                    .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
            })
            .collect();
        let z = op(&args).unwrap();
        let dtype = z.dtype();
        let q = randn(z.dims(), 101).to_dtype(dtype).unwrap();
        let r = randn(z.dims(), 102).to_dtype(dtype).unwrap();
        let first = (&z * &q).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![("value".to_string(), z.clone())];
        let mut outer = (&z * &r).unwrap().sum_all().unwrap();
        let variables: Vec<(usize, &Tensor)> = args
            .iter()
            .enumerate()
            .filter(|(i, _)| vars[*i].is_some())
            .collect();
        for &(i, v) in &variables {
            let g = first.get(v).expect("a first-order gradient").clone();
            outer = (outer + g.sqr().unwrap().sum_all().unwrap()).unwrap();
            out.push((format!("∂/∂input {i}"), g));
        }
        let second = outer.backward().unwrap();
        for &(i, v) in &variables {
            if let Some(g) = second.get(v) {
                out.push((format!("second order ∂/∂input {i}"), g.clone()));
            }
        }
        out
    }

    /// `kernel_op` and `portable_op` through [`value_and_gradients`], in f64 and f32, the
    /// inputs cast from `inputs`; `portable_op` with the ops sent to their portable
    /// implementations.
    fn check_pair(
        case: &str,
        kernel_op: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        portable_op: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        constant: &[usize],
    ) {
        second_order_on();
        for (dtype, tol) in TOLERANCES {
            let cast: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
            let kernel = value_and_gradients(kernel_op, &cast, constant);
            let portable =
                force_portable::portable_ops(|| value_and_gradients(portable_op, &cast, constant));
            assert_agree(&format!("{case}, {dtype:?}"), &kernel, &portable, tol);
        }
    }

    /// [`check_pair`] of an op of the face, which chooses its implementation.
    fn check(
        case: &str,
        op: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        constant: &[usize],
    ) {
        check_pair(case, op, op, inputs, constant);
    }

    const NCHW: [usize; 4] = [3, 4, 5, 6];

    #[test]
    fn relu_and_add_relu() {
        check("relu", &|a| kernels::relu(&a[0]), &[randn(&NCHW, 1)], &[]);
        let inputs = [randn(&NCHW, 2), randn(&NCHW, 3)];
        check(
            "add_relu",
            &|a| kernels::add_relu(&a[0], &a[1]),
            &inputs,
            &[],
        );
    }

    #[test]
    fn avg_pool2x2_on_even_and_odd_sizes() {
        for (h, w) in [(6, 4), (5, 7)] {
            let x = randn(&[2, 3, h, w], 4);
            // Through a tanh, so that the second-order gradient is not zero.
            let op = |a: &[Tensor]| kernels::avg_pool2x2(&a[0].tanh()?);
            check(&format!("avg_pool2x2 {h}×{w}"), &op, &[x], &[]);
        }
    }

    #[test]
    fn channel_ops() {
        let (x, y) = (randn(&NCHW, 5), randn(&NCHW, 6));
        let (a, s) = (randn(&[4], 7), randn(&[4], 8));
        // Squared, so that the second-order gradients of these linear ops are not zero.
        // The sums and dots are no op of the face (batch norm uses them): each side called
        // by name.
        let sum = |t: &[Tensor]| cpu::channel_sum(&t[0].sqr()?);
        let portable_sum = |t: &[Tensor]| portable::channel_sum(&t[0].sqr()?);
        check_pair(
            "channel_sum",
            &sum,
            &portable_sum,
            std::slice::from_ref(&x),
            &[],
        );
        let dot = |t: &[Tensor]| cpu::channel_dot(&t[0], &t[1].tanh()?);
        let portable_dot = |t: &[Tensor]| portable::channel_dot(&t[0], &t[1].tanh()?);
        check_pair(
            "channel_dot",
            &dot,
            &portable_dot,
            &[x.clone(), y.clone()],
            &[],
        );
        let self_dot = |t: &[Tensor]| cpu::channel_dot(&t[0], &t[0]);
        let portable_self_dot = |t: &[Tensor]| portable::channel_dot(&t[0], &t[0]);
        let case = "channel_dot of a tensor with itself";
        check_pair(
            case,
            &self_dot,
            &portable_self_dot,
            std::slice::from_ref(&x),
            &[],
        );
        let inputs = [x, a, s];
        let affine = |t: &[Tensor]| kernels::channel_affine(&t[0].tanh()?, &t[1], &t[2]);
        check("channel_affine", &affine, &inputs, &[]);
        let affine_relu = |t: &[Tensor]| kernels::channel_affine_relu(&t[0].tanh()?, &t[1], &t[2]);
        check("channel_affine_relu", &affine_relu, &inputs, &[]);
        let with_skip = |t: &[Tensor]| {
            kernels::channel_affine_add_relu(&t[0], &t[1], &t[2], Some(&t[3].tanh()?))
        };
        check(
            "channel_affine_add_relu",
            &with_skip,
            &[inputs[0].clone(), inputs[1].clone(), inputs[2].clone(), y],
            &[],
        );
    }

    /// Stride 1 with each padding the kernels take, a 1×1 and a 5×5 kernel, and groups.
    #[test]
    fn conv2d_at_stride_1() {
        for (c, o, k, padding, groups) in [
            (3, 4, 3, 1, 1),
            (3, 5, 3, 0, 1),
            (2, 3, 1, 0, 1),
            (2, 3, 5, 2, 1),
            (4, 6, 3, 1, 2),
        ] {
            let x = randn(&[2, c, 6, 5], 9);
            let w = randn(&[o, c / groups, k, k], 10);
            let op = |t: &[Tensor]| kernels::conv2d(&t[0], &t[1], padding, 1, groups);
            check(
                &format!("conv2d {k}×{k}, padding {padding}, {groups} groups"),
                &op,
                &[x, w],
                &[],
            );
        }
    }

    /// The fused op (constant kernel and coefficients) with and without the residual;
    /// with a variable kernel, the separate ops.
    #[test]
    fn conv2d_affine_relu_fused_and_not() {
        for (c, o, k, padding) in [(3, 5, 3, 1), (4, 8, 1, 0)] {
            let x = randn(&[2, c, 6, 5], 11);
            let w = randn(&[o, c, k, k], 12);
            let (scale, shift) = (randn(&[o], 13), randn(&[o], 14));
            let skip = randn(
                &[2, o, 6 + 2 * padding + 1 - k, 5 + 2 * padding + 1 - k],
                15,
            );
            let inputs = [x, w, scale, shift, skip];
            let op = |t: &[Tensor]| {
                kernels::conv2d_affine_relu(&t[0], &t[1], &t[2], &t[3], None, padding)
            };
            let with_skip = |t: &[Tensor]| {
                kernels::conv2d_affine_relu(&t[0], &t[1], &t[2], &t[3], Some(&t[4]), padding)
            };
            let case = format!("conv2d_affine_relu {k}×{k}");
            check(&case, &op, &inputs, &[1, 2, 3, 4]);
            check(
                &format!("{case} with a residual"),
                &with_skip,
                &inputs,
                &[1, 2, 3],
            );
            check(
                &format!("{case}, variable kernel"),
                &with_skip,
                &inputs,
                &[],
            );
        }
    }

    /// The output and the mean and variance it normalised with, as one tensor
    /// `[output…, mean…, variance…]` so that all three are compared.
    fn batch_norm_results(
        x: &Tensor,
        affine: Option<(&Tensor, &Tensor)>,
        relu: bool,
        statistics: bool,
        w: Option<&Tensor>,
    ) -> Result<Tensor> {
        // With `statistics`, `x` is first convolved by `w`, the convolution taking them.
        let (x, taken) = match (statistics, w) {
            (true, Some(w)) => kernels::conv2d_with_statistics(x, w, 1)?,
            _ => (x.clone(), None),
        };
        let bn = kernels::batch_norm_train(&x, affine, taken, 1e-5, relu)?;
        // The CPU kernel's statistics are constants (they feed the running statistics only):
        // their values are compared, not their gradients.
        Tensor::cat(
            &[
                bn.output.flatten_all()?,
                bn.mean.detach(),
                bn.variance.detach(),
            ],
            0,
        )
    }

    /// Training-mode batch norm with and without affine terms and the ReLU, its statistics
    /// taken by itself or by the convolution before it, on data whose mean is far from 0.
    #[test]
    fn batch_norm_train_with_and_without_its_options() {
        let x = randn(&NCHW, 16).affine(3.0, 2.0).unwrap();
        let (w, b) = (randn(&[4], 17).affine(0.5, 1.0).unwrap(), randn(&[4], 18));
        let kernel = randn(&[4, 4, 3, 3], 19);
        for relu in [false, true] {
            let affine =
                |t: &[Tensor]| batch_norm_results(&t[0], Some((&t[1], &t[2])), relu, false, None);
            check(
                &format!("batch norm, ReLU {relu}"),
                &affine,
                &[x.clone(), w.clone(), b.clone()],
                &[],
            );
            let plain = |t: &[Tensor]| batch_norm_results(&t[0], None, relu, false, None);
            check(
                &format!("batch norm without affine terms, ReLU {relu}"),
                &plain,
                std::slice::from_ref(&x),
                &[],
            );
            let after_conv = |t: &[Tensor]| {
                batch_norm_results(&t[0], Some((&t[1], &t[2])), relu, true, Some(&t[3]))
            };
            let inputs = [x.clone(), w.clone(), b.clone(), kernel.clone()];
            check(
                &format!("convolution then batch norm, ReLU {relu}"),
                &after_conv,
                &inputs,
                &[],
            );
        }
    }

    /// A residual block's layers, built from `seed` so that two builds are equal.
    struct Stack {
        stem: Conv2d,
        stem_bn: BatchNorm,
        conv: Conv2d,
        bn: BatchNorm,
        grouped: Conv2d,
        params: Params,
    }

    impl Stack {
        fn new(dtype: DType) -> Self {
            let pb = ParamBuilder::new(21, dtype, &Device::Cpu);
            let grouped = Conv2dConfig {
                groups: 2,
                ..Conv2dConfig::same(4, 4, 3, true)
            };
            Self {
                stem: Conv2d::new(&Conv2dConfig::same(3, 4, 3, false), pb.pp(0)).unwrap(),
                stem_bn: BatchNorm::new(4, true, pb.pp(1)).unwrap(),
                conv: Conv2d::new(&Conv2dConfig::same(4, 4, 3, false), pb.pp(2)).unwrap(),
                bn: BatchNorm::new(4, true, pb.pp(3)).unwrap(),
                grouped: Conv2d::new(&grouped, pb.pp(4)).unwrap(),
                params: pb.params(),
            }
        }

        /// conv → batch norm → ReLU, conv → batch norm → + residual → ReLU, a grouped
        /// convolution with a bias, ReLU and average pooling.
        fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
            let h = layers::conv_bn_relu(&self.stem, Some(&self.stem_bn), x, None, mode)?;
            let h = layers::conv_bn_relu(&self.conv, Some(&self.bn), &h, Some(&h), mode)?;
            layers::avg_pool2x2(&layers::relu(&self.grouped.forward(&h)?, mode)?)
        }

        /// The gradients of every trainable parameter, named.
        fn gradients(&self, grads: &candle_core::backprop::GradStore) -> Vec<(String, Tensor)> {
            self.params
                .trainable()
                .filter_map(|p| Some((p.name.clone(), grads.get(p.var.as_tensor())?.clone())))
                .collect()
        }
    }

    /// A training step's gradients through the layers, kernels against portable: the
    /// parameter gradients of a loss (first order, with the kernels' shortcuts), and those
    /// of a loss plus a gradient-norm penalty `‖∂⟨z, q⟩/∂x‖²` whose inner pass computes the
    /// input's gradient only (second order); both after a training-mode pass has updated
    /// the running statistics, compared through an evaluation-mode pass.
    #[test]
    fn training_gradients_through_conv_batch_norm_relu_layers() {
        second_order_on();
        let x0 = randn(&[4, 3, 6, 6], 22).affine(2.0, 0.5).unwrap();
        for (dtype, tol) in TOLERANCES {
            let run = || {
                let stack = Stack::new(dtype);
                let x = Var::from_tensor(&x0.to_dtype(dtype).unwrap()).unwrap();
                let z = stack.forward(x.as_tensor(), Mode::Train).unwrap();
                let q = randn(z.dims(), 23).to_dtype(dtype).unwrap();
                let r = randn(z.dims(), 24).to_dtype(dtype).unwrap();
                let loss = || (&z * &r).unwrap().sum_all().unwrap();
                let first = first_order_gradients(|| loss().backward().unwrap());
                let mut out = vec![("output".to_string(), z.clone())];
                out.extend(
                    stack
                        .gradients(&first)
                        .into_iter()
                        .map(|(n, g)| (format!("first order ∂/∂{n}"), g)),
                );
                let inner = input_gradient_only(|| {
                    (&z * &q).unwrap().sum_all().unwrap().backward().unwrap()
                });
                let gx = inner.get(x.as_tensor()).unwrap().clone();
                let penalised = (loss() + gx.sqr().unwrap().sum_all().unwrap()).unwrap();
                let second = penalised.backward().unwrap();
                out.push(("input gradient".to_string(), gx));
                out.extend(
                    stack
                        .gradients(&second)
                        .into_iter()
                        .map(|(n, g)| (format!("penalised ∂/∂{n}"), g)),
                );
                out.push((
                    "evaluation output".to_string(),
                    stack.forward(x.as_tensor(), Mode::Eval).unwrap(),
                ));
                out
            };
            let kernel = run();
            let portable = force_portable::portable_ops(run);
            // The output, the input gradient, the evaluation output and two gradients of each of
            // the eight trainable parameters.
            assert_eq!(kernel.len(), 19, "every trainable parameter has gradients");
            assert_agree(&format!("layers, {dtype:?}"), &kernel, &portable, tol);
        }
    }
}

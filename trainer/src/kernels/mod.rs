//! CPU kernels for what the models spend their time in, as candle custom ops with their own
//! backward passes: convolution (im2col + the `gemm` crate, with bias and ReLU fused), 2x2
//! max-pooling, training-mode batch normalization (+ ReLU), the residual add + ReLU, and the
//! ViT's LayerNorm and softmax.
//!
//! Each public function takes and returns ordinary tensors. On other devices, for other dtypes, or
//! when switched off with [`set_enabled`] (for A/B benchmarks), it computes the same thing with
//! candle's own ops instead.

mod alloc;
mod conv;
mod conv_bn;
mod eltwise;
mod gemm;
mod im2col;
mod lanes;
mod linear;
mod norm;
mod pool;
mod scratch;
mod storage;
mod transformer;
mod vec8;
mod vit_block;
mod winograd;
mod winograd_mul;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{BatchNorm, Conv2d, Module};

pub use alloc::tune_allocator;
pub use im2col::ConvGeom;
pub use norm::BatchStats;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the custom kernels on or off for the whole process (candle's ops run when off).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

static WINOGRAD: AtomicBool = AtomicBool::new(true);

/// Turns Winograd's minimal filtering (F(4x4, 3x3) on planes of 16 pixels or more, F(2x2, 3x3) on
/// smaller ones) for the 3x3 stride-1 convolutions with at least 16 channels on or off (im2col +
/// gemm when off). On by default (docs/benchmarks.md, "Winograd"); off for A/B benchmarks
/// (`bench --kernels im2col`) and for the tests that compare the two paths.
pub fn set_winograd(on: bool) {
    WINOGRAD.store(on, Ordering::Relaxed);
}

fn winograd_enabled() -> bool {
    WINOGRAD.load(Ordering::Relaxed)
}

/// Whether the custom CPU kernels handle this tensor.
fn fast(x: &Tensor) -> bool {
    enabled() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// conv2d(x, w) + bias, then ReLU when `relu`: x [N, C, H, W], w [O, C, KH, KW], bias [O].
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    conv2d_pool(x, w, bias, stride, padding, relu, 1)
}

/// [`conv2d`] followed by k x k max-pooling with stride k (k = 1: none), fused so that the
/// unpooled output never leaves the cache.
pub fn conv2d_pool(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
    pool: usize,
) -> Result<Tensor> {
    if !fast(x) {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        let y = match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        let y = if relu { y.relu()? } else { y };
        return if pool > 1 { max_pool_reduce(&y, pool) } else { Ok(y) };
    }
    let tracked = x.track_op() || w.track_op() || bias.is_some_and(|b| b.track_op());
    let op = conv::Conv2d::new(stride, padding, relu, pool, tracked);
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// A candle_nn convolution layer (dilation 1, one group) through [`conv2d`], ReLU after when `relu`.
pub fn conv_layer(x: &Tensor, conv: &Conv2d, relu: bool) -> Result<Tensor> {
    let cfg = conv.config();
    if cfg.dilation != 1 || cfg.groups != 1 {
        let y = conv.forward(x)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    conv2d(x, conv.weight(), conv.bias(), cfg.stride, cfg.padding, relu)
}

/// A candle_nn convolution layer with ReLU and k x k max-pooling fused (see [`conv2d_pool`]).
pub fn conv_relu_pool_layer(x: &Tensor, conv: &Conv2d, pool: usize) -> Result<Tensor> {
    let cfg = conv.config();
    if cfg.dilation != 1 || cfg.groups != 1 {
        return max_pool2d(&conv.forward(x)?.relu()?, pool);
    }
    conv2d_pool(x, conv.weight(), conv.bias(), cfg.stride, cfg.padding, true, pool)
}

/// A bias-free convolution layer followed by `bn` (training or eval mode), ReLU after when `relu`.
/// Eval mode folds the normalization into the convolution.
pub fn conv_bn(x: &Tensor, conv: &Conv2d, bn: &BatchNorm, train: bool, relu: bool) -> Result<Tensor> {
    let cfg = conv.config();
    let plain = cfg.dilation != 1 || cfg.groups != 1 || conv.bias().is_some();
    if plain || !fast(x) {
        let y = conv.forward(x)?.apply_t(bn, train)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    if train {
        conv_bn_train(x, conv.weight(), bn, cfg.stride, cfg.padding, relu)
    } else {
        conv_bn_eval(x, conv.weight(), bn, cfg.stride, cfg.padding, relu)
    }
}

/// Convolution + training-mode `bn` (+ ReLU) as one op (see `conv_bn.rs`), with the running
/// statistics updated from the batch; the two-op path where the BatchNorm has no affine
/// parameters or its running statistics are not variables.
fn conv_bn_train(x: &Tensor, w: &Tensor, bn: &BatchNorm, stride: usize, padding: usize, relu: bool) -> Result<Tensor> {
    let Some((gamma, beta)) = trainable_affine(bn) else {
        return batch_norm(&conv2d(x, w, None, stride, padding, false)?, bn, true, relu);
    };
    let tracked = x.track_op() || w.track_op() || gamma.track_op() || beta.track_op();
    let op = conv_bn::ConvBnTrain::new(stride, padding, bn.eps(), relu, tracked);
    let stats = op.stats_handle();
    let gb = Tensor::cat(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
    update_from_fused(bn, &stats)?;
    Ok(y)
}

/// The running-statistics update from the batch statistics a fused op left during its forward pass.
fn update_from_fused(bn: &BatchNorm, stats: &std::sync::Mutex<Option<BatchStats>>) -> Result<()> {
    let stats = stats.lock().expect("conv-bn stats").take();
    update_running_stats(bn, &stats.ok_or_else(|| candle_core::Error::Msg("conv-bn: no batch statistics".into()))?)
}

/// relu(`bn`(conv(x)) + shortcut): the end of a residual block, as one op when training on the
/// CPU (see `conv_bn::ConvBnAddRelu`), else as [`conv_bn`] and [`add_relu`].
pub fn conv_bn_add_relu(x: &Tensor, conv: &Conv2d, bn: &BatchNorm, shortcut: &Tensor, train: bool) -> Result<Tensor> {
    let cfg = conv.config();
    let plain = cfg.dilation != 1 || cfg.groups != 1 || conv.bias().is_some();
    let affine = trainable_affine(bn).filter(|_| train && !plain && fast(x) && fast(shortcut));
    let Some((gamma, beta)) = affine else {
        return add_relu(&conv_bn(x, conv, bn, train, false)?, shortcut);
    };
    let w = conv.weight();
    let kernel: [usize; 4] = w.dims4()?.into();
    let params = Tensor::cat(&[&w.flatten_all()?, gamma, beta], 0)?;
    let tracked = x.track_op() || params.track_op() || shortcut.track_op();
    let op = conv_bn::ConvBnAddRelu::new(kernel, cfg.stride, cfg.padding, bn.eps(), tracked);
    let stats = op.stats_handle();
    let y = x.contiguous()?.apply_op3(&shortcut.contiguous()?, &params, op)?;
    update_from_fused(bn, &stats)?;
    Ok(y)
}

/// Max-pooling with a k x k window and stride k.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    if !fast(x) {
        return max_pool_reduce(x, k);
    }
    x.contiguous()?.apply_op1(pool::MaxPool2d { k })
}

/// The fallback pooling: a max over a reshaped view. candle 0.11.1's `max_pool2d` backward scales
/// the gradient by 1/k² (it multiplies by the share of maxima in the window instead of dividing by
/// their count); the `max` reduction's backward routes the full gradient to the maximum.
fn max_pool_reduce(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    // Partial windows at the bottom and right are dropped, as PyTorch does.
    let x = x.narrow(2, 0, h / k * k)?.narrow(3, 0, w / k * k)?;
    x.reshape((n, c, h / k, k, w / k, k))?.max(5)?.max(3)
}

/// relu(a + b).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fast(a) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, eltwise::AddRelu)
}

/// `bn` applied to x (batch statistics and a running-statistics update when `train`, the running
/// statistics otherwise), then ReLU when `relu`. Matches `x.apply_t(bn, train)` of candle_nn.
pub fn batch_norm(x: &Tensor, bn: &BatchNorm, train: bool, relu: bool) -> Result<Tensor> {
    let affine = trainable_affine(bn).filter(|_| fast(x) && train);
    let Some((weight, bias)) = affine else {
        let y = x.apply_t(bn, train)?;
        return if relu { y.relu() } else { Ok(y) };
    };
    let stats = BatchStats::of(x)?;
    update_running_stats(bn, &stats)?;
    let op = norm::BatchNormTrain::new(&stats, bn.eps(), relu);
    x.contiguous()?.apply_op3(weight, bias, op)
}

/// The affine parameters of a BatchNorm whose training the custom ops can take over: it has
/// them, and its running statistics are variables (they are updated in place).
fn trainable_affine(bn: &BatchNorm) -> Option<(&Tensor, &Tensor)> {
    let in_place = bn.running_mean().is_variable() && bn.running_var().is_variable();
    bn.weight_and_bias().filter(|_| in_place)
}

/// PyTorch's update: running = (1 - momentum) running + momentum batch, with the unbiased
/// variance (n / (n - 1)) in the running variance.
fn update_running_stats(bn: &BatchNorm, stats: &BatchStats) -> Result<()> {
    let m = bn.momentum();
    let n = stats.count as f64;
    let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    let blend = |running: &Tensor, batch: Vec<f64>| -> Result<()> {
        let old: Vec<f32> = running.to_vec1()?;
        let new: Vec<f32> = old.iter().zip(batch).map(|(&r, b)| ((1.0 - m) * r as f64 + m * b) as f32).collect();
        // The BatchNorm's running statistics are variables of the model's VarMap: set them in place.
        Var::from_tensor(running)?.set(&Tensor::from_vec(new, running.shape(), running.device())?)
    };
    blend(bn.running_mean(), stats.mean.clone())?;
    blend(bn.running_var(), stats.var.iter().map(|v| v * unbiased).collect())
}

/// Convolution followed by eval-mode batch normalization, folded into one convolution with bias:
/// w' = w * scale, b' = shift, where scale = gamma / sqrt(running_var + eps) and
/// shift = beta - running_mean * scale. ReLU after when `relu`.
pub fn conv_bn_eval(
    x: &Tensor,
    w: &Tensor,
    bn: &BatchNorm,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let affine = bn.weight_and_bias().filter(|_| fast(x));
    let Some((gamma, beta)) = affine else {
        let y = conv2d(x, w, None, stride, padding, false)?.apply_t(bn, false)?;
        return if relu { y.relu() } else { Ok(y) };
    };
    let scale = (gamma / (bn.running_var().detach() + bn.eps())?.sqrt()?)?;
    let shift = (beta - (bn.running_mean().detach() * &scale)?)?;
    let w = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
    conv2d(x, &w, Some(&shift), stride, padding, relu)
}

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias, with the biased
/// variance, as PyTorch's nn.LayerNorm. (candle_nn's fused LayerNorm has no backward pass.)
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fast(x) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        let op = transformer::LayerNorm { eps: eps as f32 };
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension. (candle_nn's `softmax_last_dim` has no backward pass.)
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        return x.contiguous()?.apply_op1(transformer::SoftmaxLastDim);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// GELU with the exact erf form (PyTorch's nn.GELU default).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        return x.contiguous()?.apply_op1(transformer::GeluErf);
    }
    x.gelu_erf()
}

/// A fully connected layer on rows: x [M, K] · weightᵀ [K, O] + bias [O], as one op each way on
/// the CPU (see `linear.rs`), else candle's matmul and broadcast add.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fast(x) && x.rank() == 2 && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, linear::Linear::default());
    }
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// gelu_erf([`linear`]), as one op each way on the CPU.
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fast(x) && x.rank() == 2 && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        let tracked = x.track_op() || weight.track_op() || bias.track_op();
        let op = linear::Linear { gelu: true, tracked, ..Default::default() };
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    gelu_erf(&linear(x, weight, bias)?)
}

/// A candle_nn linear layer (with bias) on [M, K] rows through [`linear`].
pub fn linear_layer(x: &Tensor, layer: &candle_nn::Linear) -> Result<Tensor> {
    match layer.bias() {
        Some(b) => linear(x, layer.weight(), b),
        None => layer.forward(x),
    }
}

/// Multi-head self-attention on the fused projection qkv [N * L, 3 * D] -> [N * L, D] (see
/// `transformer::Attention`); with candle's ops where the kernels do not apply.
pub fn attention(qkv: &Tensor, n: usize, tokens: usize, heads: usize) -> Result<Tensor> {
    if fast(qkv) {
        let op = transformer::Attention { n, tokens, heads, tracked: qkv.track_op(), saved: Default::default() };
        return qkv.contiguous()?.apply_op1(op);
    }
    let d = qkv.dim(1)? / 3;
    let hd = d / heads;
    let qkv = qkv.reshape((n, tokens, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let attn = softmax_last_dim(&scores)?;
    attn.matmul(&v)?.transpose(1, 2)?.reshape((n * tokens, d))
}

/// The parameters of a pre-norm transformer block, each layer's (weight, bias): LayerNorm, the fused
/// qkv projection [3D, D], the attention output projection [D, D], LayerNorm, the MLP's fc1 [H, D]
/// and fc2 [D, H].
pub struct BlockParams<'a> {
    pub norm1: (&'a Tensor, &'a Tensor),
    pub qkv: (&'a Tensor, &'a Tensor),
    pub proj: (&'a Tensor, &'a Tensor),
    pub norm2: (&'a Tensor, &'a Tensor),
    pub fc1: (&'a Tensor, &'a Tensor),
    pub fc2: (&'a Tensor, &'a Tensor),
}

impl BlockParams<'_> {
    fn all(&self) -> [&Tensor; 12] {
        let p = self;
        [
            p.norm1.0, p.norm1.1, p.qkv.0, p.qkv.1, p.proj.0, p.proj.1, p.norm2.0, p.norm2.1, p.fc1.0, p.fc1.1,
            p.fc2.0, p.fc2.1,
        ]
    }
}

/// A pre-norm transformer block on the tokens x [N * L, D]: x1 = x + proj(attention(qkv(LN1(x)))),
/// x1 + fc2(GELU(fc1(LN2(x1)))), for `n` samples of `tokens` tokens, with `heads` attention heads
/// and LayerNorm's `eps`. On the CPU one op each way (`vit_block.rs`), which keeps its activations
/// for the backward pass when `keep` (training) and recomputes them if a gradient is asked of it
/// otherwise; elsewhere the layer-by-layer functions above.
pub fn transformer_block(
    x: &Tensor,
    p: &BlockParams,
    (n, tokens, heads): (usize, usize, usize),
    eps: f64,
    keep: bool,
) -> Result<Tensor> {
    if fast(x) && x.rank() == 2 && p.all().iter().all(|t| t.dtype() == DType::F32) {
        let (dim, hidden) = (x.dim(1)?, p.fc1.0.dim(0)?);
        let shape = vit_block::Block { n, tokens, dim, hidden, heads, eps: eps as f32 };
        let params = Tensor::cat(&p.all().map(|t| t.flatten_all()).into_iter().collect::<Result<Vec<_>>>()?, 0)?;
        let tracked = keep && (x.track_op() || params.track_op());
        return x.contiguous()?.apply_op2(&params, vit_block::VitBlock::new(shape, tracked));
    }
    let h = layer_norm(x, p.norm1.0, p.norm1.1, eps)?;
    let a = attention(&linear(&h, p.qkv.0, p.qkv.1)?, n, tokens, heads)?;
    let x = (x + linear(&a, p.proj.0, p.proj.1)?)?;
    let h = linear_gelu(&layer_norm(&x, p.norm2.0, p.norm2.1, eps)?, p.fc1.0, p.fc1.1)?;
    x + linear(&h, p.fc2.0, p.fc2.1)?
}

//! `vit`: a small Vision Transformer for 28x28 and 32x32 images, sized to train on a CPU.
//!
//! Patch embedding (a 4x4 convolution with stride 4: 7x7 or 8x8 tokens of width 64), learned
//! position embeddings, 4 pre-norm blocks (LayerNorm -> 4-head self-attention -> residual;
//! LayerNorm -> MLP 64-128-64 with exact erf GELU -> residual), a final LayerNorm, the mean over
//! the tokens (no class token: one parameter and one concatenation fewer, and every token carries
//! gradient), and a linear head. LayerNorm eps is PyTorch's default 1e-5.
//!
//! Parameter names are those of the plainly written PyTorch twin in `scripts/make_vit_reference.py`
//! (timm's layout, fused qkv): `patch_embed.proj.{weight,bias}`, `pos_embed` [1, L, 64],
//! `blocks.{i}.norm1`, `blocks.{i}.attn.qkv` [192, 64], `blocks.{i}.attn.proj`, `blocks.{i}.norm2`,
//! `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`, `norm`, `head`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::kernels;

pub const PATCH: usize = 4;
pub const DIM: usize = 64;
pub const DEPTH: usize = 4;
pub const HEADS: usize = 4;
pub const MLP_HIDDEN: usize = 128;
/// nn.LayerNorm's default.
pub const LN_EPS: f64 = 1e-5;

/// LayerNorm's affine parameters (`weight` 1, `bias` 0 at creation, as in PyTorch).
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(DIM, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(DIM, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Norm { weight, bias })
    }

    /// x: [rows, DIM].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm(x, &self.weight, &self.bias, LN_EPS)
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Block {
            norm1: Norm::new(vb.pp("norm1"))?,
            qkv: candle_nn::linear(DIM, 3 * DIM, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(DIM, DIM, vb.pp("attn.proj"))?,
            norm2: Norm::new(vb.pp("norm2"))?,
            fc1: candle_nn::linear(DIM, MLP_HIDDEN, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(MLP_HIDDEN, DIM, vb.pp("mlp.fc2"))?,
        })
    }

    /// x: the tokens as [N * L, DIM] rows (kept 2-D so that every linear layer is one matmul).
    /// With `keep` the block keeps its activations for the backward pass; without, a backward
    /// pass recomputes them.
    fn forward(&self, x: &Tensor, n: usize, l: usize, keep: bool) -> Result<Tensor> {
        let p = kernels::BlockParams {
            norm1: (&self.norm1.weight, &self.norm1.bias),
            qkv: with_bias(&self.qkv),
            proj: with_bias(&self.proj),
            norm2: (&self.norm2.weight, &self.norm2.bias),
            fc1: with_bias(&self.fc1),
            fc2: with_bias(&self.fc2),
        };
        kernels::transformer_block(x, &p, (n, l, HEADS), LN_EPS, keep)
    }
}

fn with_bias(layer: &Linear) -> (&Tensor, &Tensor) {
    (layer.weight(), layer.bias().expect("the block's linear layers have biases"))
}

pub struct Vit {
    /// The patch convolution's weight [DIM, C, PATCH, PATCH] and bias [DIM].
    patch_weight: Tensor,
    patch_bias: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    head: Linear,
}

impl Vit {
    pub fn new(channels: usize, h: usize, w: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        let tokens = (h / PATCH) * (w / PATCH);
        let pe = vb.pp("patch_embed.proj");
        Ok(Vit {
            patch_weight: pe.get((DIM, channels, PATCH, PATCH), "weight")?,
            patch_bias: pe.get(DIM, "bias")?,
            pos_embed: vb.get((1, tokens, DIM), "pos_embed")?,
            blocks: (0..DEPTH).map(|i| Block::new(vb.pp(format!("blocks.{i}")))).collect::<Result<_>>()?,
            norm: Norm::new(vb.pp("norm"))?,
            head: candle_nn::linear(DIM, classes, vb.pp("head"))?,
        })
    }

    /// Logits. The ViT has no dropout or BatchNorm, so the output does not depend on `train`; the
    /// blocks keep their activations for a backward pass in training and when the input itself
    /// is differentiated (an attack's input gradient, run in eval mode), not in certification or
    /// evaluation.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let keep = train || x.track_op();
        let (n, c, h, w) = x.dims4()?;
        let (hp, wp) = (h / PATCH, w / PATCH);
        let l = hp * wp;
        // A convolution with kernel = stride = PATCH is a matmul over non-overlapping patches:
        // rows (n, i, j) in the conv output's row-major token order, columns (c, ki, kj) as in its weight.
        let x = x.narrow(2, 0, hp * PATCH)?.narrow(3, 0, wp * PATCH)?;
        let patches = x
            .reshape((n, c, hp, PATCH, wp, PATCH))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * l, c * PATCH * PATCH))?;
        let w = self.patch_weight.reshape((DIM, c * PATCH * PATCH))?;
        let tokens = kernels::linear(&patches, &w, &self.patch_bias)?;
        let tokens = tokens.reshape((n, l, DIM))?.broadcast_add(&self.pos_embed)?.reshape((n * l, DIM))?;
        let mut x = tokens;
        for b in &self.blocks {
            x = b.forward(&x, n, l, keep)?;
        }
        let pooled = self.norm.forward(&x)?.reshape((n, l, DIM))?.mean(1)?;
        self.head.forward(&pooled)
    }
}

//! CIFAR-style ResNets (He et al. 2016): three stages of 16/32/64 channels of BasicBlocks with
//! BatchNorm, a 1x1 convolution + BatchNorm shortcut where the shape changes, global average
//! pooling and fc. Parameter names follow torchvision (`layer2.0.downsample.0`, ...).

use candle_core::{Module, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};

use crate::config::Arch;
use crate::kernels;

pub fn depth(arch: Arch) -> usize {
    match arch {
        Arch::Resnet20 => 20,
        Arch::Resnet56 => 56,
        Arch::Resnet110 => 110,
        other => unreachable!("{other:?} is not a ResNet"),
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig { padding: k / 2, stride, ..Default::default() };
    candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    candle_nn::batch_norm(c, candle_nn::BatchNormConfig::default(), vb)
}

struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let downsample = if stride != 1 || cin != cout {
            Some((conv(cin, cout, 1, stride, vb.pp("downsample.0"))?, bn(cout, vb.pp("downsample.1"))?))
        } else {
            None
        };
        Ok(Block {
            conv1: conv(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn1: bn(cout, vb.pp("bn1"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            bn2: bn(cout, vb.pp("bn2"))?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Convolution + BatchNorm (+ ReLU) and the residual add + ReLU run as the crate's CPU kernels.
        let out = kernels::conv_bn(x, &self.conv1, &self.bn1, train, true)?;
        let shortcut = match &self.downsample {
            Some((c, b)) => kernels::conv_bn(x, c, b, train, false)?,
            None => x.clone(),
        };
        kernels::conv_bn_add_relu(&out, &self.conv2, &self.bn2, &shortcut, train)
    }
}

pub struct Resnet {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<Block>,
    fc: Linear,
}

impl Resnet {
    pub fn new(depth: usize, channels: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        assert!((depth - 2).is_multiple_of(6), "CIFAR ResNet depth must be 6n+2");
        let per_stage = (depth - 2) / 6;
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (stage, cout) in [16usize, 32, 64].into_iter().enumerate() {
            for i in 0..per_stage {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(Block::new(cin, cout, stride, vb.pp(format!("layer{}.{i}", stage + 1)))?);
                cin = cout;
            }
        }
        Ok(Resnet {
            conv1: conv(channels, 16, 3, 1, vb.pp("conv1"))?,
            bn1: bn(16, vb.pp("bn1"))?,
            blocks,
            fc: candle_nn::linear(64, classes, vb.pp("fc"))?,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = kernels::conv_bn(x, &self.conv1, &self.bn1, train, true)?;
        for b in &self.blocks {
            x = b.forward_t(&x, train)?;
        }
        // Global average pooling over H and W.
        let x = x.mean(3)?.mean(2)?;
        self.fc.forward(&x)
    }
}

//! The randomized-smoothing literature's MNIST LeNet: conv5x5-20, ReLU, max-pool 2; conv5x5-50, ReLU,
//! max-pool 2; fc 800-500, ReLU; fc 500-classes.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};

use crate::kernels;

pub struct Lenet {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Lenet {
    pub fn new(channels: usize, h: usize, w: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig::default();
        // Spatial size after two (conv5, pool2) stages: 28 -> 24 -> 12 -> 8 -> 4.
        let side = |s: usize| ((s - 4) / 2 - 4) / 2;
        let flat = 50 * side(h) * side(w);
        Ok(Lenet {
            conv1: candle_nn::conv2d(channels, 20, 5, cfg, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(20, 50, 5, cfg, vb.pp("conv2"))?,
            fc1: candle_nn::linear(flat, 500, vb.pp("fc1"))?,
            fc2: candle_nn::linear(500, classes, vb.pp("fc2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Convolution + bias + ReLU + 2x2 max-pooling run as one fused CPU kernel per stage.
        let x = kernels::conv_relu_pool_layer(x, &self.conv1, 2)?;
        let x = kernels::conv_relu_pool_layer(&x, &self.conv2, 2)?;
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.fc2.forward(&x)
    }
}

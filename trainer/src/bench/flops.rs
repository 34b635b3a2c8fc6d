//! Arithmetic ceilings: the machine's fp32 matmul rate through candle, and a network's forward
//! FLOPs counted from its layer shapes, so a measured rate can be put as a fraction of the ceiling.

use candle_core::{DType, Device, Tensor};

/// A layer of a plain feed-forward network, as far as its arithmetic goes.
#[derive(Debug, Clone, Copy)]
pub enum Layer {
    /// Square kernel, bias included.
    Conv { out: usize, kernel: usize, stride: usize, padding: usize },
    /// Max-pooling with kernel = stride.
    MaxPool(usize),
    /// Fully connected on the flattened input, bias included.
    Linear { out: usize },
}

/// The MNIST LeNet of `models::lenet` (ReLUs do no multiply-adds and are left out).
pub fn lenet_layers(classes: usize) -> [Layer; 6] {
    [
        Layer::Conv { out: 20, kernel: 5, stride: 1, padding: 0 },
        Layer::MaxPool(2),
        Layer::Conv { out: 50, kernel: 5, stride: 1, padding: 0 },
        Layer::MaxPool(2),
        Layer::Linear { out: 500 },
        Layer::Linear { out: classes },
    ]
}

/// Multiply-add FLOPs (2 per multiply-add) and parameters of one sample's forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub flops: u64,
    pub parameters: u64,
}

/// Walks the layers from an input of shape (C, H, W), counting 2 * multiply-adds per output value.
pub fn forward_cost(input: (usize, usize, usize), layers: &[Layer]) -> Cost {
    let (mut c, mut h, mut w) = input;
    let mut cost = Cost { flops: 0, parameters: 0 };
    for layer in layers {
        match *layer {
            Layer::Conv { out, kernel, stride, padding } => {
                h = (h + 2 * padding - kernel) / stride + 1;
                w = (w + 2 * padding - kernel) / stride + 1;
                let fan_in = c * kernel * kernel;
                cost.flops += 2 * (out * h * w * fan_in) as u64;
                cost.parameters += (out * fan_in + out) as u64;
                c = out;
            }
            Layer::MaxPool(k) => {
                h /= k;
                w /= k;
            }
            Layer::Linear { out } => {
                let fan_in = c * h * w;
                cost.flops += 2 * (out * fan_in) as u64;
                cost.parameters += (out * fan_in + out) as u64;
                (c, h, w) = (out, 1, 1);
            }
        }
    }
    cost
}

/// fp32 GFLOP/s of candle's matmul on two n x n matrices: the median of `runs` after a warm-up.
pub fn matmul_gflops(n: usize, runs: usize, device: &Device) -> anyhow::Result<f64> {
    let a = Tensor::randn(0f32, 1f32, (n, n), device)?;
    let b = Tensor::randn(0f32, 1f32, (n, n), device)?;
    let seconds = super::median_time(runs, || {
        // Reading one value back waits for asynchronous devices too.
        a.matmul(&b)?.get(0)?.get(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / seconds / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Dataset};
    use crate::models::Model;

    /// The layer list must describe the real model: its parameter count must match.
    #[test]
    fn lenet_layer_list_matches_the_model() {
        let cost = forward_cost((1, 28, 28), &lenet_layers(10));
        let model = Model::new(Arch::Lenet, Dataset::Mnist, &Device::Cpu, 0).unwrap();
        assert_eq!(cost.parameters, model.parameter_count() as u64);
        // conv1 20*24*24*25 + conv2 50*8*8*500 + fc1 500*800 + fc2 10*500 multiply-adds.
        assert_eq!(cost.flops, 2 * (288_000 + 1_600_000 + 400_000 + 5_000));
    }

    #[test]
    fn strided_padded_conv_shapes() {
        // A 3x3 stride-2 padding-1 conv halves 32x32 to 16x16.
        let cost = forward_cost((16, 32, 32), &[Layer::Conv { out: 32, kernel: 3, stride: 2, padding: 1 }]);
        assert_eq!(cost.flops, 2 * 32 * 16 * 16 * 16 * 9);
    }

    #[test]
    fn matmul_rate_is_positive_and_finite() {
        let rate = matmul_gflops(64, 3, &Device::Cpu).unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
    }
}

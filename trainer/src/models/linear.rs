//! `linear`: one fully connected layer on the flattened image (`fc.weight` [classes, inputs], `fc.bias`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

pub struct LinearNet {
    fc: Linear,
}

impl LinearNet {
    pub fn new(inputs: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LinearNet { fc: candle_nn::linear(inputs, classes, vb.pp("fc"))? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc.forward(&x.flatten_from(1)?)
    }
}

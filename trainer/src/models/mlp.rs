//! `mlp`: a two-hidden-layer perceptron on the flattened image (fc1 inputs-512, ReLU; fc2 512-512,
//! ReLU; fc3 512-classes). A cheap student of a different family than the convolutional teachers.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

pub const HIDDEN: usize = 512;

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Mlp {
    pub fn new(inputs: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Mlp {
            fc1: candle_nn::linear(inputs, HIDDEN, vb.pp("fc1"))?,
            fc2: candle_nn::linear(HIDDEN, HIDDEN, vb.pp("fc2"))?,
            fc3: candle_nn::linear(HIDDEN, classes, vb.pp("fc3"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        let x = self.fc2.forward(&x)?.relu()?;
        self.fc3.forward(&x)
    }
}

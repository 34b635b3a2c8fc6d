//! Seeded initialization, PyTorch's defaults: conv and linear weights and biases
//! U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ResNet convolutions Kaiming normal (fan_out) as in the
//! CIFAR ResNet references; BatchNorm weight 1, bias 0, running stats 0 / 1 (set by candle_nn);
//! LayerNorm weight 1, bias 0 (set by the model); the ViT's position embeddings N(0, 0.02²), as in
//! the ViT references (a fan-in bound over all L x 64 values would make them vanishingly small).

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::config::Arch;

pub fn seeded(varmap: &VarMap, arch: Arch, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    let resnet = matches!(arch, Arch::Resnet20 | Arch::Resnet56 | Arch::Resnet110);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let fresh: Vec<f32> = if name == "pos_embed" {
            let normal = Normal::new(0.0, 0.02).expect("valid std");
            (0..var.elem_count()).map(|_| normal.sample(&mut rng) as f32).collect()
        } else if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            if resnet && dims.len() == 4 {
                let fan_out = dims[0] * dims[2] * dims[3];
                let normal = Normal::new(0.0, (2.0 / fan_out as f64).sqrt()).expect("valid std");
                (0..var.elem_count()).map(|_| normal.sample(&mut rng) as f32).collect()
            } else {
                uniform(&mut rng, var.elem_count(), fan_in)
            }
        } else if name.ends_with(".bias") {
            // A bias belongs to a conv/linear layer when its sibling weight has rank >= 2.
            match data.get(&name.replace(".bias", ".weight")) {
                Some(w) if w.rank() >= 2 => uniform(&mut rng, var.elem_count(), w.dims()[1..].iter().product()),
                _ => continue,
            }
        } else {
            continue;
        };
        var.set(&Tensor::from_vec(fresh, dims, var.device())?)?;
    }
    Ok(())
}

fn uniform(rng: &mut StdRng, n: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
}

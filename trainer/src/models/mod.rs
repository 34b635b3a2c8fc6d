//! Classifiers built from an architecture name and the dataset's shape, with PyTorch `state_dict`
//! parameter names and layouts so weights move between the two as safetensors files.

pub mod import;
mod init;
mod lenet;
mod linear;
pub mod meta;
mod mlp;
mod resnet;
mod vit;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::config::{Arch, Dataset};
pub use meta::{ModelMeta, Normalization};

/// A network plus the variables it owns. `forward_t(x, train)`: x is [N, C, H, W] in [0, 1] pixel space.
pub struct Model {
    pub arch: Arch,
    pub dataset: Dataset,
    pub normalization: Normalization,
    varmap: VarMap,
    net: Net,
    device: Device,
}

enum Net {
    Linear(linear::LinearNet),
    Mlp(mlp::Mlp),
    Lenet(lenet::Lenet),
    Resnet(resnet::Resnet),
    Vit(vit::Vit),
}

impl Model {
    /// A freshly initialized model; initialization is drawn from a seeded RNG (candle's CPU RNG
    /// cannot be seeded), so the same seed gives the same weights.
    pub fn new(arch: Arch, dataset: Dataset, device: &Device, seed: u64) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let (c, h, w) = dataset.image_shape();
        let classes = dataset.classes();
        let net = match arch {
            Arch::Linear => Net::Linear(linear::LinearNet::new(c * h * w, classes, vb)?),
            Arch::Mlp => Net::Mlp(mlp::Mlp::new(c * h * w, classes, vb)?),
            Arch::Lenet => Net::Lenet(lenet::Lenet::new(c, h, w, classes, vb)?),
            Arch::Resnet20 | Arch::Resnet56 | Arch::Resnet110 => {
                Net::Resnet(resnet::Resnet::new(resnet::depth(arch), c, classes, vb)?)
            }
            Arch::Vit => Net::Vit(vit::Vit::new(c, h, w, classes, vb)?),
        };
        init::seeded(&varmap, arch, seed)?;
        Ok(Model {
            arch,
            dataset,
            normalization: Normalization::for_model(arch, dataset),
            varmap,
            net,
            device: device.clone(),
        })
    }

    /// Loads PyTorch-named weights into a model of the given architecture. Extra tensors in the file
    /// (such as BatchNorm's `num_batches_tracked`) are ignored; a missing or misshapen one is an error.
    pub fn load_weights(arch: Arch, dataset: Dataset, path: &Path, device: &Device) -> Result<Self> {
        let mut model = Model::new(arch, dataset, device, 0)?;
        model.varmap.load(path).map_err(|e| {
            candle_core::Error::Msg(format!("cannot load {} weights from {}: {e}", arch.as_str(), path.display()))
        })?;
        Ok(model)
    }

    /// Loads `model.safetensors` and `model.json` from a trainer output directory. The input
    /// normalization is the one `model.json` records (a model keeps the constants it was trained
    /// or imported with), not the default for new models.
    pub fn load_dir(dir: &Path, device: &Device) -> anyhow::Result<(Self, ModelMeta)> {
        let meta_path = dir.join(meta::META_FILE);
        let meta = ModelMeta::read(&meta_path)?;
        meta.normalization
            .check(meta.dataset.image_shape().0)
            .map_err(|e| anyhow::anyhow!("{}: {e}", meta_path.display()))?;
        let mut model = Model::load_weights(meta.arch, meta.dataset, &dir.join(meta::WEIGHTS_FILE), device)?;
        model.normalization = meta.normalization.clone();
        Ok((model, meta))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.varmap.save(path)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Logits [N, classes].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.normalization.apply(x)?;
        match &self.net {
            Net::Linear(n) => n.forward(&x),
            Net::Mlp(n) => n.forward(&x),
            Net::Lenet(n) => n.forward(&x),
            Net::Resnet(n) => n.forward_t(&x, train),
            Net::Vit(n) => n.forward_t(&x, train),
        }
    }

    /// Variables that receive gradients (everything but BatchNorm running statistics), sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars().into_iter().filter(|(name, _)| !is_running_stat(name)).collect()
    }

    /// Every variable, sorted by name (deterministic order for optimizers and checkpoints).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    pub fn parameter_count(&self) -> usize {
        self.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

pub fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_shapes_and_parameter_counts() {
        let dev = Device::Cpu;
        let cases = [
            (Arch::Linear, Dataset::Mnist, 7850),
            (Arch::Mlp, Dataset::Mnist, 669_706),
            (Arch::Lenet, Dataset::Mnist, 431_080),
            (Arch::Resnet20, Dataset::Cifar10, 272_474),
            (Arch::Resnet20, Dataset::Mnist, 272_186),
            (Arch::Vit, Dataset::Mnist, 138_890),
            (Arch::Vit, Dataset::Cifar10, 141_898),
        ];
        for (arch, ds, params) in cases {
            let m = Model::new(arch, ds, &dev, 1).unwrap();
            let (c, h, w) = ds.image_shape();
            let x = Tensor::zeros((2, c, h, w), DType::F32, &dev).unwrap();
            let y = m.forward_t(&x, false).unwrap();
            assert_eq!(y.dims(), &[2, 10], "{arch:?}");
            assert_eq!(m.parameter_count(), params, "{arch:?} on {ds:?}");
        }
    }

    #[test]
    fn seeded_init_is_reproducible() {
        let dev = Device::Cpu;
        let a = Model::new(Arch::Lenet, Dataset::Mnist, &dev, 7).unwrap();
        let b = Model::new(Arch::Lenet, Dataset::Mnist, &dev, 7).unwrap();
        let c = Model::new(Arch::Lenet, Dataset::Mnist, &dev, 8).unwrap();
        let w = |m: &Model| m.named_vars()[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
    }
}

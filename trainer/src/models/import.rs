//! Importing a checkpoint of the reference codes (Cohen et al.'s `locuslab/smoothing` and the
//! code bases built on it): `torch.save({'arch': ..., 'state_dict': ..., ...})` of
//! `Sequential(NormalizeLayer, network)`, in PyTorch's zip format (torch >= 1.6).
//!
//! Key layout: the network's keys carry the prefix `1.` (the second module of the Sequential),
//! with `module.` in front or behind where `DataParallel` was used (`module.1.conv1.weight`,
//! `1.module.conv1.weight`); plain keys (`conv1.weight`, a network saved on its own) are accepted
//! too. The reference `NormalizeLayer` keeps its constants as plain attributes, so they are not in
//! the file and come from the caller ([`NormalizationFlag`]); forks that register them as buffers
//! (`0.means`/`0.sds`, `0.mu`/`0.sigma`, `0.mean`/`0.std`) are read from the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::{DType, Device, Tensor};

use super::meta::{ModelMeta, Normalization, Provenance, META_FILE, WEIGHTS_FILE};
use super::Model;
use crate::config::{Arch, Dataset};

/// The command that converts a legacy (pre-1.6, non-zip) checkpoint into the zip format.
pub const LEGACY_CONVERSION: &str = "python -c \"import sys, torch; \
torch.save(torch.load(sys.argv[1], map_location='cpu', weights_only=False), sys.argv[2], \
_use_new_zipfile_serialization=True)\" OLD.pth.tar NEW.pth.tar";

/// The reference codes' architecture names that CRT Lab builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceArch {
    /// `cifar_resnet20` of Cohen et al.'s `code/architectures.py` (BasicBlocks, 16/32/64).
    CifarResnet20,
    /// `cifar_resnet110` of the same file.
    CifarResnet110,
    /// The MNIST LeNet of `jh-jeong/smoothing-consistency` (`code/archs/lenet.py`): conv 20, conv 50, fc 500.
    Lenet,
    /// CRT Lab's own `vit`, as its PyTorch twin (`scripts/torch_vit_reference.py`) names its tensors.
    Vit,
}

impl ReferenceArch {
    pub const ALL: [ReferenceArch; 4] =
        [ReferenceArch::CifarResnet20, ReferenceArch::CifarResnet110, ReferenceArch::Lenet, ReferenceArch::Vit];

    pub fn name(self) -> &'static str {
        match self {
            ReferenceArch::CifarResnet20 => "cifar_resnet20",
            ReferenceArch::CifarResnet110 => "cifar_resnet110",
            ReferenceArch::Lenet => "lenet",
            ReferenceArch::Vit => "vit",
        }
    }

    /// The CRT Lab architecture with the same layers and parameter names.
    pub fn arch(self) -> Arch {
        match self {
            ReferenceArch::CifarResnet20 => Arch::Resnet20,
            ReferenceArch::CifarResnet110 => Arch::Resnet110,
            ReferenceArch::Lenet => Arch::Lenet,
            ReferenceArch::Vit => Arch::Vit,
        }
    }
}

impl fmt::Display for ReferenceArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReferenceArch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
            format!("unknown architecture `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// `--normalization`: the reference constants of the dataset, none, or explicit `M1,M2,M3:S1,S2,S3`.
#[derive(Debug, Clone, PartialEq)]
pub enum NormalizationFlag {
    Reference,
    None,
    Explicit(Normalization),
}

impl NormalizationFlag {
    pub fn resolve(&self, dataset: Dataset) -> Normalization {
        match self {
            NormalizationFlag::Reference => Normalization::reference(dataset),
            NormalizationFlag::None => Normalization::None,
            NormalizationFlag::Explicit(n) => n.clone(),
        }
    }
}

impl FromStr for NormalizationFlag {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reference" => return Ok(NormalizationFlag::Reference),
            "none" => return Ok(NormalizationFlag::None),
            _ => {}
        }
        let usage =
            "expected `reference`, `none` or per-channel MEANS:STDS such as 0.4914,0.4822,0.4465:0.2023,0.1994,0.2010";
        let (mean, std) = s.split_once(':').ok_or_else(|| format!("`{s}`: {usage}"))?;
        let list = |part: &str| -> std::result::Result<Vec<f32>, String> {
            part.split(',')
                .map(|v| v.trim().parse::<f32>().map_err(|e| format!("`{s}`: `{v}` is not a number ({e}); {usage}")))
                .collect()
        };
        let n = Normalization::MeanStd { mean: list(mean)?, std: list(std)? };
        if let Normalization::MeanStd { mean, std } = &n {
            if mean.len() != std.len() {
                return Err(format!("`{s}`: {} means but {} stds", mean.len(), std.len()));
            }
            n.check(mean.len()).map_err(|e| format!("`{s}`: {e}"))?;
        }
        Ok(NormalizationFlag::Explicit(n))
    }
}

/// Where the imported model's normalization came from.
#[derive(Debug, Clone, PartialEq)]
pub enum NormalizationSource {
    /// Buffers of the normalization layer stored in the checkpoint (their keys).
    Checkpoint { mean_key: String, std_key: String },
    /// `--normalization` as given.
    Flag,
    /// No flag, nothing in the file: the reference constants of the dataset.
    DatasetDefault,
}

/// An imported model and what the import found.
pub struct Imported {
    pub model: Model,
    pub source: NormalizationSource,
    /// The checkpoint's `arch` entry, when it has one.
    pub checkpoint_arch: Option<String>,
    /// The checkpoint's `epoch` entry, when it has one.
    pub epoch: Option<i64>,
    /// Tensors loaded into the model (parameters and running statistics).
    pub loaded: usize,
    /// Entries of the file that were recognised and not needed (`num_batches_tracked`).
    pub ignored: usize,
}

/// The role of one state_dict key in `Sequential(NormalizeLayer, network)`.
#[derive(Debug, PartialEq)]
enum Role {
    /// A tensor of the network, by its own name (`conv1.weight`).
    Network(String),
    /// A buffer of the normalization layer (`means`, `sds`, ...).
    Normalize(String),
}

fn role(key: &str) -> Role {
    let k = key.strip_prefix("module.").unwrap_or(key);
    if let Some(rest) = k.strip_prefix("0.") {
        return Role::Normalize(rest.to_string());
    }
    if let Some(rest) = k.strip_prefix("1.") {
        return Role::Network(rest.strip_prefix("module.").unwrap_or(rest).to_string());
    }
    Role::Network(k.to_string())
}

/// The checkpoint's top-level pickle object (from its `data.pkl`).
fn read_top_level(path: &Path) -> Result<Object> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        anyhow!(
            "{} is not a PyTorch zip checkpoint ({e}); a checkpoint saved by torch < 1.6 (legacy format) \
             can be converted with: {LEGACY_CONVERSION}",
            path.display()
        )
    })?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{}: unreadable zip directory", path.display()))?;
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| anyhow!("{}: no data.pkl in the zip archive (not a torch.save file)", path.display()))?;
    let entry = zip.by_name(pkl).with_context(|| format!("{}: cannot read {pkl}", path.display()))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut BufReader::new(entry))
        .with_context(|| format!("{}: cannot unpickle {pkl}", path.display()))?;
    stack.finalize().with_context(|| format!("{}: cannot unpickle {pkl}", path.display()))
}

/// `arch`, `epoch` and whether the tensors are under `state_dict`.
struct Header {
    arch: Option<String>,
    epoch: Option<i64>,
    key: Option<&'static str>,
}

fn header(path: &Path) -> Result<Header> {
    let entries = match read_top_level(path)? {
        Object::Dict(entries) => entries,
        _ => bail!("{}: the checkpoint is not a dict (expected {{'arch': ..., 'state_dict': ...}})", path.display()),
    };
    let find = |name: &str| entries.iter().find(|(k, _)| *k == Object::Unicode(name.to_string())).map(|(_, v)| v);
    let arch = match find("arch") {
        Some(Object::Unicode(s)) => Some(s.clone()),
        Some(other) => bail!("{}: the `arch` entry is not a string: {other:?}", path.display()),
        None => None,
    };
    let epoch = match find("epoch") {
        Some(Object::Int(v)) => Some(i64::from(*v)),
        Some(Object::Long(v)) => Some(*v),
        _ => None,
    };
    let key = find("state_dict").map(|_| "state_dict");
    Ok(Header { arch, epoch, key })
}

fn shape_str(dims: &[usize]) -> String {
    format!("{dims:?}")
}

/// Reads the checkpoint and builds the model. `normalization`: the `--normalization` flag, if given.
pub fn import_pytorch(
    path: &Path,
    arch: ReferenceArch,
    dataset: Dataset,
    normalization: Option<&NormalizationFlag>,
    device: &Device,
) -> Result<Imported> {
    let head = header(path)?;
    if let Some(found) = &head.arch {
        if found != arch.name() {
            bail!(
                "{}: the checkpoint's `arch` entry is `{found}`, but --arch is `{}`; \
                 import it with --arch {found} (if CRT Lab builds it) or check the file",
                path.display(),
                arch.name()
            );
        }
    }
    let pth =
        PthTensors::new(path, head.key).with_context(|| format!("cannot read the tensors of {}", path.display()))?;
    let mut keys: Vec<&String> = pth.tensor_infos().keys().collect();
    keys.sort();
    if keys.is_empty() {
        bail!("{}: no tensors found{}", path.display(), if head.key.is_some() { " under `state_dict`" } else { "" });
    }

    let model = Model::new(arch.arch(), dataset, device, 0)?;
    let what = format!("{} on {}", arch.name(), dataset.as_str());
    let expected: BTreeMap<String, Vec<usize>> =
        model.named_vars().into_iter().map(|(name, var)| (name, var.dims().to_vec())).collect();

    // Sort every key into the network's tensors and the normalization layer's buffers.
    let mut network: BTreeMap<String, &String> = BTreeMap::new();
    let mut norm_buffers: BTreeMap<String, &String> = BTreeMap::new();
    let mut ignored = 0;
    for &key in &keys {
        match role(key) {
            Role::Normalize(name) => {
                if !["means", "sds", "mu", "sigma", "mean", "std"].contains(&name.as_str()) {
                    bail!(
                        "{}: unknown key `{key}`: the normalization layer (module 0) may hold only \
                         means/sds, mu/sigma or mean/std buffers",
                        path.display()
                    );
                }
                norm_buffers.insert(name, key);
            }
            Role::Network(name) => {
                if name.ends_with(".num_batches_tracked")
                    && expected.contains_key(&name.replace("num_batches_tracked", "running_mean"))
                {
                    ignored += 1;
                    continue;
                }
                if !expected.contains_key(&name) {
                    let prefix = key.strip_suffix(name.as_str()).unwrap_or("");
                    bail!(
                        "{}: unknown key `{key}` (network tensor `{name}`): {what} has no such tensor; \
                         it expects {} tensors named like `{prefix}conv1.weight`, `{prefix}{}`",
                        path.display(),
                        expected.len(),
                        expected.keys().last().map(String::as_str).unwrap_or("")
                    );
                }
                if let Some(other) = network.insert(name.clone(), key) {
                    bail!("{}: keys `{other}` and `{key}` are the same tensor `{name}`", path.display());
                }
            }
        }
    }

    // Shapes first (every present key), then what is missing.
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(network.len());
    for (name, key) in &network {
        let want = &expected[name];
        let t = pth.get(key)?.ok_or_else(|| anyhow!("{}: cannot read tensor `{key}`", path.display()))?;
        if t.dims() != want.as_slice() {
            bail!(
                "{}: key `{key}` has shape {}; {what} expects {} for `{name}`",
                path.display(),
                shape_str(t.dims()),
                shape_str(want)
            );
        }
        if !t.dtype().is_float() {
            bail!("{}: key `{key}` holds {:?}; a float tensor is expected for `{name}`", path.display(), t.dtype());
        }
        tensors.push((name.clone(), t.to_dtype(DType::F32)?.to_device(device)?));
    }
    let missing: Vec<&String> = expected.keys().filter(|name| !network.contains_key(*name)).collect();
    if let Some(first) = missing.first() {
        // Name the missing key as the file would spell it: the prefix its other network keys carry.
        let prefix = network.iter().next().and_then(|(name, key)| key.strip_suffix(name.as_str())).unwrap_or("");
        let more = match missing.len() {
            1 => String::new(),
            n => format!(" ({n} of its {} tensors are absent, the last `{prefix}{}`)", expected.len(), missing[n - 1]),
        };
        bail!(
            "{}: missing key `{prefix}{first}`: {what} expects a tensor of shape {} there{more}",
            path.display(),
            shape_str(&expected[*first]),
        );
    }

    let (normalization, source) = normalization_of(path, &pth, &norm_buffers, normalization, dataset)?;
    normalization.check(dataset.image_shape().0).map_err(|e| match source {
        NormalizationSource::Flag => anyhow!("--normalization: {e} ({})", dataset.as_str()),
        _ => anyhow!("{}: {e}", path.display()),
    })?;

    let mut model = model;
    {
        let data = model.varmap().data().lock().expect("varmap lock");
        for (name, t) in &tensors {
            data[name].set(t)?;
        }
    }
    model.normalization = normalization;
    Ok(Imported { model, source, checkpoint_arch: head.arch, epoch: head.epoch, loaded: tensors.len(), ignored })
}

/// The normalization: the file's buffers if it has them (a flag that disagrees is an error), else
/// the flag, else the dataset's reference constants.
fn normalization_of(
    path: &Path,
    pth: &PthTensors,
    buffers: &BTreeMap<String, &String>,
    flag: Option<&NormalizationFlag>,
    dataset: Dataset,
) -> Result<(Normalization, NormalizationSource)> {
    if buffers.is_empty() {
        return Ok(match flag {
            Some(f) => (f.resolve(dataset), NormalizationSource::Flag),
            None => (Normalization::reference(dataset), NormalizationSource::DatasetDefault),
        });
    }
    let pair = [("means", "sds"), ("mu", "sigma"), ("mean", "std")]
        .into_iter()
        .find(|(m, s)| buffers.contains_key(*m) && buffers.contains_key(*s))
        .ok_or_else(|| {
            let found: BTreeSet<&str> = buffers.values().map(|k| k.as_str()).collect();
            anyhow!(
                "{}: the normalization layer holds {found:?} but not a complete mean/std pair \
                 (means/sds, mu/sigma or mean/std)",
                path.display()
            )
        })?;
    let read = |name: &str| -> Result<(String, Vec<f32>)> {
        let key = buffers[name];
        let t = pth.get(key)?.ok_or_else(|| anyhow!("{}: cannot read tensor `{key}`", path.display()))?;
        Ok((key.clone(), t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?))
    };
    let ((mean_key, mean), (std_key, std)) = (read(pair.0)?, read(pair.1)?);
    let n = Normalization::MeanStd { mean, std };
    if let Some(f) = flag {
        let wanted = f.resolve(dataset);
        if wanted != n {
            bail!(
                "{}: --normalization gives {wanted:?}, but the checkpoint stores its own constants \
                 ({mean_key}, {std_key}: {n:?}); leave --normalization out to use the file's",
                path.display()
            );
        }
    }
    Ok((n, NormalizationSource::Checkpoint { mean_key, std_key }))
}

/// Writes the model as `train` does: `model.safetensors` + `model.json` in `out`.
pub fn write_model_dir(imported: &Imported, sigma: Option<f64>, out: &Path) -> Result<ModelMeta> {
    std::fs::create_dir_all(out).with_context(|| format!("--out {}: cannot create the directory", out.display()))?;
    let model = &imported.model;
    let weights = out.join(WEIGHTS_FILE);
    model.save(&weights).with_context(|| format!("cannot write {}", weights.display()))?;
    let meta = ModelMeta {
        arch: model.arch,
        dataset: model.dataset,
        normalization: model.normalization.clone(),
        provenance: Provenance::Imported,
        sigma,
        epochs: imported.epoch.and_then(|e| usize::try_from(e).ok()).unwrap_or(0),
        seed: 0,
        parameters: model.parameter_count(),
        final_metrics: BTreeMap::new(),
        wall_time_s: 0.0,
        trainer_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    meta.write(&out.join(META_FILE))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roles() {
        assert_eq!(role("1.conv1.weight"), Role::Network("conv1.weight".into()));
        assert_eq!(role("module.1.conv1.weight"), Role::Network("conv1.weight".into()));
        assert_eq!(role("1.module.conv1.weight"), Role::Network("conv1.weight".into()));
        assert_eq!(role("conv1.weight"), Role::Network("conv1.weight".into()));
        assert_eq!(role("layer1.0.bn1.bias"), Role::Network("layer1.0.bn1.bias".into()));
        assert_eq!(role("0.means"), Role::Normalize("means".into()));
        assert_eq!(role("module.0.sds"), Role::Normalize("sds".into()));
    }

    #[test]
    fn normalization_flag() {
        assert_eq!("reference".parse::<NormalizationFlag>().unwrap(), NormalizationFlag::Reference);
        assert_eq!("none".parse::<NormalizationFlag>().unwrap(), NormalizationFlag::None);
        let explicit = "0.5,0.5,0.5:0.25,0.25,0.25".parse::<NormalizationFlag>().unwrap();
        assert_eq!(
            explicit,
            NormalizationFlag::Explicit(Normalization::MeanStd { mean: vec![0.5; 3], std: vec![0.25; 3] })
        );
        for bad in ["0.5,0.5:0.25", "0.5,x,0.5:1,1,1", "0.5,0.5,0.5", "0,0,0:1,0,1", "cohen"] {
            assert!(bad.parse::<NormalizationFlag>().is_err(), "{bad} accepted");
        }
        assert_eq!(NormalizationFlag::Reference.resolve(Dataset::Mnist), Normalization::None);
    }

    #[test]
    fn architecture_names() {
        for a in ReferenceArch::ALL {
            assert_eq!(a.name().parse::<ReferenceArch>().unwrap(), a);
        }
        let err = "resnet50".parse::<ReferenceArch>().unwrap_err();
        assert!(err.contains("cifar_resnet20"), "{err}");
    }
}

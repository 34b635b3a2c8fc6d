//! `crt-trainer import --from pytorch FILE --arch NAME --dataset NAME --out DIR`: a checkpoint of
//! the reference codes becomes a model directory (`model.safetensors` + `model.json`, as `train`
//! writes), so `certify --model DIR` and `transfer --teacher DIR` work on it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::config::Dataset;
use crate::models::import::{self, NormalizationFlag, NormalizationSource, ReferenceArch};
use crate::models::Normalization;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFormat {
    /// A `torch.save` checkpoint in PyTorch's zip format (torch >= 1.6).
    Pytorch,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The format of FILE.
    #[arg(long, value_enum)]
    pub from: ImportFormat,
    /// The checkpoint, e.g. a reference code's `checkpoint.pth.tar`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The reference architecture name: cifar_resnet20, cifar_resnet110, lenet or vit.
    #[arg(long)]
    pub arch: ReferenceArch,
    /// The dataset the model classifies: mnist, fashion-mnist or cifar10.
    #[arg(long)]
    pub dataset: Dataset,
    /// Output directory (created); model.safetensors and model.json are written into it.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The input normalization when the file does not store it: `reference` (the reference codes'
    /// constants for the dataset; none for MNIST), `none`, or MEANS:STDS such as
    /// 0.4914,0.4822,0.4465:0.2023,0.1994,0.2010 [default: reference].
    #[arg(long, value_name = "reference|none|M1,M2,M3:S1,S2,S3")]
    pub normalization: Option<NormalizationFlag>,
    /// The noise level the model was trained with; certify uses it unless given --sigma.
    #[arg(long, allow_negative_numbers = true)]
    pub sigma: Option<f64>,
}

pub fn execute(args: ImportArgs, device: &candle_core::Device) -> anyhow::Result<()> {
    if let Some(s) = args.sigma {
        anyhow::ensure!(s.is_finite() && s > 0.0, "--sigma {s}: must be a positive number");
    }
    let ImportFormat::Pytorch = args.from;
    let imported = import::import_pytorch(&args.file, args.arch, args.dataset, args.normalization.as_ref(), device)?;
    let meta = import::write_model_dir(&imported, args.sigma, &args.out)?;
    let source = match &imported.source {
        NormalizationSource::Checkpoint { mean_key, std_key } => format!("read from the file ({mean_key}, {std_key})"),
        NormalizationSource::Flag => "from --normalization".to_string(),
        NormalizationSource::DatasetDefault => format!("the reference codes' default for {}", args.dataset.as_str()),
    };
    let constants = match &meta.normalization {
        Normalization::None => "none".to_string(),
        Normalization::MeanStd { mean, std } => format!("mean {mean:?}, std {std:?}"),
    };
    println!(
        "imported {} ({}: {} on {}, {} parameters; {} tensors loaded, {} ignored) into {}\nnormalization: {constants}, {source}",
        args.file.display(),
        args.arch,
        meta.arch.as_str(),
        meta.dataset.as_str(),
        meta.parameters,
        imported.loaded,
        imported.ignored,
        args.out.display(),
    );
    Ok(())
}

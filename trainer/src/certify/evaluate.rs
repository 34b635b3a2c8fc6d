//! CERTIFY or PREDICT over a list of images held in memory: one table row and one `certified` event
//! per image, progress after each, a stop check between images, and `summary.json` at the end.
//! Tests call these directly with their own images; the CLI feeds them the dataset's test split.
//!
//! A resumed run (`Sink::resume`) keeps the complete rows of the existing table, evaluates (and
//! reports `certified` for) only the images not in it, appends their rows, and summarizes them all.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use super::smoothed::{SmoothedClassifier, Smoothing};
use super::summary::{CertifySummary, PredictSummary};
use super::table::{Table, TableWriter};
use crate::events::{ArtifactKind, Certificate};
use crate::models::Model;
use crate::report::Reporter;
use crate::stop::StopFlag;

pub const SUMMARY_FILE: &str = "summary.json";

/// One test image: its index in the split (also the key of its noise), label and pixels (C x H x W
/// in [0, 1], the model's dataset shape).
#[derive(Debug, Clone, Copy)]
pub struct LabeledImage<'a> {
    pub idx: u64,
    pub label: i64,
    pub pixels: &'a [f32],
}

/// Where results go: the output directory, the event reporter, the stop request to honour, and
/// whether to continue the table already in the directory (else it is started afresh).
#[derive(Clone, Copy)]
pub struct Sink<'a> {
    pub out_dir: &'a Path,
    pub reporter: &'a Reporter,
    pub stop: &'a StopFlag,
    pub resume: bool,
}

/// The certificates of the images done (on resume, the rows kept from the table first); `summary`
/// is None when the run was stopped before the end.
#[derive(Debug)]
pub struct CertifyRun {
    pub certificates: Vec<Certificate>,
    pub summary: Option<CertifySummary>,
}

#[derive(Debug)]
pub struct PredictRun {
    pub certificates: Vec<Certificate>,
    pub summary: Option<PredictSummary>,
}

/// CERTIFY every image; writes `certify.tsv` and `summary.json` into the sink's directory.
pub fn certify_images(
    model: &Model,
    images: &[LabeledImage],
    params: &Smoothing,
    sink: Sink,
) -> anyhow::Result<CertifyRun> {
    let mut smoothed = SmoothedClassifier::new(model, params.clone());
    let started = Instant::now();
    let table = if params.mode.is_fixed() { Table::Certify } else { Table::CertifySequential };
    let pass = each_image(images, table, sink, |image| {
        let c = smoothed.certify(image.idx, image.pixels)?;
        let sequential = c.decision.is_some();
        Ok(Certificate {
            idx: image.idx,
            label: image.label,
            predict: c.predict,
            radius: Some(c.radius),
            correct: c.predict == image.label,
            count_a: Some(c.count_a),
            p_lower: Some(c.p_lower),
            time: 0.0,
            samples: sequential.then_some(c.samples),
            decision: c.decision.map(|d| d.as_str().to_string()),
            p_upper: c.p_upper,
        })
    })?;
    let summary =
        (!pass.stopped).then(|| CertifySummary::new(&pass.certificates, params, started.elapsed().as_secs_f64()));
    if let Some(s) = &summary {
        write_summary(sink, s)?;
    }
    Ok(CertifyRun { certificates: pass.certificates, summary })
}

/// PREDICT every image; writes `predict.tsv` and `summary.json` into the sink's directory.
pub fn predict_images(
    model: &Model,
    images: &[LabeledImage],
    params: &Smoothing,
    sink: Sink,
) -> anyhow::Result<PredictRun> {
    let mut smoothed = SmoothedClassifier::new(model, params.clone());
    let started = Instant::now();
    let pass = each_image(images, Table::Predict, sink, |image| {
        let p = smoothed.predict(image.idx, image.pixels)?;
        Ok(Certificate {
            idx: image.idx,
            label: image.label,
            predict: p.predict,
            radius: None,
            correct: p.predict == image.label,
            count_a: Some(p.count_a),
            p_lower: None,
            time: 0.0,
            ..Certificate::default()
        })
    })?;
    let summary =
        (!pass.stopped).then(|| PredictSummary::new(&pass.certificates, params, started.elapsed().as_secs_f64()));
    if let Some(s) = &summary {
        write_summary(sink, s)?;
    }
    Ok(PredictRun { certificates: pass.certificates, summary })
}

/// The certificates of one pass over the images, and whether a stop request cut it short.
struct Pass {
    certificates: Vec<Certificate>,
    stopped: bool,
}

/// Runs `one` on every image (timing it), writing the table and the events as it goes.
fn each_image(
    images: &[LabeledImage],
    table: Table,
    sink: Sink,
    mut one: impl FnMut(&LabeledImage) -> candle_core::Result<Certificate>,
) -> anyhow::Result<Pass> {
    std::fs::create_dir_all(sink.out_dir)
        .with_context(|| format!("cannot create the output directory {}", sink.out_dir.display()))?;
    let (mut writer, mut certificates) = if sink.resume {
        TableWriter::resume(sink.out_dir, table)?
    } else {
        (TableWriter::create(sink.out_dir, table)?, Vec::new())
    };
    let phase = match table {
        Table::Certify | Table::CertifySequential => "certify",
        Table::Predict => "predict",
    };
    let done: HashSet<u64> = certificates.iter().map(|c| c.idx).collect();
    let todo: Vec<&LabeledImage> = images.iter().filter(|image| !done.contains(&image.idx)).collect();
    if sink.resume {
        sink.reporter.log(format!(
            "resuming {}: {} images already done, {} to go",
            writer.path().display(),
            certificates.len(),
            todo.len()
        ));
    }
    let total = (certificates.len() + todo.len()) as u64;
    certificates.reserve(todo.len());
    sink.reporter.progress(phase, certificates.len() as u64, total, "images");
    for image in todo {
        if sink.stop.is_raised() {
            sink.reporter.log(format!("stop requested: {} of {total} images done", certificates.len()));
            report_artifact(sink, writer.path(), ArtifactKind::Certificates)?;
            return Ok(Pass { certificates, stopped: true });
        }
        let started = Instant::now();
        let mut cert = one(image).with_context(|| format!("image {}", image.idx))?;
        cert.time = started.elapsed().as_secs_f64();
        writer.write(&cert)?;
        sink.reporter.certified(cert.clone());
        certificates.push(cert);
        sink.reporter.progress(phase, certificates.len() as u64, total, "images");
    }
    report_artifact(sink, writer.path(), ArtifactKind::Certificates)?;
    Ok(Pass { certificates, stopped: false })
}

fn write_summary(sink: Sink, summary: &impl serde::Serialize) -> anyhow::Result<()> {
    let path = sink.out_dir.join(SUMMARY_FILE);
    let text = serde_json::to_string_pretty(summary)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    report_artifact(sink, &path, ArtifactKind::Summary)
}

fn report_artifact(sink: Sink, path: &Path, kind: ArtifactKind) -> anyhow::Result<()> {
    sink.reporter.artifact(path, kind).with_context(|| format!("cannot read back {}", path.display()))
}

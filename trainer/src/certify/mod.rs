//! Certification of Gaussian-smoothed classifiers (Cohen et al. 2019): CERTIFY gives each test
//! image a prediction and an L2 radius within which it provably holds (with probability 1 - alpha),
//! PREDICT a prediction alone. See docs/certification.md.
//!
//! - [`clopper_pearson`]: the confidence bound and the radius it certifies;
//! - [`binom_test`]: PREDICT's hypothesis test;
//! - [`sampler`]: class votes of the base model under noise, batched;
//! - [`sequential`]: the anytime-valid sequential modes (target radius, adaptive N);
//! - [`smoothed`]: CERTIFY and PREDICT on one image;
//! - [`evaluate`]: a list of in-memory images to tables, events and a summary;
//! - [`summary`]: certified accuracy by radius and ACR;
//! - [`table`]: `certify.tsv` and `predict.tsv`;
//! - `job`: a run from its configuration (model, sigma, test split).

pub mod binom_test;
pub mod clopper_pearson;
pub mod evaluate;
mod job;
pub mod sampler;
pub mod sequential;
pub mod smoothed;
pub mod summary;
pub mod table;

pub use evaluate::{certify_images, predict_images, CertifyRun, LabeledImage, PredictRun, Sink, SUMMARY_FILE};
pub use job::{run_certify, run_predict, select};
pub use smoothed::{Certified, Predicted, SmoothedClassifier, Smoothing, ABSTAIN};
pub use summary::{CertifySummary, PredictSummary, RadiusAccuracy};

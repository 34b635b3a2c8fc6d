//! What one training step minimizes. The loop asks an [`Objective`] for the loss of a batch; a
//! training method (`train`) and a teacher-guided loss (`transfer`) are the two kinds of objective.

use candle_core::Tensor;
use rand::rngs::StdRng;

use crate::config::Method;
use crate::models::Model;

/// One step's inputs. `rng` is the step's own stream (derived from seed and step number), so a run
/// resumed at any step draws exactly the noise the uninterrupted run would have drawn.
pub struct StepInput<'a> {
    /// [B, C, H, W] in [0, 1] pixel space (augmented where the dataset calls for it).
    pub images: &'a Tensor,
    /// [B] u32 class indices.
    pub labels: &'a Tensor,
    /// The epoch in progress (0-based), for methods with warm-up or deferred terms.
    pub epoch: usize,
    pub rng: &'a mut StdRng,
}

pub struct StepLoss {
    /// Scalar loss to differentiate.
    pub loss: Tensor,
    /// [B, classes] logits of the batch's images as trained on, for the training accuracy; None
    /// where the method has no single such prediction.
    pub logits: Option<Tensor>,
}

pub trait Objective {
    fn loss(&self, model: &Model, input: StepInput<'_>) -> anyhow::Result<StepLoss>;
}

/// The training methods' losses: the one place where a method becomes a loss function.
/// Standard and Gaussian training are computed here because they also yield the logits for the
/// training accuracy; the robust methods' losses (several noisy copies, attacks) come from
/// `methods::training_loss`, which draws from the same step RNG.
impl Objective for Method {
    fn loss(&self, model: &Model, input: StepInput<'_>) -> anyhow::Result<StepLoss> {
        match self {
            Method::Standard => cross_entropy_on(model, input.images, input.labels),
            Method::Gaussian { sigma } => {
                // One draw per image per step; the noisy image is not clipped to [0, 1] (Cohen et al.).
                let noise = crate::noise::gaussian(input.rng, input.images.shape(), *sigma, model.device())?;
                cross_entropy_on(model, &(input.images + noise)?, input.labels)
            }
            Method::SmoothAdv { .. } | Method::Macer { .. } | Method::Consistency { .. } | Method::SmoothMix { .. } => {
                let loss =
                    crate::methods::training_loss(self, model, input.images, input.labels, input.epoch, input.rng)?;
                Ok(StepLoss { loss, logits: None })
            }
        }
    }
}

/// Mean cross-entropy of the model (training mode) on `x`.
fn cross_entropy_on(model: &Model, x: &Tensor, labels: &Tensor) -> anyhow::Result<StepLoss> {
    let logits = model.forward_t(x, true)?;
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    Ok(StepLoss { loss, logits: Some(logits) })
}

//! A bias-free convolution followed by training-mode batch normalization (+ ReLU), as one op;
//! and the same with a residual add before the ReLU (the end of a ResNet block).
//!
//! Fused for the backward pass more than the forward: candle's autograd materializes every
//! intermediate gradient as `zeros_like` + `add` (three extra passes over an activation-sized
//! tensor), so keeping the convolution's output out of the graph saves that for each of a
//! ResNet's conv-BN pairs. The convolution's output is kept inside the op for the backward pass.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::conv::{backward_by_sample, relu_mask, Conv2d, ParamGrads};
use super::im2col::ConvGeom;
use super::norm::{BatchNormTrain, BatchStats};
use super::storage::{slice, with_values};

const NAME: &str = "crt-conv-bn";

pub struct ConvBnTrain {
    fused: Fused,
    relu: bool,
}

/// What both fused ops share: the convolution, the BatchNorm's epsilon, and what the forward pass
/// leaves for the backward pass and for the caller.
struct Fused {
    conv: Conv2d,
    eps: f64,
    saved: Mutex<Option<Saved>>,
    /// The batch statistics, shared with the caller (candle takes the op itself by value).
    stats: Arc<Mutex<Option<BatchStats>>>,
}

/// What the forward pass leaves for the backward pass and the running-statistics update.
struct Saved {
    geom: ConvGeom,
    conv_out: Vec<f32>,
    norm: BatchNormTrain,
}

/// The convolution's output shape [N, cout, ho, wo].
fn out_dims(g: &ConvGeom) -> [usize; 4] {
    [g.batch, g.cout, g.ho, g.wo]
}

impl Fused {
    fn new(stride: usize, pad: usize, eps: f64, tracked: bool) -> Self {
        let conv = Conv2d::new(stride, pad, false, 1, tracked);
        Fused { conv, eps, saved: Mutex::new(None), stats: Arc::default() }
    }

    /// The convolution with its batch statistics, the normalization (`finish` applies it to the
    /// convolution's output, with whatever follows it), and what the backward pass needs, kept.
    fn forward(
        &self,
        g: ConvGeom,
        x: &[f32],
        w: &[f32],
        relu: bool,
        finish: impl FnOnce(&BatchNormTrain, &[usize], &[f32]) -> Result<Vec<f32>>,
    ) -> Result<(CpuStorage, Shape)> {
        let (conv_out, moments) = self.conv.forward_with_moments(&g, x, w);
        let dims = out_dims(&g);
        let stats = BatchStats::from_planes(g.batch, g.cout, &moments)?;
        let norm = BatchNormTrain::new(&stats, self.eps, relu);
        let out = finish(&norm, &dims, &conv_out)?;
        *self.stats.lock().expect("conv-bn lock") = Some(stats);
        *self.saved.lock().expect("conv-bn lock") = Some(Saved { geom: g, conv_out, norm });
        Ok((CpuStorage::F32(out), Shape::from(dims.to_vec())))
    }

    /// Runs `f` on what the forward pass saved.
    fn with_saved<R>(&self, op: &str, f: impl FnOnce(&Saved) -> Result<R>) -> Result<R> {
        let saved = self.saved.lock().expect("conv-bn lock");
        let Some(s) = saved.as_ref() else { candle_core::bail!("{op}: backward pass before the forward pass") };
        f(s)
    }
}

impl ConvBnTrain {
    pub fn new(stride: usize, pad: usize, eps: f64, relu: bool, tracked: bool) -> Self {
        ConvBnTrain { fused: Fused::new(stride, pad, eps, tracked), relu }
    }

    /// Where the forward pass leaves the batch statistics of the convolution's output.
    pub fn stats_handle(&self) -> Arc<Mutex<Option<BatchStats>>> {
        self.fused.stats.clone()
    }
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        NAME
    }

    /// x [N, cin, H, W], w [cout, cin, kh, kw], gb = [gamma; beta] (2 * cout).
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.fused.conv.geom(xl, wl)?;
        let gb = slice(gs, gl, NAME)?;
        if gb.len() != 2 * g.cout {
            candle_core::bail!("{NAME}: {} affine values for {} channels", gb.len(), g.cout)
        }
        let (x, w) = (slice(xs, xl, NAME)?, slice(ws, wl, NAME)?);
        self.fused.forward(g, x, w, self.relu, |norm, dims, y| norm.forward(dims, y, &gb[..g.cout], &gb[g.cout..]))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.fused.with_saved(NAME, |s| {
            let (dims, c) = (out_dims(&s.geom), s.geom.cout);
            let (grads, dgamma, dbeta) = with_values(gb, NAME, |gbv| {
                with_values(grad, NAME, |gv| {
                    let coeffs = s.norm.grad_coeffs(&dims, &s.conv_out, &gbv[..c], &gbv[c..], gv)?;
                    // The BatchNorm's input gradient is made per sample, where the convolution's
                    // backward pass uses it, and never stored whole.
                    let grads = self.fused.conv.grads_by_sample(&s.geom, x, w, None, |smp, dy| {
                        coeffs.write_sample(smp, gv, &s.conv_out, dy)
                    })?;
                    Ok((grads, coeffs.dweight, coeffs.dbias))
                })
            })?;
            let dgb = gb
                .track_op()
                .then(|| Tensor::from_vec([dgamma, dbeta].concat(), gb.shape(), gb.device()))
                .transpose()?;
            Ok((grads.dx, grads.dw, dgb))
        })
    }
}

const ADD_NAME: &str = "crt-conv-bn-add-relu";

/// The end of a residual block as one op: relu(BatchNorm(conv(x)) + shortcut), training mode.
///
/// Keeps the block's pre-add tensor out of the graph: candle's autograd would give it a
/// `zeros_like` + `add` (run on its own thread pair while the kernels' threads wait), and the
/// separate add + ReLU op its own passes forward and backward. The kernel and the BatchNorm's
/// gamma and beta come in as one flat tensor (candle's custom ops take at most three inputs).
pub struct ConvBnAddRelu {
    fused: Fused,
    kernel: [usize; 4],
}

impl ConvBnAddRelu {
    /// `kernel`: the convolution's kernel shape [cout, cin, kh, kw].
    pub fn new(kernel: [usize; 4], stride: usize, pad: usize, eps: f64, tracked: bool) -> Self {
        ConvBnAddRelu { fused: Fused::new(stride, pad, eps, tracked), kernel }
    }

    pub fn stats_handle(&self) -> Arc<Mutex<Option<BatchStats>>> {
        self.fused.stats.clone()
    }

    /// The flat parameters split into (kernel, gamma, beta).
    fn split<'a>(&self, params: &'a [f32]) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
        let (cout, wlen) = (self.kernel[0], self.kernel.iter().product::<usize>());
        if params.len() != wlen + 2 * cout {
            candle_core::bail!(
                "{ADD_NAME}: {} parameters for a {:?} kernel and {cout} channels",
                params.len(),
                self.kernel
            )
        }
        let (w, gb) = params.split_at(wlen);
        Ok((w, &gb[..cout], &gb[cout..]))
    }
}

impl CustomOp3 for ConvBnAddRelu {
    fn name(&self) -> &'static str {
        ADD_NAME
    }

    /// x [N, cin, H, W], shortcut [N, cout, ho, wo], params = [kernel (flat); gamma; beta].
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(xl.dims(), &self.kernel, self.fused.conv.stride, self.fused.conv.pad)?;
        if sl.dims() != out_dims(&g) {
            candle_core::bail!("{ADD_NAME}: shortcut {:?} for an output of {:?}", sl.dims(), out_dims(&g))
        }
        let (w, gamma, beta) = self.split(slice(ps, pl, ADD_NAME)?)?;
        let (x, shortcut) = (slice(xs, xl, ADD_NAME)?, slice(ss, sl, ADD_NAME)?);
        self.fused.forward(g, x, w, false, |norm, dims, y| norm.forward_add_relu(dims, y, gamma, beta, shortcut))
    }

    fn bwd(
        &self,
        x: &Tensor,
        shortcut: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient behind the final ReLU: the shortcut's gradient, and the BatchNorm's output
        // gradient (whose own normalization then runs without a mask).
        let masked = relu_mask(grad, res)?;
        let param_grads = if params.track_op() { ParamGrads::Weight } else { ParamGrads::None };
        let (dx, dparams) = self.fused.with_saved(ADD_NAME, |s| {
            with_values(params, ADD_NAME, |pv| {
                let (w, gamma, beta) = self.split(pv)?;
                let coeffs = s.norm.grad_coeffs(&out_dims(&s.geom), &s.conv_out, gamma, beta, &masked)?;
                with_values(x, ADD_NAME, |xv| {
                    let (dx, sums) = backward_by_sample(&s.geom, xv, w, x.track_op(), param_grads, |smp, dy| {
                        coeffs.write_sample(smp, &masked, &s.conv_out, dy)
                    });
                    Ok((dx, sums.map(|(dw, _)| [dw, coeffs.dweight, coeffs.dbias].concat())))
                })
            })
        })?;
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
        let dparams = dparams.map(|v| Tensor::from_vec(v, params.shape(), params.device())).transpose()?;
        let dshortcut =
            shortcut.track_op().then(|| Tensor::from_vec(masked, shortcut.shape(), shortcut.device())).transpose()?;
        Ok((dx, dshortcut, dparams))
    }
}

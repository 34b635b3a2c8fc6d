//! Element-wise math of the transformer kernels in 8-lane vectors (`wide::f32x8`): softmax and
//! GELU's derivative (exp), maxima and sums.
//!
//! Slices of any length: the last partial group of 8 goes through the same vector code, padded.

use wide::f32x8;

use super::transformer::cdf as normal_cdf;

pub(super) const LANES: usize = 8;

/// The 8 values at the start of `s`.
pub(super) fn load8(s: &[f32]) -> f32x8 {
    f32x8::from(<[f32; LANES]>::try_from(&s[..LANES]).expect("8 values"))
}

/// `v` into the first 8 values of `s`.
pub(super) fn store8(s: &mut [f32], v: f32x8) {
    s[..LANES].copy_from_slice(v.as_array());
}

/// A chunk of up to 8 values, zero-padded.
fn load(chunk: &[f32]) -> f32x8 {
    match <[f32; LANES]>::try_from(chunk) {
        Ok(a) => f32x8::from(a),
        Err(_) => {
            let mut a = [0f32; LANES];
            a[..chunk.len()].copy_from_slice(chunk);
            f32x8::from(a)
        }
    }
}

fn store(chunk: &mut [f32], v: f32x8) {
    match <&mut [f32; LANES]>::try_from(&mut *chunk) {
        Ok(a) => *a = v.to_array(),
        Err(_) => {
            let n = chunk.len();
            chunk.copy_from_slice(&v.to_array()[..n]);
        }
    }
}

/// φ(x) = exp(-x² / 2) / √(2π) for 8 values.
fn density8(x: f32x8) -> f32x8 {
    let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    f32x8::splat(inv_sqrt_2pi) * (f32x8::splat(-0.5) * x * x).exp()
}

/// GELU's forward pass: `cdf` = Φ(z) and `act` = z Φ(z) for the pre-activations `z`. Φ goes
/// through the scalar `erff` (accurate to an ulp): a vectorized rational approximation (Abramowitz
/// and Stegun 7.1.26, |error| <= 1.5e-7) made a block's parameter gradients differ from the exact
/// form's by up to 1.8e-4 of their scale, its error being systematic rather than rounding noise.
pub fn gelu(z: &[f32], cdf: &mut [f32], act: &mut [f32]) {
    for ((z, c), a) in z.chunks(LANES).zip(cdf.chunks_mut(LANES)).zip(act.chunks_mut(LANES)) {
        let zv = load(z);
        let cv = f32x8::from(zv.to_array().map(normal_cdf));
        store(c, cv);
        store(a, zv * cv);
    }
}

/// GELU's backward pass in place: g *= Φ(z) + z φ(z), with Φ(z) kept by the forward pass.
pub fn gelu_backward(g: &mut [f32], z: &[f32], cdf: &[f32]) {
    for ((g, z), c) in g.chunks_mut(LANES).zip(z.chunks(LANES)).zip(cdf.chunks(LANES)) {
        let zv = load(z);
        store(g, load(g) * (load(c) + zv * density8(zv)));
    }
}

/// softmax(scale · row) in place (max-subtracted).
pub fn softmax_scaled(row: &mut [f32], scale: f32) {
    // Lane-wise maxima first: a scalar running max is one long dependency chain.
    let mut lanes_max = f32x8::splat(f32::NEG_INFINITY);
    for c in row.chunks(LANES) {
        let v = match <[f32; LANES]>::try_from(c) {
            Ok(a) => f32x8::from(a),
            Err(_) => {
                let mut a = [f32::NEG_INFINITY; LANES];
                a[..c.len()].copy_from_slice(c);
                f32x8::from(a)
            }
        };
        lanes_max = lanes_max.max(v);
    }
    let max = lanes_max.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max);
    let (max, scale) = (f32x8::splat(max), f32x8::splat(scale));
    let mut sum = f32x8::ZERO;
    let full = row.len() - row.len() % LANES;
    let (body, tail) = row.split_at_mut(full);
    for c in body.chunks_exact_mut(LANES) {
        let e = ((load(c) - max) * scale).exp();
        sum += e;
        store(c, e);
    }
    let mut total = sum.reduce_add();
    if !tail.is_empty() {
        // Padding lanes would add exp(-max·scale) to the sum: keep only the real lanes.
        let e = ((load(tail) - max) * scale).exp();
        store(tail, e);
        total += tail.iter().sum::<f32>();
    }
    let inv = f32x8::splat(1.0 / total);
    for c in row.chunks_mut(LANES) {
        store(c, load(c) * inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_matches_the_scalar_form() {
        for i in -800..=800 {
            let x = i as f32 / 100.0;
            let want = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
            let got = density8(f32x8::splat(x)).to_array()[0];
            assert!((got - want).abs() <= 4e-7 * want.max(1e-3), "φ({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn softmax_rows_of_any_length_sum_to_one() {
        for len in [1, 7, 8, 49, 64] {
            let mut row: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let want: Vec<f32> = {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = row.iter().map(|v| ((v - max) * 0.25).exp()).collect();
                let s: f32 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            };
            softmax_scaled(&mut row, 0.25);
            for (g, w) in row.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6, "len {len}: {g} vs {w}");
            }
        }
    }
}

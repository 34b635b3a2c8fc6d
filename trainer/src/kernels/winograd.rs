//! Winograd's minimal filtering F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs
//! from a 4x4 block of inputs with 16 multiplications per (input, output) channel pair instead of
//! 36. Per sample,
//!   V[ξ][c][t] = (Bᵀ d_{c,t} B)[ξ]      the input tiles, transformed
//!   U[ξ][k][c] = (G g_{k,c} Gᵀ)[ξ]      the kernel, transformed once per call
//!   M[ξ]       = U[ξ] · V[ξ]            16 matrix multiplies, [cout, cin] x [cin, tiles]
//!   y_{k,t}    = Aᵀ M_{k,t} A           the 2x2 outputs
//! with ξ = 4a + b indexing the 4x4 transform domain. The same routine computes the input gradient
//! of such a convolution (a forward convolution of the output gradient with the flipped kernel).
//!
//! The multiplications fall by 2.25x, but the transforms read and write every value several times:
//! as written here (vectorized over a band's tiles) they cost about what the smaller gemms save,
//! so the path is off by default (`kernels::set_winograd`; docs/benchmarks.md). The gemms have cin
//! as their inner dimension and the transforms grow with the channels while the gemms grow with
//! their square, so only layers with at least [`MIN_CHANNELS`] take it.

use std::mem::MaybeUninit;

use super::gemm::{matmul, View};
use super::im2col::ConvGeom;
use super::storage::assume_init;

/// Transform-domain points per tile.
const POINTS: usize = 16;
/// Channels below which im2col's single gemm (inner dimension 9·cin) wins: on ResNet-20, a step
/// with its 16-channel layers on Winograd too was 6-14% slower than with them on im2col.
const MIN_CHANNELS: usize = 32;

/// Whether a convolution goes through Winograd: 3x3, stride 1, padding 1, enough channels.
pub fn applies(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.cin >= MIN_CHANNELS && g.cout >= MIN_CHANNELS
}

fn tiles(g: &ConvGeom) -> (usize, usize) {
    (g.ho.div_ceil(2), g.wo.div_ceil(2))
}

/// Scratch values one sample needs: V and M, and the four combined rows of the input transform.
pub fn scratch_len(g: &ConvGeom) -> usize {
    let (th, tw) = tiles(g);
    POINTS * th * tw * (g.cin + g.cout) + BAND_ROWS * (tw + 1)
}

/// Rows of the per-band work area: the even and odd columns of four input rows, then of their four
/// row combinations.
const BAND_ROWS: usize = 16;

/// Values of a kernel (or its gradient) in the transform domain: [16][cout][cin].
pub fn transformed_len(g: &ConvGeom) -> usize {
    POINTS * g.cout * g.cin
}

/// U [16][cout][cin] from the kernel w [cout, cin, 3, 3].
pub fn transform_kernel(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (cout, cin) = (g.cout, g.cin);
    let mut u = vec![0f32; POINTS * cout * cin];
    for k in 0..cout {
        for c in 0..cin {
            let f = &w[(k * cin + c) * 9..][..9];
            // G f: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 of the 3x3 kernel.
            let rows = |j: usize| {
                let (a, b, d) = (f[j], f[3 + j], f[6 + j]);
                [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d]
            };
            let cols = [rows(0), rows(1), rows(2)];
            for a in 0..4 {
                let (x, y, z) = (cols[0][a], cols[1][a], cols[2][a]);
                let t = [x, 0.5 * (x + y + z), 0.5 * (x - y + z), z];
                for (b, v) in t.into_iter().enumerate() {
                    u[((a * 4 + b) * cout + k) * cin + c] = v;
                }
            }
        }
    }
    u
}

/// One sample's convolution y [cout, ho, wo] from xs [cin, h, w] and the transformed kernel `u`;
/// every output value is written, and `y` is handed back whole.
pub fn conv_sample<'y>(
    g: &ConvGeom,
    xs: &[f32],
    u: &[f32],
    scratch: &mut [f32],
    y: &'y mut [MaybeUninit<f32>],
) -> &'y mut [f32] {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let (v, m, rows) = transformed_input(g, xs, scratch);
    for p in 0..POINTS {
        let up = View::row_major(&u[p * g.cout * g.cin..], g.cout, g.cin);
        let vp = View::row_major(&v[p * g.cin * t..], g.cin, t);
        matmul(&mut m[p * g.cout * t..][..g.cout * t], up, vp, false);
    }
    let y = &mut y[..g.out_len()];
    for k in 0..g.cout {
        output_transform(g, m, k, &mut y[k * g.pixels()..][..g.pixels()], rows);
    }
    // SAFETY: the tiles cover every output pixel of every channel, and `output_transform` writes
    // each pixel of its tile that lies inside the plane.
    unsafe { assume_init(y) }
}

/// Splits one sample's scratch into V (filled here: every input plane transformed), the
/// [16][cout][tiles] area the caller fills next (M or Z), and the per-band work rows.
fn transformed_input<'s>(
    g: &ConvGeom,
    xs: &[f32],
    scratch: &'s mut [f32],
) -> (&'s [f32], &'s mut [f32], &'s mut [f32]) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let (v, rest) = scratch.split_at_mut(POINTS * g.cin * t);
    let (out, rows) = rest.split_at_mut(POINTS * g.cout * t);
    for c in 0..g.cin {
        input_transform(g, &xs[c * g.h * g.w..][..g.h * g.w], c, v, rows);
    }
    (v, out, rows)
}

/// Bᵀ d B for every tile of one input plane, into V[ξ][c][t]. Per band of four input rows
/// (tile row ty): each row split into its even and odd padded columns (padded column j is input
/// column j - 1), the row combinations (d0 - d2, d1 + d2, d2 - d1, d1 - d3) of those, then the
/// same combinations of columns, which on even (e) and odd (o) halves are e[i] - e[i+1],
/// o[i] + e[i+1], e[i+1] - o[i], o[i] - o[i+1] for tile i: contiguous slices throughout, so the
/// loops vectorize.
fn input_transform(g: &ConvGeom, plane: &[f32], c: usize, v: &mut [f32], work: &mut [f32]) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let n = tw + 1;
    let (split, combos) = work[..BAND_ROWS * n].split_at_mut(8 * n);
    for ty in 0..th {
        // Even / odd padded columns of input rows 2ty - 1 ..= 2ty + 2 (zero outside the plane).
        for (i, halves) in split.chunks_exact_mut(2 * n).enumerate() {
            let (even, odd) = halves.split_at_mut(n);
            even.fill(0.0);
            odd.fill(0.0);
            let r = (2 * ty + i).wrapping_sub(1);
            if r < g.h {
                let row = &plane[r * g.w..][..g.w];
                // Input column x sits at padded column x + 1: even x in the odd half at x / 2,
                // odd x in the even half at (x + 1) / 2.
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    odd[g.w / 2] = *last;
                }
                for ((pair, o), e) in pairs.zip(odd.iter_mut()).zip(even[1..].iter_mut()) {
                    *o = pair[0];
                    *e = pair[1];
                }
            }
        }
        let (d0, rest) = split.split_at(2 * n);
        let (d1, rest) = rest.split_at(2 * n);
        let (d2, d3) = rest.split_at(2 * n);
        let (c0, rest) = combos.split_at_mut(2 * n);
        let (c1, rest) = rest.split_at_mut(2 * n);
        let (c2, c3) = rest.split_at_mut(2 * n);
        for j in 0..2 * n {
            c0[j] = d0[j] - d2[j];
            c1[j] = d1[j] + d2[j];
            c2[j] = d2[j] - d1[j];
            c3[j] = d1[j] - d3[j];
        }
        for a in 0..4 {
            let (e, o) = combos[2 * a * n..][..2 * n].split_at(n);
            let at = |b: usize| ((a * 4 + b) * g.cin + c) * t + ty * tw;
            let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
            let dst = &mut v[at(0)..][..tw];
            dst.iter_mut().zip(e0).zip(e1).for_each(|((d, a), b)| *d = a - b);
            let dst = &mut v[at(1)..][..tw];
            dst.iter_mut().zip(o0).zip(e1).for_each(|((d, a), b)| *d = a + b);
            let dst = &mut v[at(2)..][..tw];
            dst.iter_mut().zip(e1).zip(o0).for_each(|((d, a), b)| *d = a - b);
            let dst = &mut v[at(3)..][..tw];
            dst.iter_mut().zip(o0).zip(o1).for_each(|((d, a), b)| *d = a - b);
        }
    }
}

/// Aᵀ M A for every tile of output channel `k`, into its plane: per band, the row combinations
/// m0 + m1 + m2 and m1 - m2 - m3 of each column as contiguous slices over the band's tiles (in
/// `work`), then the same of columns into each output row's even and odd pixels.
fn output_transform(g: &ConvGeom, m: &[f32], k: usize, plane: &mut [MaybeUninit<f32>], work: &mut [f32]) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let work = &mut work[..8 * tw];
    for ty in 0..th {
        let mv: [&[f32]; POINTS] = std::array::from_fn(|p| &m[(p * g.cout + k) * t + ty * tw..][..tw]);
        for b in 0..4 {
            let (m0, m1, m2, m3) = (mv[b], mv[4 + b], mv[8 + b], mv[12 + b]);
            let (s0, rest) = work[2 * b * tw..][..2 * tw].split_at_mut(tw);
            for x in 0..tw {
                s0[x] = m0[x] + m1[x] + m2[x];
                rest[x] = m1[x] - m2[x] - m3[x];
            }
        }
        for i in 0..2 {
            let y = 2 * ty + i;
            if y >= g.ho {
                continue;
            }
            let s = |b: usize| &work[(2 * b + i) * tw..][..tw];
            let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
            let row = &mut plane[y * g.wo..][..g.wo];
            let pairs = row.chunks_exact_mut(2);
            let full = pairs.len();
            for (x, pair) in pairs.enumerate() {
                pair[0].write(s0[x] + s1[x] + s2[x]);
                pair[1].write(s1[x] - s2[x] - s3[x]);
            }
            if g.wo % 2 == 1 {
                row[g.wo - 1].write(s0[full] + s1[full] + s2[full]);
            }
        }
    }
}

/// Adds one sample's weight gradient, in the transform domain, to `du` [16][cout][cin]:
/// dU[ξ] += Z[ξ] · V[ξ]ᵀ with V the input tiles transformed as in the forward pass and
/// Z = A dY Aᵀ the output-gradient tiles (rows q0, q0 + q1, q0 - q1, -q1 of each 2x2 tile, then the
/// same of columns). The inner dimension of these gemms is the tile count. [`weight_grad`] maps
/// the sum back: dW = Gᵀ dU G (the adjoint of the forward pass's y = Aᵀ[(G g Gᵀ) ⊙ V]A).
pub fn weight_grad_sample(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let (v, z, rows) = transformed_input(g, xs, scratch);
    for k in 0..g.cout {
        gradient_transform(g, &dy[k * g.pixels()..][..g.pixels()], k, z, rows);
    }
    for p in 0..POINTS {
        let zp = View::row_major(&z[p * g.cout * t..], g.cout, t);
        let vp = View::row_major(&v[p * g.cin * t..], g.cin, t).t();
        matmul(&mut du[p * g.cout * g.cin..][..g.cout * g.cin], zp, vp, true);
    }
}

/// A dY Aᵀ for every 2x2 tile of output-gradient plane `k` (zero beyond odd edges), into
/// Z[ξ][k][t]: per band, the two dY rows split into even and odd pixels, their row combinations
/// (q0, q0 + q1, q0 - q1, -q1), then the same of the (even, odd) column pair.
fn gradient_transform(g: &ConvGeom, plane: &[f32], k: usize, z: &mut [f32], work: &mut [f32]) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let (halves, _) = work.split_at_mut(4 * tw);
    for ty in 0..th {
        halves.fill(0.0);
        for i in 0..2 {
            let y = 2 * ty + i;
            if y < g.ho {
                let (even, odd) = halves[2 * i * tw..][..2 * tw].split_at_mut(tw);
                for (x, pair) in plane[y * g.wo..][..g.wo].chunks(2).enumerate() {
                    even[x] = pair[0];
                    odd[x] = pair.get(1).copied().unwrap_or(0.0);
                }
            }
        }
        let (q0, q1) = halves.split_at(2 * tw);
        let (q0e, q0o) = q0.split_at(tw);
        let (q1e, q1o) = q1.split_at(tw);
        for a in 0..4 {
            let r = |e0: f32, e1: f32| match a {
                0 => e0,
                1 => e0 + e1,
                2 => e0 - e1,
                _ => -e1,
            };
            for b in 0..4 {
                let dst = &mut z[((a * 4 + b) * g.cout + k) * t + ty * tw..][..tw];
                for (x, d) in dst.iter_mut().enumerate() {
                    let (e, o) = (r(q0e[x], q1e[x]), r(q0o[x], q1o[x]));
                    *d = match b {
                        0 => e,
                        1 => e + o,
                        2 => e - o,
                        _ => -o,
                    };
                }
            }
        }
    }
}

/// dW [cout, cin, 3, 3] = Gᵀ dU G from the summed transform-domain gradient `du` [16][cout][cin]
/// (Gᵀ's rows: (1, ½, ½, 0), (0, ½, -½, 0), (0, ½, ½, 1)).
pub fn weight_grad(g: &ConvGeom, du: &[f32]) -> Vec<f32> {
    let (cout, cin) = (g.cout, g.cin);
    let mut dw = vec![0f32; cout * cin * 9];
    let gt = |m: [f32; 4]| [m[0] + 0.5 * (m[1] + m[2]), 0.5 * (m[1] - m[2]), 0.5 * (m[1] + m[2]) + m[3]];
    for k in 0..cout {
        for c in 0..cin {
            let m = |a: usize, b: usize| du[((a * 4 + b) * cout + k) * cin + c];
            // Gᵀ over rows for each of the 4 columns, then over columns.
            let cols: Vec<[f32; 3]> = (0..4).map(|b| gt([m(0, b), m(1, b), m(2, b), m(3, b)])).collect();
            let out = &mut dw[(k * cin + c) * 9..][..9];
            for i in 0..3 {
                let r = gt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                out[i * 3..i * 3 + 3].copy_from_slice(&r);
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct correlation with zero padding 1, in f64.
    fn direct(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut y = vec![0f64; g.out_len()];
        for k in 0..g.cout {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut s = 0f64;
                    for c in 0..g.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                                if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                                    let xi = (c * g.h + iy as usize) * g.w + ix as usize;
                                    s += x[xi] as f64 * w[((k * g.cin + c) * 3 + ky) * 3 + kx] as f64;
                                }
                            }
                        }
                    }
                    y[(k * g.ho + oy) * g.wo + ox] = s;
                }
            }
        }
        y
    }

    #[test]
    fn matches_the_direct_convolution_on_even_and_odd_planes() {
        for (cin, cout, h, w) in [(32, 32, 8, 8), (33, 40, 7, 5), (32, 36, 1, 3)] {
            let g = ConvGeom::new(&[1, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap();
            assert!(applies(&g));
            let x: Vec<f32> = (0..g.in_len()).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
            let k: Vec<f32> = (0..cout * cin * 9).map(|i| ((i * 104729) % 200) as f32 / 100.0 - 1.0).collect();
            let u = transform_kernel(&g, &k);
            let mut scratch = vec![f32::NAN; scratch_len(&g)];
            let mut y = vec![MaybeUninit::uninit(); g.out_len()];
            let got = conv_sample(&g, &x, &u, &mut scratch, &mut y).to_vec();
            let want = direct(&g, &x, &k);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() <= 1e-5 * scale, "{cin}x{h}x{w} -> {cout}: y[{i}] = {a}, want {b}");
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_direct_sum() {
        for (cin, cout, h, w) in [(32, 32, 8, 8), (33, 40, 7, 5)] {
            let g = ConvGeom::new(&[1, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap();
            let x: Vec<f32> = (0..g.in_len()).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
            let dy: Vec<f32> = (0..g.out_len()).map(|i| ((i * 6007) % 200) as f32 / 100.0 - 1.0).collect();
            // Two samples' worth (the same one twice) summed in the transform domain.
            let mut du = vec![0f32; POINTS * cout * cin];
            let mut scratch = vec![f32::NAN; scratch_len(&g)];
            weight_grad_sample(&g, &x, &dy, &mut du, &mut scratch);
            weight_grad_sample(&g, &x, &dy, &mut du, &mut scratch);
            let got = weight_grad(&g, &du);
            let mut want = vec![0f64; cout * cin * 9];
            for k in 0..cout {
                for c in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut s = 0f64;
                            for oy in 0..h {
                                for ox in 0..w {
                                    let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                                    if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                        let xi = (c * h + iy as usize) * w + ix as usize;
                                        s += 2.0 * x[xi] as f64 * dy[(k * h + oy) * w + ox] as f64;
                                    }
                                }
                            }
                            want[((k * cin + c) * 3 + ky) * 3 + kx] = s;
                        }
                    }
                }
            }
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() <= 1e-5 * scale, "{cin}x{h}x{w} -> {cout}: dw[{i}] = {a}, want {b}");
            }
        }
    }
}

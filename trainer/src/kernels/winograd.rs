//! Winograd's minimal filtering F(m x m, 3x3) for 3x3, stride-1, padding-1 convolutions (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each m x m block of outputs
//! from an α x α block of inputs (α = m + 2) with α² multiplications per (input, output) channel
//! pair instead of 9·m². Two sizes: F(2x2, 3x3) (16 points, 2.25x fewer multiplications) and
//! F(4x4, 3x3) (36 points, 4x fewer; its transforms have larger coefficients, so more rounding:
//! docs/benchmarks.md has the measured error), chosen per layer by [`tile_size`]. Per sample, with
//! channels innermost so that every transform works on 8 channels at once:
//!   X'[r][x][c]    the sample transposed to channels-last, with a zero border (padding 1)
//!   V[ξ][t][c]     = (Bᵀ d_{t,c} B)[ξ]     the input tiles, transformed
//!   U[ξ][c][k]     = (G g_{k,c} Gᵀ)[ξ]     the kernel, transformed once per call
//!   M[ξ]           = V[ξ] · U[ξ]           α² matrix multiplies, [tiles, cin] x [cin, cout]
//!   Y'[r][x][k]    = (Aᵀ M_{t,k} A)        the m x m outputs, channels-last, then transposed back
//! with ξ = α·a + b indexing the α x α transform domain. The same routine computes the input
//! gradient of such a convolution (a forward convolution of the output gradient with the flipped
//! kernel); the weight gradient is summed in the transform domain (see [`weight_grad_sample`]).
//!
//! The transposes to and from channels-last move each value once (8x8 blocks in AVX registers);
//! in exchange the transforms need no shuffles: each is loads, adds and stores of whole vectors.
//! The AVX2 code is the portable code compiled for AVX2 (`#[target_feature]`, chosen at run time);
//! both give the same bits (the same operations in the same order, no fused multiply-adds).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::im2col::ConvGeom;
use super::storage::{as_slots, assume_init};
#[cfg(target_arch = "x86_64")]
use super::vec8::Avx;
use super::vec8::Vec8;
use super::winograd_mul;

/// Channels per vector: the transforms work on 8 channels at a time.
const LANES: usize = 8;
/// Channels below which im2col's single gemm (inner dimension 9·cin) is used instead.
const MIN_CHANNELS: usize = 16;
/// Planes at least this wide (and high) take F(4x4, 3x3); smaller ones F(2x2, 3x3), whose
/// tiles leave the gemms more rows (an 8x8 plane has 4 tiles of 4x4 but 16 of 2x2).
const F4_MIN_PLANE: usize = 16;

/// The portable build's 8 lanes.
type Portable = [f32; LANES];

/// G of F(2x2, 3x3) (4x3, row-major, in f64): the kernel's transform.
const G2: [f64; 12] = [1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.];

/// G of F(4x4, 3x3) (6x3), interpolation points 0, ±1, ±2 and ∞.
#[rustfmt::skip]
const G4: [f64; 18] = [
    1. / 4., 0., 0.,
    -1. / 6., -1. / 6., -1. / 6.,
    -1. / 6., 1. / 6., -1. / 6.,
    1. / 24., 1. / 12., 1. / 6.,
    1. / 24., -1. / 12., 1. / 6.,
    0., 0., 1.,
];

/// Whether a convolution goes through Winograd: 3x3, stride 1, padding 1, channel counts that are
/// multiples of 8 and at least [`MIN_CHANNELS`].
pub fn applies(g: &ConvGeom) -> bool {
    let channels_fit = |c: usize| c >= MIN_CHANNELS && c.is_multiple_of(LANES);
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && channels_fit(g.cin) && channels_fit(g.cout)
}

/// m, the side of the output tiles: 4 for planes of at least [`F4_MIN_PLANE`], else 2.
pub fn tile_size(g: &ConvGeom) -> usize {
    if g.ho.min(g.wo) >= F4_MIN_PLANE {
        4
    } else {
        2
    }
}

/// Transform-domain points per tile, α².
fn points(g: &ConvGeom) -> usize {
    (tile_size(g) + 2).pow(2)
}

/// Tile rows and columns: m x m output blocks covering the plane (the last ones cut at edges).
fn tiles(g: &ConvGeom) -> (usize, usize) {
    let m = tile_size(g);
    (g.ho.div_ceil(m), g.wo.div_ceil(m))
}

/// Values of X' (channels-last, padded): (m·th + 2) rows of (m·tw + 2) pixels.
fn padded_len(g: &ConvGeom, channels: usize) -> usize {
    let ((th, tw), m) = (tiles(g), tile_size(g));
    (m * th + 2) * (m * tw + 2) * channels
}

/// Values of Y' or dY' (channels-last): m·th rows of m·tw pixels.
fn tiled_len(g: &ConvGeom, channels: usize) -> usize {
    let ((th, tw), m) = (tiles(g), tile_size(g));
    m * th * m * tw * channels
}

/// Scratch values one sample needs: the padded channels-last input, V, M (or Z) and the
/// channels-last output (or output gradient).
pub fn scratch_len(g: &ConvGeom) -> usize {
    let (th, tw) = tiles(g);
    let t = th * tw;
    padded_len(g, g.cin) + points(g) * (point_stride(t, g.cin) + point_stride(t, g.cout)) + tiled_len(g, g.cout)
}

/// Distance between consecutive transform-domain points' [tiles][channels] matrices in V, M and Z:
/// one cache line more than their size, which is a power of two for most ResNet layers. With the
/// exact size, a tile's 16 values of one channel group fell into one L1 cache set (16 lines in a
/// 12-way set), and each transform thrashed it.
fn point_stride(tiles: usize, channels: usize) -> usize {
    tiles * channels + SKEW
}

/// The extra floats between transform-domain points (one 64-byte cache line).
const SKEW: usize = 16;

/// The scratch split into (X', V, M or Z, Y' or dY').
fn split_scratch<'s>(g: &ConvGeom, scratch: &'s mut [f32]) -> [&'s mut [f32]; 4] {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let (xp, rest) = scratch.split_at_mut(padded_len(g, g.cin));
    let (v, rest) = rest.split_at_mut(points(g) * point_stride(t, g.cin));
    let (m, rest) = rest.split_at_mut(points(g) * point_stride(t, g.cout));
    [xp, v, m, &mut rest[..tiled_len(g, g.cout)]]
}

/// Values of a kernel (or its gradient) in the transform domain.
pub fn transformed_len(g: &ConvGeom) -> usize {
    points(g) * g.cout * g.cin
}

/// G (α x 3, row-major, in f64) of the layer's tile size.
fn g_matrix(g: &ConvGeom) -> &'static [f64] {
    if tile_size(g) == 4 {
        &G4
    } else {
        &G2
    }
}

/// U [α²][cin][cout] from the kernel w [cout, cin, 3, 3]: U = G w Gᵀ per channel pair, in f64
/// and rounded once. The channel pairs go to the cores (this runs twice per layer and step, for the
/// forward pass and the input gradient; one thread alone took ~2% of a ResNet-20 step).
pub fn transform_kernel(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (cout, cin, gm) = (g.cout, g.cin, g_matrix(g));
    let alpha = gm.len() / 3;
    let per_pair: Vec<[f32; 36]> = w
        .par_chunks(9)
        .map(|f| {
            // G f: α x 3.
            let mut gf = [0f64; 18];
            for (i, v) in gf[..alpha * 3].iter_mut().enumerate() {
                *v = (0..3).map(|j| gm[i / 3 * 3 + j] * f[j * 3 + i % 3] as f64).sum();
            }
            let mut u = [0f32; 36];
            for (p, v) in u[..alpha * alpha].iter_mut().enumerate() {
                let (a, b) = (p / alpha, p % alpha);
                *v = (0..3).map(|j| gf[a * 3 + j] * gm[b * 3 + j]).sum::<f64>() as f32;
            }
            u
        })
        .collect();
    let mut u = vec![0f32; points(g) * cout * cin];
    for (pair, values) in per_pair.iter().enumerate() {
        let (k, c) = (pair / cin, pair % cin);
        for (p, v) in values[..alpha * alpha].iter().enumerate() {
            u[(p * cin + c) * cout + k] = *v;
        }
    }
    u
}

/// dW [cout, cin, 3, 3] = Gᵀ dU G from the summed transform-domain gradient `du` [α²][cout][cin]
/// (the adjoint of U = G w Gᵀ), in f64 and rounded once; channel pairs in parallel.
pub fn weight_grad(g: &ConvGeom, du: &[f32]) -> Vec<f32> {
    let (cout, cin, gm) = (g.cout, g.cin, g_matrix(g));
    let alpha = gm.len() / 3;
    let mut dw = vec![0f32; cout * cin * 9];
    dw.par_chunks_mut(9).enumerate().for_each(|(pair, out)| {
        let d = |a: usize, b: usize| du[(a * alpha + b) * cout * cin + pair] as f64;
        // Gᵀ dU: 3 x α.
        let mut gtd = [0f64; 18];
        for (i, v) in gtd[..3 * alpha].iter_mut().enumerate() {
            *v = (0..alpha).map(|a| gm[a * 3 + i / alpha] * d(a, i % alpha)).sum();
        }
        for (ij, v) in out.iter_mut().enumerate() {
            let (i, j) = (ij / 3, ij % 3);
            *v = (0..alpha).map(|b| gtd[i * alpha + b] * gm[b * 3 + j]).sum::<f64>() as f32;
        }
    });
    dw
}

/// Whether this CPU runs the AVX2 build of the per-sample routines.
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
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
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { conv_sample_avx2(g, xs, u, scratch, y) };
    }
    conv_sample_portable(g, xs, u, scratch, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_sample_avx2<'y>(
    g: &ConvGeom,
    xs: &[f32],
    u: &[f32],
    scratch: &mut [f32],
    y: &'y mut [MaybeUninit<f32>],
) -> &'y mut [f32] {
    if tile_size(g) == 4 {
        conv_sample_body::<Avx, 4, 6>(g, xs, u, scratch, y)
    } else {
        conv_sample_body::<Avx, 2, 4>(g, xs, u, scratch, y)
    }
}

fn conv_sample_portable<'y>(
    g: &ConvGeom,
    xs: &[f32],
    u: &[f32],
    scratch: &mut [f32],
    y: &'y mut [MaybeUninit<f32>],
) -> &'y mut [f32] {
    if tile_size(g) == 4 {
        conv_sample_body::<Portable, 4, 6>(g, xs, u, scratch, y)
    } else {
        conv_sample_body::<Portable, 2, 4>(g, xs, u, scratch, y)
    }
}

/// The forward routine for tiles of M x M outputs from A x A inputs (A = M + 2).
#[inline(always)]
fn conv_sample_body<'y, V: Vec8, const M: usize, const A: usize>(
    g: &ConvGeom,
    xs: &[f32],
    u: &[f32],
    scratch: &mut [f32],
    y: &'y mut [MaybeUninit<f32>],
) -> &'y mut [f32] {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let [xp, v, m, yt] = split_scratch(g, scratch);
    pad_channels_last::<V>(g, xs, xp);
    input_transform::<V, M, A>(g, xp, v);
    let (vs, ms) = (point_stride(t, g.cin), point_stride(t, g.cout));
    let shape = (t, g.cin, g.cout);
    for p in 0..A * A {
        let up = &u[p * g.cin * g.cout..][..g.cin * g.cout];
        let mp = &mut m[p * ms..][..t * g.cout];
        if V::AVX {
            winograd_mul::forward::<true>(&v[p * vs..][..t * g.cin], up, mp, shape);
        } else {
            winograd_mul::forward::<false>(&v[p * vs..][..t * g.cin], up, mp, shape);
        }
    }
    output_transform::<V, M, A>(g, m, yt);
    let y = &mut y[..g.out_len()];
    let row = M * tw * g.cout;
    // 8 channels at a time over the whole plane, as in `pad_channels_last`.
    for kb in (0..g.cout).step_by(LANES) {
        for r in 0..g.ho {
            let dst = &mut y[kb * g.pixels() + r * g.wo..];
            transpose::<V>(&yt[r * row + kb..], g.cout, (g.wo, LANES), dst, g.pixels());
        }
    }
    // SAFETY: each output row r of every channel was written by a transpose (element (x, kb + j)
    // of row r's [wo, 8] block lands at (kb + j)·pixels + r·wo + x), for every group kb.
    unsafe { assume_init(y) }
}

/// Adds one sample's weight gradient, in the transform domain, to `du` [α²][cout][cin]:
/// dU[ξ] += Z[ξ]ᵀ · V[ξ] with V the input tiles transformed as in the forward pass and Z = A dY Aᵀ
/// the output-gradient tiles ([α²][tiles][cout]). The inner dimension of these gemms is the tile
/// count. [`weight_grad`] maps the sum back: dW = Gᵀ dU G (the adjoint of the forward pass's
/// y = Aᵀ[(G g Gᵀ) ⊙ V]A).
pub fn weight_grad_sample(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { weight_grad_sample_avx2(g, xs, dy, du, scratch) };
    }
    weight_grad_sample_portable(g, xs, dy, du, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn weight_grad_sample_avx2(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    if tile_size(g) == 4 {
        weight_grad_sample_body::<Avx, 4, 6>(g, xs, dy, du, scratch)
    } else {
        weight_grad_sample_body::<Avx, 2, 4>(g, xs, dy, du, scratch)
    }
}

fn weight_grad_sample_portable(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    if tile_size(g) == 4 {
        weight_grad_sample_body::<Portable, 4, 6>(g, xs, dy, du, scratch)
    } else {
        weight_grad_sample_body::<Portable, 2, 4>(g, xs, dy, du, scratch)
    }
}

#[inline(always)]
fn weight_grad_sample_body<V: Vec8, const M: usize, const A: usize>(
    g: &ConvGeom,
    xs: &[f32],
    dy: &[f32],
    du: &mut [f32],
    scratch: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let [xp, v, z, dyt] = split_scratch(g, scratch);
    pad_channels_last::<V>(g, xs, xp);
    input_transform::<V, M, A>(g, xp, v);
    gradient_channels_last::<V>(g, dy, dyt);
    gradient_transform::<V, M, A>(g, dyt, z);
    let (vs, zs) = (point_stride(t, g.cin), point_stride(t, g.cout));
    let shape = (t, g.cin, g.cout);
    for p in 0..A * A {
        let dup = &mut du[p * g.cout * g.cin..][..g.cout * g.cin];
        let (zp, vp) = (&z[p * zs..][..t * g.cout], &v[p * vs..][..t * g.cin]);
        if V::AVX {
            winograd_mul::weight_grad::<true>(zp, vp, dup, shape);
        } else {
            winograd_mul::weight_grad::<false>(zp, vp, dup, shape);
        }
    }
}

/// xs [cin, h, w] into X' [m·th + 2][m·tw + 2][cin]: input pixel (r, x) at (r + 1, x + 1), zeros
/// around it (the padding, and the extra rows and columns where the tiles overhang the plane).
#[inline(always)]
fn pad_channels_last<V: Vec8>(g: &ConvGeom, xs: &[f32], xp: &mut [f32]) {
    let c = g.cin;
    let row = (tile_size(g) * tiles(g).1 + 2) * c;
    let xp = &mut xp[..padded_len(g, c)];
    for (r, line) in xp.chunks_exact_mut(row).enumerate() {
        if (1..=g.h).contains(&r) {
            line[..c].fill(0.0);
            line[(g.w + 1) * c..].fill(0.0);
        } else {
            line.fill(0.0);
        }
    }
    // 8 channels at a time over the whole plane: 8 sequential read streams. (Row by row over all
    // channels read 16 to 64 planes a few cache lines each, and the transposes were 6% of a
    // training step.)
    for cb in (0..c).step_by(LANES) {
        for r in 0..g.h {
            // SAFETY: the transpose writes only f32 values.
            let dst = unsafe { as_slots(&mut xp[(r + 1) * row + c + cb..(r + 1) * row + (g.w + 1) * c]) };
            transpose::<V>(&xs[cb * g.pixels() + r * g.w..], g.pixels(), (LANES, g.w), dst, c);
        }
    }
}

/// dY [cout, ho, wo] into dY' [m·th][m·tw][cout], zeros where the tiles overhang the plane.
#[inline(always)]
fn gradient_channels_last<V: Vec8>(g: &ConvGeom, dy: &[f32], dyt: &mut [f32]) {
    let k = g.cout;
    let row = tile_size(g) * tiles(g).1 * k;
    let dyt = &mut dyt[..tiled_len(g, k)];
    for (r, line) in dyt.chunks_exact_mut(row).enumerate() {
        if r < g.ho {
            line[g.wo * k..].fill(0.0);
        } else {
            line.fill(0.0);
        }
    }
    for kb in (0..k).step_by(LANES) {
        for r in 0..g.ho {
            // SAFETY: the transpose writes only f32 values.
            let dst = unsafe { as_slots(&mut dyt[r * row + kb..r * row + g.wo * k]) };
            transpose::<V>(&dy[kb * g.pixels() + r * g.wo..], g.pixels(), (LANES, g.wo), dst, k);
        }
    }
}

/// Writes `v` at `p`, then hands back the pointer `step` values on.
///
/// # Safety
/// `p` must point to 8 writable f32s. (The pointer handed back may lie past the allocation after
/// the last write: it is made with `wrapping_add` and then not used.)
#[inline(always)]
unsafe fn write_on<V: Vec8>(p: *mut f32, v: V, step: usize) -> *mut f32 {
    // SAFETY: the caller's contract.
    unsafe { v.write(p) };
    p.wrapping_add(step)
}

/// Bᵀ applied to A values (A = 4: F(2x2); A = 6: F(4x4)), written out with the common
/// subexpressions shared: a generic matrix product over the constant tables did not unroll
/// for A = 6 and ran 3x slower than im2col.
#[inline(always)]
fn input_combine<V: Vec8, const A: usize>(d: &[V; A]) -> [V; A] {
    let mut o = *d;
    if A == 4 {
        o[0] = d[0].sub(d[2]);
        o[1] = d[1].add(d[2]);
        o[2] = d[2].sub(d[1]);
        o[3] = d[1].sub(d[3]);
    } else {
        o[0] = d[0].scale(4.0).sub(d[2].scale(5.0)).add(d[4]);
        o[1] = d[3].add(d[4]).sub(d[1].add(d[2]).scale(4.0));
        o[2] = d[4].sub(d[3]).add(d[1].sub(d[2]).scale(4.0));
        let (e, f) = (d[4].sub(d[2]), d[3].sub(d[1]).scale(2.0));
        o[3] = e.add(f);
        o[4] = e.sub(f);
        o[5] = d[1].scale(4.0).sub(d[3].scale(5.0)).add(d[5]);
    }
    o
}

/// Aᵀ applied to A values, giving M = A - 2.
#[inline(always)]
fn output_combine<V: Vec8, const M: usize, const A: usize>(m: &[V; A]) -> [V; M] {
    let mut o = [m[0]; M];
    if M == 2 {
        o[0] = m[0].add(m[1]).add(m[2]);
        o[1] = m[1].sub(m[2]).sub(m[3]);
    } else {
        let (s1, d1) = (m[1].add(m[2]), m[1].sub(m[2]));
        let (s2, d2) = (m[3].add(m[4]), m[3].sub(m[4]));
        o[0] = m[0].add(s1).add(s2);
        o[1] = d1.add(d2.scale(2.0));
        o[2] = s1.add(s2.scale(4.0));
        o[3] = d1.add(d2.scale(8.0)).add(m[5]);
    }
    o
}

/// A applied to M values, giving A = M + 2 (the output gradient's transform).
#[inline(always)]
fn gradient_combine<V: Vec8, const M: usize, const A: usize>(q: &[V; M]) -> [V; A] {
    let mut o = [q[0]; A];
    if M == 2 {
        o[1] = q[0].add(q[1]);
        o[2] = q[0].sub(q[1]);
        o[3] = q[1].scale(-1.0);
    } else {
        let (p, n) = (q[0].add(q[2]), q[1].add(q[3]));
        let (p4, n8) = (q[0].add(q[2].scale(4.0)), q[1].scale(2.0).add(q[3].scale(8.0)));
        o[1] = p.add(n);
        o[2] = p.sub(n);
        o[3] = p4.add(n8);
        o[4] = p4.sub(n8);
        o[5] = q[3];
    }
    o
}

/// Element `i` of each of the first transform's results: the values the second one combines.
#[inline(always)]
fn across<V: Vec8, const N: usize, const K: usize>(results: &[[V; N]; K], i: usize) -> [V; K] {
    let mut out = [results[0][i]; K];
    for (o, r) in out.iter_mut().zip(results) {
        *o = r[i];
    }
    out
}

/// Bᵀ d B for every tile and every 8 channels, from X' into V [α²][tiles][cin]: Bᵀ down each
/// column of the α x α input tile, then along each row. The transforms index through raw pointers
/// (bounds asserted once per call) and write the points by stepping one pointer: with a slice
/// index and a bounds check per load and store, the bases spilled to the stack and the loops ran
/// at about one instruction per cycle. Plain functions marked `inline(always)`, no closures: a
/// closure left out of line runs without the caller's AVX2 (measured: the transforms' closures
/// were 17% of a training step).
#[inline(always)]
fn input_transform<V: Vec8, const M: usize, const A: usize>(g: &ConvGeom, xp: &[f32], v: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (ps, c) = (point_stride(th * tw, g.cin), g.cin);
    let row = (M * tw + 2) * c;
    assert!(xp.len() >= padded_len(g, c) && v.len() >= (A * A - 1) * ps + th * tw * c, "winograd: short scratch");
    for ty in 0..th {
        for tx in 0..tw {
            let ti = ty * tw + tx;
            for cg in (0..c).step_by(LANES) {
                // SAFETY: V is the AVX type only inside the AVX2 build (`Vec8`'s contract); the
                // tile's A x A pixels lie inside X' ((M·th + 2) rows of M·tw + 2 pixels of c
                // channels), and its points' groups inside V (point p at p·ps + ti·c + cg), both
                // asserted above.
                unsafe {
                    let at = xp.as_ptr().add(M * ty * row + M * tx * c + cg);
                    let mut cols = [[V::zero(); A]; A];
                    for (j, col) in cols.iter_mut().enumerate() {
                        let mut d = [V::zero(); A];
                        for (i, di) in d.iter_mut().enumerate() {
                            *di = V::read(at.add(i * row + j * c));
                        }
                        *col = input_combine(&d);
                    }
                    let mut out = v.as_mut_ptr().add(ti * c + cg);
                    for a in 0..A {
                        for o in input_combine(&across(&cols, a)) {
                            out = write_on(out, o, ps);
                        }
                    }
                }
            }
        }
    }
}

/// Aᵀ m A for every tile and every 8 output channels, from M [α²][tiles][cout] into
/// Y' [m·th][m·tw][cout]: Aᵀ down each column of the α x α points, then along each row.
#[inline(always)]
fn output_transform<V: Vec8, const M: usize, const A: usize>(g: &ConvGeom, m: &[f32], yt: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (ps, k) = (point_stride(th * tw, g.cout), g.cout);
    let row = M * tw * k;
    assert!(m.len() >= (A * A - 1) * ps + th * tw * k && yt.len() >= M * th * row, "winograd: short scratch");
    for ty in 0..th {
        for tx in 0..tw {
            let ti = ty * tw + tx;
            for kg in (0..k).step_by(LANES) {
                // SAFETY: V as in `input_transform`; the tile's points lie inside M and its M x M
                // outputs inside Y' (M·th rows of M·tw pixels of k channels), both asserted above.
                unsafe {
                    let src = m.as_ptr().add(ti * k + kg);
                    // Column by column, not all points first: a zeroed [A][A] array of points
                    // cost a `memset` per tile.
                    let mut cols = [[V::zero(); M]; A];
                    for (b, col) in cols.iter_mut().enumerate() {
                        let mut d = [V::zero(); A];
                        for (a, da) in d.iter_mut().enumerate() {
                            *da = V::read(src.add((a * A + b) * ps));
                        }
                        *col = output_combine::<V, M, A>(&d);
                    }
                    let out = yt.as_mut_ptr().add(M * ty * row + M * tx * k + kg);
                    for i in 0..M {
                        let mut o = out.add(i * row);
                        for y in output_combine::<V, M, A>(&across(&cols, i)) {
                            o = write_on(o, y, k);
                        }
                    }
                }
            }
        }
    }
}

/// A q Aᵀ for every M x M tile of dY' and every 8 output channels, into Z [α²][tiles][cout]: A
/// down each column of the tile, then along each row.
#[inline(always)]
fn gradient_transform<V: Vec8, const M: usize, const A: usize>(g: &ConvGeom, dyt: &[f32], z: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (ps, k) = (point_stride(th * tw, g.cout), g.cout);
    let row = M * tw * k;
    assert!(dyt.len() >= M * th * row && z.len() >= (A * A - 1) * ps + th * tw * k, "winograd: short scratch");
    for ty in 0..th {
        for tx in 0..tw {
            let ti = ty * tw + tx;
            for kg in (0..k).step_by(LANES) {
                // SAFETY: V as in `input_transform`; the tile's M x M values lie inside dY' and
                // its points inside Z, both asserted above.
                unsafe {
                    let q = dyt.as_ptr().add(M * ty * row + M * tx * k + kg);
                    let mut cols = [[V::zero(); A]; M];
                    for (j, col) in cols.iter_mut().enumerate() {
                        let mut d = [V::zero(); M];
                        for (i, di) in d.iter_mut().enumerate() {
                            *di = V::read(q.add(i * row + j * k));
                        }
                        *col = gradient_combine::<V, M, A>(&d);
                    }
                    let mut out = z.as_mut_ptr().add(ti * k + kg);
                    for a in 0..A {
                        for o in gradient_combine::<V, M, A>(&across(&cols, a)) {
                            out = write_on(out, o, ps);
                        }
                    }
                }
            }
        }
    }
}

/// dst[j·dst_stride + i] = src[i·src_stride + j] for i < rows, j < cols: 8x8 blocks through AVX
/// registers when `V` is the AVX type (only ever inside the AVX2 build), the edges one value at a time.
#[inline(always)]
fn transpose<V: Vec8>(
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
    dst: &mut [MaybeUninit<f32>],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((rows - 1) * src_stride + cols <= src.len(), "transpose: source too short");
    assert!((cols - 1) * dst_stride + rows <= dst.len(), "transpose: destination too short");
    let mut done = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if V::AVX {
        done = (rows / 8 * 8, cols / 8 * 8);
        // The inner loop walks along the rows of whichever side has the longer stride (the
        // planes of the NCHW tensor), so that only 8 of its rows are in flight at a time: the
        // channels of a 16-channel 32x32 output are 4 KiB apart and share an L1 set.
        let blocks = |a: usize, b: usize| if dst_stride > src_stride { (b, a) } else { (a, b) };
        let (outer, inner) = blocks(done.0, done.1);
        for bo in (0..outer).step_by(8) {
            for bi in (0..inner).step_by(8) {
                let (i, j) = blocks(bo, bi);
                // SAFETY: V::AVX holds only inside the AVX2 build; the 8x8 block's source rows end
                // at (i + 7)·src_stride + j + 7 < (rows - 1)·src_stride + cols, and its
                // destination rows at (j + 7)·dst_stride + i + 7 < (cols - 1)·dst_stride + rows
                // (both checked above).
                unsafe {
                    transpose8x8(
                        src.as_ptr().add(i * src_stride + j),
                        src_stride,
                        dst.as_mut_ptr().add(j * dst_stride + i).cast(),
                        dst_stride,
                    )
                }
            }
        }
    }
    for i in 0..rows {
        let from = if i < done.0 { done.1 } else { 0 };
        for j in from..cols {
            dst[j * dst_stride + i].write(src[i * src_stride + j]);
        }
    }
}

/// One 8x8 block: rows of `src` (8 values each, `ss` apart) become rows of `dst` (`ds` apart).
///
/// # Safety
/// The CPU must have AVX, and the 8 source and 8 destination rows of 8 values must lie inside
/// their buffers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn transpose8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller keeps the 8 rows of 8 values inside both buffers.
    unsafe {
        let row = |i: usize| _mm256_loadu_ps(src.add(i * ss));
        let r = [row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7)];
        // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (i, o) in out.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms' matrices as tables (row-major), to check the written-out combinations.
    /// F(2x2, 3x3): Bᵀ (4x4), G (4x3) and Aᵀ (2x4), row-major.
    const BT2: [f32; 16] = [1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.];
    const AT2: [f32; 8] = [1., 1., 1., 0., 0., 1., -1., -1.];
    /// A = (Aᵀ)ᵀ (4x2), for the output gradient's transform.
    const A2: [f32; 8] = [1., 0., 1., 1., 1., -1., 0., -1.];
    /// F(4x4, 3x3) with interpolation points 0, ±1, ±2 and ∞: Bᵀ (6x6), G (6x3), Aᵀ (4x6), A (6x4).
    #[rustfmt::skip]
    const BT4: [f32; 36] = [
        4., 0., -5., 0., 1., 0.,
        0., -4., -4., 1., 1., 0.,
        0., 4., -4., -1., 1., 0.,
        0., -2., -1., 2., 1., 0.,
        0., 2., -1., -2., 1., 0.,
        0., 4., 0., -5., 0., 1.,
    ];
    #[rustfmt::skip]
    const AT4: [f32; 24] = [
        1., 1., 1., 1., 1., 0.,
        0., 1., -1., 2., -2., 0.,
        0., 1., 1., 4., 4., 0.,
        0., 1., -1., 8., -8., 1.,
    ];
    #[rustfmt::skip]
    const A4: [f32; 24] = [
        1., 0., 0., 0.,
        1., 1., 1., 1.,
        1., -1., 1., -1.,
        1., 2., 4., 8.,
        1., -2., 4., -8.,
        0., 0., 0., 1.,
    ];

    /// `t · x` for an R x C table.
    fn product(t: &[f32], rows: usize, x: &[Portable]) -> Vec<Portable> {
        (0..rows)
            .map(|r| std::array::from_fn(|l| x.iter().enumerate().map(|(c, v)| t[r * x.len() + c] * v[l]).sum()))
            .collect()
    }

    #[test]
    fn written_out_transforms_match_their_matrices() {
        let x: Vec<Portable> = (0..6).map(|i| std::array::from_fn(|l| ((i * 8 + l) * 37 % 19) as f32 - 9.0)).collect();
        let close = |a: &[Portable], b: &[Portable]| {
            a.iter().flatten().zip(b.iter().flatten()).all(|(p, q)| (p - q).abs() <= 1e-4)
        };
        assert!(close(&input_combine::<Portable, 4>(&x[..4].try_into().unwrap()), &product(&BT2, 4, &x[..4])));
        assert!(close(&input_combine::<Portable, 6>(&x[..6].try_into().unwrap()), &product(&BT4, 6, &x[..6])));
        assert!(close(&output_combine::<Portable, 2, 4>(&x[..4].try_into().unwrap()), &product(&AT2, 2, &x[..4])));
        assert!(close(&output_combine::<Portable, 4, 6>(&x[..6].try_into().unwrap()), &product(&AT4, 4, &x[..6])));
        assert!(close(&gradient_combine::<Portable, 2, 4>(&x[..2].try_into().unwrap()), &product(&A2, 4, &x[..2])));
        assert!(close(&gradient_combine::<Portable, 4, 6>(&x[..4].try_into().unwrap()), &product(&A4, 6, &x[..4])));
    }

    /// Error allowed against the f64 direct sum, as a share of the largest value.
    fn tolerance(g: &ConvGeom) -> f64 {
        // Measured worst: 3.4e-7 with F(2x2), 6.7e-6 with F(4x4) (larger coefficients, more rounding).
        if tile_size(g) == 4 {
            2e-5
        } else {
            2e-6
        }
    }

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
        for (cin, cout, h, w) in
            [(32, 32, 8, 8), (32, 40, 7, 5), (16, 24, 1, 3), (24, 16, 9, 11), (16, 16, 16, 16), (16, 24, 17, 19)]
        {
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
            let worst = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs() / scale).fold(0f64, f64::max);
            eprintln!(
                "F({m}x{m}) {cin}x{h}x{w} -> {cout}: worst output error {worst:.2e} of the scale",
                m = tile_size(&g)
            );
            assert!(worst <= tolerance(&g), "{cin}x{h}x{w} -> {cout}: output off by {worst:.2e} of its scale");
        }
    }

    #[test]
    fn weight_gradient_matches_the_direct_sum() {
        for (cin, cout, h, w) in [(32, 32, 8, 8), (32, 40, 7, 5), (24, 16, 9, 11), (16, 16, 16, 16), (16, 24, 17, 19)] {
            let g = ConvGeom::new(&[1, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap();
            let x: Vec<f32> = (0..g.in_len()).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
            let dy: Vec<f32> = (0..g.out_len()).map(|i| ((i * 6007) % 200) as f32 / 100.0 - 1.0).collect();
            // Two samples' worth (the same one twice) summed in the transform domain.
            let mut du = vec![0f32; transformed_len(&g)];
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
            let worst = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs() / scale).fold(0f64, f64::max);
            eprintln!(
                "F({m}x{m}) {cin}x{h}x{w} -> {cout}: worst weight-gradient error {worst:.2e} of the scale",
                m = tile_size(&g)
            );
            assert!(worst <= tolerance(&g), "{cin}x{h}x{w} -> {cout}: weight gradient off by {worst:.2e} of its scale");
        }
    }

    #[test]
    fn the_avx2_and_portable_builds_give_the_same_bits() {
        // One plane per tile size: 9x11 takes F(2x2), 17x19 F(4x4).
        for (cin, cout, h, w) in [(24, 16, 9, 11), (16, 24, 17, 19)] {
            let g = ConvGeom::new(&[1, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap();
            let x: Vec<f32> = (0..g.in_len()).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
            let k: Vec<f32> = (0..cout * cin * 9).map(|i| ((i * 104729) % 200) as f32 / 100.0 - 1.0).collect();
            let dy: Vec<f32> = (0..g.out_len()).map(|i| ((i * 6007) % 200) as f32 / 100.0 - 1.0).collect();
            let u = transform_kernel(&g, &k);
            let run = |portable: bool| {
                let mut scratch = vec![f32::NAN; scratch_len(&g)];
                let mut y = vec![MaybeUninit::uninit(); g.out_len()];
                let mut du = vec![0f32; transformed_len(&g)];
                let y = if portable {
                    let y = conv_sample_portable(&g, &x, &u, &mut scratch, &mut y).to_vec();
                    weight_grad_sample_portable(&g, &x, &dy, &mut du, &mut scratch);
                    y
                } else {
                    let y = conv_sample(&g, &x, &u, &mut scratch, &mut y).to_vec();
                    weight_grad_sample(&g, &x, &dy, &mut du, &mut scratch);
                    y
                };
                (y, du)
            };
            assert_eq!(run(true), run(false), "{cin}x{h}x{w} -> {cout}");
        }
    }
}

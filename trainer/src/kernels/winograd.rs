//! Winograd's minimal filtering F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs
//! from a 4x4 block of inputs with 16 multiplications per (input, output) channel pair instead of
//! 36. Per sample, with channels innermost so that every transform works on 8 channels at once:
//!   X'[r][x][c]    the sample transposed to channels-last, with a zero border (padding 1)
//!   V[ξ][t][c]     = (Bᵀ d_{t,c} B)[ξ]     the input tiles, transformed
//!   U[ξ][c][k]     = (G g_{k,c} Gᵀ)[ξ]     the kernel, transformed once per call
//!   M[ξ]           = V[ξ] · U[ξ]           16 matrix multiplies, [tiles, cin] x [cin, cout]
//!   Y'[r][x][k]    = (Aᵀ M_{t,k} A)        the 2x2 outputs, channels-last, then transposed back
//! with ξ = 4a + b indexing the 4x4 transform domain. The same routine computes the input gradient
//! of such a convolution (a forward convolution of the output gradient with the flipped kernel);
//! the weight gradient is summed in the transform domain (see [`weight_grad_sample`]).
//!
//! The transposes to and from channels-last move each value once (8x8 blocks in AVX registers);
//! in exchange the transforms need no shuffles: each is loads, adds and stores of whole vectors.
//! The AVX2 code is the portable code compiled for AVX2 (`#[target_feature]`, chosen at run time);
//! both give the same bits, since the transforms only add, subtract and halve.

use std::mem::MaybeUninit;

use super::gemm::{matmul, View};
use super::im2col::ConvGeom;
use super::storage::{as_slots, assume_init};

/// Transform-domain points per tile.
const POINTS: usize = 16;
/// Channels per vector: the transforms work on 8 channels at a time.
const LANES: usize = 8;
/// Channels below which im2col's single gemm (inner dimension 9·cin) is used instead.
const MIN_CHANNELS: usize = 16;

type Lane = [f32; LANES];

/// Whether a convolution goes through Winograd: 3x3, stride 1, padding 1, channel counts that are
/// multiples of 8 and at least [`MIN_CHANNELS`].
pub fn applies(g: &ConvGeom) -> bool {
    let channels_fit = |c: usize| c >= MIN_CHANNELS && c.is_multiple_of(LANES);
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && channels_fit(g.cin) && channels_fit(g.cout)
}

/// Tile rows and columns: 2x2 output blocks covering the plane (the last ones cut at odd edges).
fn tiles(g: &ConvGeom) -> (usize, usize) {
    (g.ho.div_ceil(2), g.wo.div_ceil(2))
}

/// Values of one plane set in channels-last form, padded: (2·th + 2) rows of (2·tw + 2) pixels.
fn padded_len(g: &ConvGeom, channels: usize) -> usize {
    let (th, tw) = tiles(g);
    (2 * th + 2) * (2 * tw + 2) * channels
}

/// Scratch values one sample needs: the padded channels-last input, V, M (or Z) and the
/// channels-last output (or output gradient).
pub fn scratch_len(g: &ConvGeom) -> usize {
    let (th, tw) = tiles(g);
    let t = th * tw;
    padded_len(g, g.cin) + POINTS * (point_stride(t, g.cin) + point_stride(t, g.cout)) + 4 * t * g.cout
}

/// Distance between consecutive transform-domain points' [tiles][channels] matrices in V, M and Z:
/// one cache line more than their size, which is a power of two for every ResNet layer. With the
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
    let (v, rest) = rest.split_at_mut(POINTS * point_stride(t, g.cin));
    let (m, rest) = rest.split_at_mut(POINTS * point_stride(t, g.cout));
    [xp, v, m, &mut rest[..4 * t * g.cout]]
}

/// Values of a kernel (or its gradient) in the transform domain.
pub fn transformed_len(g: &ConvGeom) -> usize {
    POINTS * g.cout * g.cin
}

/// U [16][cin][cout] from the kernel w [cout, cin, 3, 3].
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
                    u[((a * 4 + b) * cin + c) * cout + k] = v;
                }
            }
        }
    }
    u
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
    conv_sample_body::<false>(g, xs, u, scratch, y)
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
    conv_sample_body::<true>(g, xs, u, scratch, y)
}

#[inline(always)]
fn conv_sample_body<'y, const AVX: bool>(
    g: &ConvGeom,
    xs: &[f32],
    u: &[f32],
    scratch: &mut [f32],
    y: &'y mut [MaybeUninit<f32>],
) -> &'y mut [f32] {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let [xp, v, m, yt] = split_scratch(g, scratch);
    pad_channels_last::<AVX>(g, xs, xp);
    input_transform(g, xp, v);
    for p in 0..POINTS {
        let vp = View::row_major(&v[p * point_stride(t, g.cin)..], t, g.cin);
        let up = View::row_major(&u[p * g.cin * g.cout..], g.cin, g.cout);
        matmul(&mut m[p * point_stride(t, g.cout)..][..t * g.cout], vp, up, false);
    }
    output_transform(g, m, yt);
    let y = &mut y[..g.out_len()];
    let row = 2 * tw * g.cout;
    for r in 0..g.ho {
        transpose::<AVX>(&yt[r * row..], g.cout, (g.wo, g.cout), &mut y[r * g.wo..], g.pixels());
    }
    // SAFETY: each output row r of every channel k was written by its transpose (element (x, k)
    // of row r's [wo, cout] block lands at k·pixels + r·wo + x).
    unsafe { assume_init(y) }
}

/// Adds one sample's weight gradient, in the transform domain, to `du` [16][cout][cin]:
/// dU[ξ] += Z[ξ]ᵀ · V[ξ] with V the input tiles transformed as in the forward pass and Z = A dY Aᵀ
/// the output-gradient tiles ([16][tiles][cout]). The inner dimension of these gemms is the tile
/// count. [`weight_grad`] maps the sum back: dW = Gᵀ dU G (the adjoint of the forward pass's
/// y = Aᵀ[(G g Gᵀ) ⊙ V]A).
pub fn weight_grad_sample(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { weight_grad_sample_avx2(g, xs, dy, du, scratch) };
    }
    weight_grad_sample_body::<false>(g, xs, dy, du, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn weight_grad_sample_avx2(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    weight_grad_sample_body::<true>(g, xs, dy, du, scratch)
}

#[inline(always)]
fn weight_grad_sample_body<const AVX: bool>(g: &ConvGeom, xs: &[f32], dy: &[f32], du: &mut [f32], scratch: &mut [f32]) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let [xp, v, z, dyt] = split_scratch(g, scratch);
    pad_channels_last::<AVX>(g, xs, xp);
    input_transform(g, xp, v);
    gradient_channels_last::<AVX>(g, dy, dyt);
    gradient_transform(g, dyt, z);
    for p in 0..POINTS {
        let zp = View::row_major(&z[p * point_stride(t, g.cout)..], t, g.cout).t();
        let vp = View::row_major(&v[p * point_stride(t, g.cin)..], t, g.cin);
        matmul(&mut du[p * g.cout * g.cin..][..g.cout * g.cin], zp, vp, true);
    }
}

/// xs [cin, h, w] into X' [2·th + 2][2·tw + 2][cin]: input pixel (r, x) at (r + 1, x + 1), zeros
/// around it (the padding, and the extra row and column of odd planes).
#[inline(always)]
fn pad_channels_last<const AVX: bool>(g: &ConvGeom, xs: &[f32], xp: &mut [f32]) {
    let c = g.cin;
    let row = (2 * tiles(g).1 + 2) * c;
    let (top, rest) = xp.split_at_mut(row);
    top.fill(0.0);
    for (r, line) in rest.chunks_exact_mut(row).enumerate() {
        if r < g.h {
            line[..c].fill(0.0);
            line[(g.w + 1) * c..].fill(0.0);
            // SAFETY: the transpose writes only f32 values.
            let inner = unsafe { as_slots(&mut line[c..(g.w + 1) * c]) };
            transpose::<AVX>(&xs[r * g.w..], g.h * g.w, (c, g.w), inner, c);
        } else {
            line.fill(0.0);
        }
    }
}

/// dY [cout, ho, wo] into dY' [2·th][2·tw][cout], zeros beyond odd edges.
#[inline(always)]
fn gradient_channels_last<const AVX: bool>(g: &ConvGeom, dy: &[f32], dyt: &mut [f32]) {
    let k = g.cout;
    let row = 2 * tiles(g).1 * k;
    for (r, line) in dyt.chunks_exact_mut(row).enumerate() {
        if r < g.ho {
            line[g.wo * k..].fill(0.0);
            // SAFETY: the transpose writes only f32 values.
            let inner = unsafe { as_slots(&mut line[..g.wo * k]) };
            transpose::<AVX>(&dy[r * g.wo..], g.pixels(), (k, g.wo), inner, k);
        } else {
            line.fill(0.0);
        }
    }
}

#[inline(always)]
fn add(mut a: Lane, b: Lane) -> Lane {
    // Plain loops rather than `array::from_fn`, which is not always inlined and then runs
    // without the caller's AVX2.
    for l in 0..LANES {
        a[l] += b[l];
    }
    a
}

#[inline(always)]
fn sub(mut a: Lane, b: Lane) -> Lane {
    for l in 0..LANES {
        a[l] -= b[l];
    }
    a
}

#[inline(always)]
fn neg(mut a: Lane) -> Lane {
    for v in &mut a {
        *v = -*v;
    }
    a
}

/// Element `i` of each of the first transform's results: the values the second one combines.
#[inline(always)]
fn across<const N: usize, const M: usize>(results: &[[Lane; N]; M], i: usize) -> [Lane; M] {
    let mut out = [[0f32; LANES]; M];
    for (o, r) in out.iter_mut().zip(results) {
        *o = r[i];
    }
    out
}

/// Bᵀ's rows applied to four vectors: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
#[inline(always)]
fn input_combine(d: [Lane; 4]) -> [Lane; 4] {
    [sub(d[0], d[2]), add(d[1], d[2]), sub(d[2], d[1]), sub(d[1], d[3])]
}

/// Aᵀ's rows applied to four vectors: (m0 + m1 + m2, m1 - m2 - m3).
#[inline(always)]
fn output_combine(m: [Lane; 4]) -> [Lane; 2] {
    [add(add(m[0], m[1]), m[2]), sub(sub(m[1], m[2]), m[3])]
}

/// A's rows applied to two vectors: (q0, q0 + q1, q0 - q1, -q1).
#[inline(always)]
fn gradient_combine(q0: Lane, q1: Lane) -> [Lane; 4] {
    [q0, add(q0, q1), sub(q0, q1), neg(q1)]
}

/// 8 values at `p`.
///
/// # Safety
/// `p` must point to 8 readable f32s.
#[inline(always)]
unsafe fn read(p: *const f32) -> Lane {
    // SAFETY: the caller's contract; unaligned reads are allowed.
    unsafe { p.cast::<Lane>().read_unaligned() }
}

/// Writes 8 values at `p`, then hands back the pointer `step` values on.
///
/// # Safety
/// `p` must point to 8 writable f32s. (The pointer handed back may lie past the allocation after
/// the last write: it is made with `wrapping_add` and then not used.)
#[inline(always)]
unsafe fn write_on(p: *mut f32, v: Lane, step: usize) -> *mut f32 {
    // SAFETY: the caller's contract; unaligned writes are allowed.
    unsafe { p.cast::<Lane>().write_unaligned(v) };
    p.wrapping_add(step)
}

/// Bᵀ d B for every tile and every 8 channels, from X' into V [16][tiles][cin]: the rows of each
/// 4x4 input tile combined, then the columns (`input_combine`). The transforms index through
/// raw pointers (bounds asserted once per call) and write the 16 points by stepping one pointer:
/// with a slice index and a bounds check per load and store, the 16 bases spilled to the stack
/// and the loops ran at about one instruction per cycle. Plain functions marked `inline(always)`,
/// no closures: a closure left out of line runs without the caller's AVX2 (measured: the
/// transforms' closures were 17% of a training step).
#[inline(always)]
fn input_transform(g: &ConvGeom, xp: &[f32], v: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (ps, c, wp) = (point_stride(th * tw, g.cin), g.cin, 2 * tw + 2);
    assert!(xp.len() >= padded_len(g, c) && v.len() >= (POINTS - 1) * ps + th * tw * c, "winograd: short scratch");
    let row = wp * c;
    for ty in 0..th {
        for tx in 0..tw {
            let ti = ty * tw + tx;
            for cg in (0..c).step_by(LANES) {
                // SAFETY: the tile's 4x4 pixels lie inside X' ((2·th + 2) rows of 2·tw + 2 pixels
                // of c channels), and its 16 points' groups inside V (point p at p·ps + ti·c + cg),
                // both asserted above.
                unsafe {
                    let at = xp.as_ptr().add(2 * ty * row + 2 * tx * c + cg);
                    let mut cols = [[[0f32; LANES]; 4]; 4];
                    for (j, col) in cols.iter_mut().enumerate() {
                        let d = at.add(j * c);
                        *col = input_combine([read(d), read(d.add(row)), read(d.add(2 * row)), read(d.add(3 * row))]);
                    }
                    let mut out = v.as_mut_ptr().add(ti * c + cg);
                    for a in 0..4 {
                        for o in input_combine(across(&cols, a)) {
                            out = write_on(out, o, ps);
                        }
                    }
                }
            }
        }
    }
}

/// Aᵀ m A for every tile and every 8 output channels, from M [16][tiles][cout] into
/// Y' [2·th][2·tw][cout]: rows combined, then columns (`output_combine`).
#[inline(always)]
fn output_transform(g: &ConvGeom, m: &[f32], yt: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (ps, k, row) = (point_stride(th * tw, g.cout), g.cout, 2 * tw * g.cout);
    assert!(m.len() >= (POINTS - 1) * ps + th * tw * k && yt.len() >= 2 * th * row, "winograd: short scratch");
    for ty in 0..th {
        for tx in 0..tw {
            let ti = ty * tw + tx;
            for kg in (0..k).step_by(LANES) {
                // SAFETY: the tile's 16 points lie inside M and its 2x2 outputs inside Y'
                // (2·th rows of 2·tw pixels of k channels), both asserted above.
                unsafe {
                    let mut at = m.as_ptr().add(ti * k + kg);
                    let mut pts = [[0f32; LANES]; POINTS];
                    for p in &mut pts {
                        *p = read(at);
                        at = at.wrapping_add(ps);
                    }
                    let mut cols = [[[0f32; LANES]; 2]; 4];
                    for (b, col) in cols.iter_mut().enumerate() {
                        *col = output_combine([pts[b], pts[4 + b], pts[8 + b], pts[12 + b]]);
                    }
                    let out = yt.as_mut_ptr().add(2 * ty * row + 2 * tx * k + kg);
                    for i in 0..2 {
                        let [y0, y1] = output_combine(across(&cols, i));
                        let o = write_on(out.add(i * row), y0, k);
                        write_on(o, y1, 0);
                    }
                }
            }
        }
    }
}

/// A q Aᵀ for every 2x2 tile of dY' and every 8 output channels, into Z [16][tiles][cout]: rows
/// combined, then columns (`gradient_combine`).
#[inline(always)]
fn gradient_transform(g: &ConvGeom, dyt: &[f32], z: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (ps, k, row) = (point_stride(th * tw, g.cout), g.cout, 2 * tw * g.cout);
    assert!(dyt.len() >= 2 * th * row && z.len() >= (POINTS - 1) * ps + th * tw * k, "winograd: short scratch");
    for ty in 0..th {
        for tx in 0..tw {
            let ti = ty * tw + tx;
            for kg in (0..k).step_by(LANES) {
                // SAFETY: the tile's 2x2 values lie inside dY' and its 16 points inside Z, both
                // asserted above.
                unsafe {
                    let q = dyt.as_ptr().add(2 * ty * row + 2 * tx * k + kg);
                    let cols = [
                        gradient_combine(read(q), read(q.add(row))),
                        gradient_combine(read(q.add(k)), read(q.add(row + k))),
                    ];
                    let mut out = z.as_mut_ptr().add(ti * k + kg);
                    for a in 0..4 {
                        let [c0, c1] = across(&cols, a);
                        for o in gradient_combine(c0, c1) {
                            out = write_on(out, o, ps);
                        }
                    }
                }
            }
        }
    }
}

/// dst[j·dst_stride + i] = src[i·src_stride + j] for i < rows, j < cols: 8x8 blocks through AVX
/// registers when `AVX` (only ever set inside the AVX2 build), the edges one value at a time.
#[inline(always)]
fn transpose<const AVX: bool>(
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
    if AVX {
        done = (rows / 8 * 8, cols / 8 * 8);
        for i in (0..done.0).step_by(8) {
            for j in (0..done.1).step_by(8) {
                // SAFETY: AVX is set only inside the AVX2 build; the 8x8 block's source rows end
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
        for (cin, cout, h, w) in [(32, 32, 8, 8), (32, 40, 7, 5), (16, 24, 1, 3), (24, 16, 9, 11)] {
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
        for (cin, cout, h, w) in [(32, 32, 8, 8), (32, 40, 7, 5), (24, 16, 9, 11)] {
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

    #[test]
    fn the_avx2_and_portable_builds_give_the_same_bits() {
        let g = ConvGeom::new(&[1, 24, 9, 11], &[16, 24, 3, 3], 1, 1).unwrap();
        let x: Vec<f32> = (0..g.in_len()).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
        let k: Vec<f32> = (0..16 * 24 * 9).map(|i| ((i * 104729) % 200) as f32 / 100.0 - 1.0).collect();
        let dy: Vec<f32> = (0..g.out_len()).map(|i| ((i * 6007) % 200) as f32 / 100.0 - 1.0).collect();
        let u = transform_kernel(&g, &k);
        let run = |portable: bool| {
            let mut scratch = vec![f32::NAN; scratch_len(&g)];
            let mut y = vec![MaybeUninit::uninit(); g.out_len()];
            let mut du = vec![0f32; transformed_len(&g)];
            let y = if portable {
                let y = conv_sample_body::<false>(&g, &x, &u, &mut scratch, &mut y).to_vec();
                weight_grad_sample_body::<false>(&g, &x, &dy, &mut du, &mut scratch);
                y
            } else {
                let y = conv_sample(&g, &x, &u, &mut scratch, &mut y).to_vec();
                weight_grad_sample(&g, &x, &dy, &mut du, &mut scratch);
                y
            };
            (y, du)
        };
        assert_eq!(run(true), run(false));
    }
}

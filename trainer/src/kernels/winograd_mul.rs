//! The matrix products of Winograd's transform domain, one per point ξ and sample:
//!   forward:         M[t][k]  = Σ_c V[t][c] · U[c][k]
//!   weight gradient: dU[k][c] += Σ_t Z[t][k] · V[t][c]
//! Small products (F(4x4) on an 8x8 plane leaves 4 tiles; 16 to 64 channels), 16 or 36 of them per
//! sample and layer: through the `gemm` crate each call packed its operands and dispatched anew,
//! which cost as much as the multiplies at these sizes. Here the operands are used where they lie
//! (U and V's rows are contiguous in the channels), 6 rows by 16 columns at a time in twelve
//! 8-lane accumulators.
//!
//! Results do not depend on the build: the portable code computes each sum with `mul_add` in the
//! same order as the AVX2 code's fused multiply-adds, so both give the same bits.

/// Rows per block: 6 rows x 2 vectors = 12 accumulators, which leaves AVX2's other 4 registers for
/// the operands.
const ROWS: usize = 6;
/// Values per vector.
const LANES: usize = 8;

/// M [t][k] = V [t][c] · U [c][k], all three dense and row-major; `k` a multiple of 8.
#[inline(always)]
pub fn forward<const AVX: bool>(v: &[f32], u: &[f32], m: &mut [f32], (t, c, k): (usize, usize, usize)) {
    assert!(
        k.is_multiple_of(LANES) && v.len() >= t * c && u.len() >= c * k && m.len() >= t * k,
        "winograd_mul: shapes"
    );
    for k0 in (0..k).step_by(2 * LANES) {
        let wide = k - k0 >= 2 * LANES;
        for t0 in (0..t).step_by(ROWS) {
            let rows = (t - t0).min(ROWS);
            // SAFETY: rows t0..t0 + rows of V (c values each) and of M (k values each), and
            // columns k0..k0 + 8 or 16 of U's c rows and of M, lie inside the slices (asserted
            // above); AVX is only set inside the AVX2 build.
            unsafe {
                let (a, b, out) = (v.as_ptr().add(t0 * c), u.as_ptr().add(k0), m.as_mut_ptr().add(t0 * k + k0));
                let shape = Block { rows, inner: c, a_row: c, a_step: 1, b_step: k, out_row: k, accumulate: false };
                block::<AVX>(wide, a, b, out, shape);
            }
        }
    }
}

/// dU [k][c] += Z [t][k]ᵀ · V [t][c]; `c` a multiple of 8.
#[inline(always)]
pub fn weight_grad<const AVX: bool>(z: &[f32], v: &[f32], du: &mut [f32], (t, c, k): (usize, usize, usize)) {
    assert!(
        c.is_multiple_of(LANES) && z.len() >= t * k && v.len() >= t * c && du.len() >= k * c,
        "winograd_mul: shapes"
    );
    for c0 in (0..c).step_by(2 * LANES) {
        let wide = c - c0 >= 2 * LANES;
        for k0 in (0..k).step_by(ROWS) {
            let rows = (k - k0).min(ROWS);
            // SAFETY: column k0 + i of Z's t rows, columns c0..c0 + 8 or 16 of V's t rows and of
            // dU's rows k0..k0 + rows lie inside the slices (asserted above); AVX is only set
            // inside the AVX2 build.
            unsafe {
                let (a, b, out) = (z.as_ptr().add(k0), v.as_ptr().add(c0), du.as_mut_ptr().add(k0 * c + c0));
                let shape = Block { rows, inner: t, a_row: 1, a_step: k, b_step: c, out_row: c, accumulate: true };
                block::<AVX>(wide, a, b, out, shape);
            }
        }
    }
}

/// One block of output rows: out[i][0..w] (+)= Σ_j a[i·a_row + j·a_step] · b[j·b_step + 0..w]
/// for i < rows, with w = 16 (`wide`) or 8 values.
#[derive(Clone, Copy)]
struct Block {
    rows: usize,
    inner: usize,
    a_row: usize,
    a_step: usize,
    b_step: usize,
    out_row: usize,
    accumulate: bool,
}

/// # Safety
/// Every element the block reads or writes must lie inside its buffer; `AVX` only inside the
/// AVX2 build.
#[inline(always)]
unsafe fn block<const AVX: bool>(wide: bool, a: *const f32, b: *const f32, out: *mut f32, s: Block) {
    // The row count and width as constants, so that the accumulators stay in registers.
    macro_rules! by_rows {
        ($v:literal) => {
            match s.rows {
                6 => kernel::<AVX, 6, $v>(a, b, out, s),
                5 => kernel::<AVX, 5, $v>(a, b, out, s),
                4 => kernel::<AVX, 4, $v>(a, b, out, s),
                3 => kernel::<AVX, 3, $v>(a, b, out, s),
                2 => kernel::<AVX, 2, $v>(a, b, out, s),
                _ => kernel::<AVX, 1, $v>(a, b, out, s),
            }
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        if wide {
            by_rows!(2)
        } else {
            by_rows!(1)
        }
    }
}

/// # Safety
/// As [`block`], with `R` = s.rows and `V` vectors per row.
#[inline(always)]
unsafe fn kernel<const AVX: bool, const R: usize, const V: usize>(
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    s: Block,
) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: the caller's contract (AVX2 and FMA present, pointers in bounds).
        unsafe { kernel_avx2::<R, V>(a, b, out, s) };
        return;
    }
    let mut acc = [[[0f32; LANES]; V]; R];
    for j in 0..s.inner {
        // SAFETY: the caller's contract.
        unsafe {
            let bj = b.add(j * s.b_step);
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let x = *a.add(i * s.a_row + j * s.a_step);
                for (w, acc_iw) in acc_i.iter_mut().enumerate() {
                    for (l, acc_l) in acc_iw.iter_mut().enumerate() {
                        *acc_l = x.mul_add(*bj.add(w * LANES + l), *acc_l);
                    }
                }
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (w, acc_iw) in acc_i.iter().enumerate() {
            for (l, v) in acc_iw.iter().enumerate() {
                // SAFETY: the caller's contract.
                unsafe {
                    let o = out.add(i * s.out_row + w * LANES + l);
                    *o = if s.accumulate { *o + v } else { *v };
                }
            }
        }
    }
}

/// # Safety
/// As [`kernel`]; the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn kernel_avx2<const R: usize, const V: usize>(a: *const f32, b: *const f32, out: *mut f32, s: Block) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for j in 0..s.inner {
            let bj = b.add(j * s.b_step);
            let mut bv = [_mm256_setzero_ps(); V];
            for (w, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(bj.add(w * LANES));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(i * s.a_row + j * s.a_step));
                for (acc_iw, bw) in acc_i.iter_mut().zip(&bv) {
                    *acc_iw = _mm256_fmadd_ps(x, *bw, *acc_iw);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (w, v) in acc_i.iter().enumerate() {
                let o = out.add(i * s.out_row + w * LANES);
                let v = if s.accumulate { _mm256_add_ps(_mm256_loadu_ps(o), *v) } else { *v };
                _mm256_storeu_ps(o, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104729) % 199) as f32 / 99.0 - 1.0).collect()
    }

    /// Both products against f64 sums, on shapes with partial row blocks and an 8-wide column
    /// block; and the portable code against the AVX2 code, bit for bit.
    #[test]
    fn products_match_f64_sums_and_both_builds_agree() {
        for (t, c, k) in [(16, 16, 16), (13, 24, 40), (4, 64, 64), (1, 8, 8)] {
            let (v, u, z) = (values(t * c, 1), values(c * k, 2), values(t * k, 3));
            let mut m = vec![f32::NAN; t * k];
            forward::<false>(&v, &u, &mut m, (t, c, k));
            for (i, got) in m.iter().enumerate() {
                let want: f64 = (0..c).map(|j| v[i / k * c + j] as f64 * u[j * k + i % k] as f64).sum();
                assert!((*got as f64 - want).abs() < 1e-4, "forward {t}x{c}x{k} [{i}]: {got} vs {want}");
            }
            let start = values(k * c, 4);
            let mut du = start.clone();
            weight_grad::<false>(&z, &v, &mut du, (t, c, k));
            for (i, got) in du.iter().enumerate() {
                let sum: f64 = (0..t).map(|j| z[j * k + i / c] as f64 * v[j * c + i % c] as f64).sum();
                let want = start[i] as f64 + sum;
                assert!((*got as f64 - want).abs() < 1e-4, "weight grad {t}x{c}x{k} [{i}]: {got} vs {want}");
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                let mut m2 = vec![f32::NAN; t * k];
                forward::<true>(&v, &u, &mut m2, (t, c, k));
                assert_eq!(m, m2, "forward {t}x{c}x{k}: AVX2 and portable differ");
                let mut du2 = start.clone();
                weight_grad::<true>(&z, &v, &mut du2, (t, c, k));
                assert_eq!(du, du2, "weight grad {t}x{c}x{k}: AVX2 and portable differ");
            }
        }
    }
}

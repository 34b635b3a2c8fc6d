//! A safe face on the `gemm` crate (the matrix multiply under candle's CPU matmul) for the conv
//! kernels: strided views of slices, bounds checked once, single-threaded because the callers
//! already spread whole samples over the cores.

use std::mem::MaybeUninit;

use gemm::Parallelism;

/// A read-only matrix inside a slice: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// A `rows x cols` matrix whose rows start `row_stride` apart (a block of columns of a wider
    /// row-major matrix).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        View { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        View { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Whether every element lies inside the slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`), with `c` a dense row-major matrix of
/// `a.rows x b.cols` at the start of the slice.
pub fn matmul(c: &mut [f32], a: View, b: View, accumulate: bool) {
    matmul_strided(c, b.cols, a, b, accumulate)
}

/// [`matmul`] into a `c` whose rows start `c_row_stride` apart.
pub fn matmul_strided(c: &mut [f32], c_row_stride: usize, a: View, b: View, accumulate: bool) {
    check(c.len(), c_row_stride, a, b);
    // SAFETY: `check` keeps every element gemm reads or writes inside the slices; `c` is
    // exclusively borrowed and initialized (read when accumulating).
    unsafe { gemm_into(c.as_mut_ptr(), c_row_stride, a, b, accumulate) }
}

/// `c = a · b` into memory that may be uninitialized (outputs that would otherwise be zeroed
/// first only to be overwritten): gemm does not read its output when not accumulating. Every
/// element `(i, j)` of the product, at `i * c_row_stride + j`, is written.
pub fn matmul_strided_uninit(c: &mut [MaybeUninit<f32>], c_row_stride: usize, a: View, b: View) {
    check(c.len(), c_row_stride, a, b);
    // SAFETY: as in `matmul_strided`; MaybeUninit<f32> has f32's layout, and without
    // accumulation gemm (alpha = 0) and the k = 0 path only write the output.
    unsafe { gemm_into(c.as_mut_ptr().cast(), c_row_stride, a, b, false) }
}

/// The shape and bounds checks shared by both entry points.
fn check(c_len: usize, c_row_stride: usize, a: View, b: View) {
    let (m, n) = (a.rows, b.cols);
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    assert!(a.in_bounds() && b.in_bounds(), "matmul: operand view out of bounds");
    assert!(c_row_stride >= n, "matmul: output rows overlap");
    assert!(m == 0 || n == 0 || c_len >= (m - 1) * c_row_stride + n, "matmul: output slice too short");
}

/// # Safety
/// `c` must point to at least `(a.rows - 1) * c_row_stride + b.cols` writable f32s (initialized
/// when `accumulate`), and the views must be in bounds (see [`check`]).
unsafe fn gemm_into(c: *mut f32, c_row_stride: usize, a: View, b: View, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i's n elements lie inside c (see the function's contract).
                unsafe { std::ptr::write_bytes(c.add(i * c_row_stride), 0, n) };
            }
        }
        return;
    }
    // SAFETY: the contract keeps every element gemm reads or writes inside the three buffers, and
    // the strides are those of the views.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operands a [m, k] and b [k, n] with distinct values.
    fn operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        (a, b)
    }

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n).map(|ij| (0..k).map(|l| a[ij / n * k + l] * b[l * n + ij % n]).sum()).collect()
    }

    #[test]
    fn products_transposes_and_accumulation_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let (a, b) = operands(m, k, n);
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        matmul(&mut c, View::row_major(&a, m, k), View::row_major(&b, k, n), false);
        c.iter().zip(&want).for_each(|(x, y)| assert!((x - y).abs() < 1e-5));
        // (bᵀ aᵀ)ᵀ through transposed views, added onto the previous result: 2 * want.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut ct = vec![0.0; n * m];
        matmul(&mut ct, View::row_major(&bt, n, k), View::row_major(&a, m, k).t(), false);
        for i in 0..m {
            for j in 0..n {
                assert!((ct[j * m + i] - want[i * n + j]).abs() < 1e-5);
            }
        }
        matmul(&mut c, View::row_major(&a, m, k), View::row_major(&b, k, n), true);
        c.iter().zip(&want).for_each(|(x, y)| assert!((x - 2.0 * y).abs() < 1e-5));
    }

    #[test]
    fn strided_blocks_match_the_dense_product() {
        let (m, k, n) = (4, 6, 10);
        let (a, b) = operands(m, k, n);
        let want = naive(&a, &b, m, k, n);
        // Columns 3..7 of b and of the product, through strided views; other columns untouched.
        let mut c = vec![f32::NAN; m * n];
        matmul_strided(&mut c[3..], n, View::row_major(&a, m, k), View::strided(&b[3..], k, 4, n), false);
        for i in 0..m {
            for j in 0..n {
                let got = c[i * n + j];
                if (3..7).contains(&j) {
                    assert!((got - want[i * n + j]).abs() < 1e-5);
                } else {
                    assert!(got.is_nan(), "column {j} was written");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_the_slice_is_refused() {
        let a = [1.0f32; 5];
        let mut c = [0.0f32; 4];
        matmul(&mut c, View::row_major(&a, 2, 3), View::row_major(&a, 3, 2), false);
    }
}

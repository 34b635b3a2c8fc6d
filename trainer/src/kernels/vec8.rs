//! Eight f32 lanes as one value, for the Winograd transforms: an AVX register in the AVX2 build,
//! an array in the portable one, behind one trait so that both builds share the transform code.
//! (Arrays alone, left to the auto-vectorizer inside an AVX2 function, came out as mixed 128- and
//! 256-bit code that went through the stack: a stalled store was 9% of the weight gradient.)
//! Both implementations add, subtract and multiply lane by lane in the same order, so they give
//! the same bits.

/// Eight lanes of f32.
pub(super) trait Vec8: Copy {
    /// Whether this is the AVX2 build's type (the transposes take AVX's 8x8 path then).
    const AVX: bool;

    /// The 8 values at `p`.
    ///
    /// # Safety
    /// `p` must point to 8 readable f32s, and the CPU must have this type's instructions.
    unsafe fn read(p: *const f32) -> Self;

    /// All zeros.
    ///
    /// # Safety
    /// The CPU must have this type's instructions.
    unsafe fn zero() -> Self;

    /// Writes the 8 values at `p`.
    ///
    /// # Safety
    /// `p` must point to 8 writable f32s.
    unsafe fn write(self, p: *mut f32);

    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn scale(self, k: f32) -> Self;
}

impl Vec8 for [f32; 8] {
    const AVX: bool = false;

    #[inline(always)]
    unsafe fn read(p: *const f32) -> Self {
        // SAFETY: the caller's contract; unaligned reads are allowed.
        unsafe { p.cast::<Self>().read_unaligned() }
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        [0.0; 8]
    }

    #[inline(always)]
    unsafe fn write(self, p: *mut f32) {
        // SAFETY: the caller's contract; unaligned writes are allowed.
        unsafe { p.cast::<Self>().write_unaligned(self) }
    }

    #[inline(always)]
    fn add(mut self, b: Self) -> Self {
        for (a, b) in self.iter_mut().zip(b) {
            *a += b;
        }
        self
    }

    #[inline(always)]
    fn sub(mut self, b: Self) -> Self {
        for (a, b) in self.iter_mut().zip(b) {
            *a -= b;
        }
        self
    }

    #[inline(always)]
    fn scale(mut self, k: f32) -> Self {
        for a in &mut self {
            *a *= k;
        }
        self
    }
}

/// An AVX register of 8 f32. Only the unsafe constructors make one, whose contract is that the
/// CPU has AVX: a value's existence is the proof that its arithmetic may run.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
impl Vec8 for Avx {
    const AVX: bool = true;

    #[inline(always)]
    unsafe fn read(p: *const f32) -> Self {
        // SAFETY: the caller's contract (readable, AVX present).
        unsafe { Avx(std::arch::x86_64::_mm256_loadu_ps(p)) }
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's contract (AVX present).
        unsafe { Avx(std::arch::x86_64::_mm256_setzero_ps()) }
    }

    #[inline(always)]
    unsafe fn write(self, p: *mut f32) {
        // SAFETY: the caller's contract (writable); AVX is present since `self` exists.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(p, self.0) }
    }

    #[inline(always)]
    fn add(self, b: Self) -> Self {
        // SAFETY: AVX is present: `self` exists (see the type's comment).
        unsafe { Avx(std::arch::x86_64::_mm256_add_ps(self.0, b.0)) }
    }

    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        // SAFETY: as in `add`.
        unsafe { Avx(std::arch::x86_64::_mm256_sub_ps(self.0, b.0)) }
    }

    #[inline(always)]
    fn scale(self, k: f32) -> Self {
        // SAFETY: as in `add`.
        unsafe { Avx(std::arch::x86_64::_mm256_mul_ps(self.0, std::arch::x86_64::_mm256_set1_ps(k))) }
    }
}

//! Borrowing a tensor's f32 values on the CPU, for the kernels' forward and backward passes.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// The values of a contiguous f32 CPU storage, from the layout's start offset.
pub fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: expected a contiguous tensor") };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Runs `f` on the values of `t` (made contiguous first if needed); CPU f32 only.
pub fn with_values<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout, op)?),
        _ => bail!("{op}: the CPU kernel got a tensor on another device"),
    }
}

/// A vector of `len` values made plane by plane in parallel: plane `i` (of `plane` values; the
/// last may be shorter) is filled from the iterator `values(i)`. Writing straight into the
/// allocation skips the zeroing pass that `vec![0.0; len]` would cost.
pub fn par_planes<I: Iterator<Item = f32>>(len: usize, plane: usize, values: impl Fn(usize) -> I + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(plane.max(1)).enumerate().for_each(|(i, slots)| {
        let mut written = 0;
        for (slot, v) in slots.iter_mut().zip(values(i)) {
            slot.write(v);
            written += 1;
        }
        assert_eq!(written, slots.len(), "par_planes: plane {i} got too few values");
    });
    // SAFETY: every plane's slots were all written (asserted above; a panic propagates out of
    // for_each before this line), so the first `len` elements are initialized.
    unsafe { out.set_len(len) };
    out
}

/// Zeroes uninitialized values and hands them out as initialized.
pub fn zeroed(slots: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for slot in slots.iter_mut() {
        slot.write(0.0);
    }
    // SAFETY: every element was just written.
    unsafe { assume_init(slots) }
}

/// Slots as the values they hold.
///
/// # Safety
/// Every element of `slots` must have been written.
pub unsafe fn assume_init(slots: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller vouches that all are initialized.
    unsafe { &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Initialized values viewed as slots, for code that writes through slots.
///
/// # Safety
/// Only initialized values may be written through the result (never `MaybeUninit::uninit()`):
/// the values are read as f32 afterwards.
pub unsafe fn as_slots(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the caller keeps every element initialized.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A vector of `len` values written `chunk` at a time in parallel by `fill(i, chunk_i)`, and what
/// `fill` returned for each chunk, in chunk order. Each chunk is zeroed inside its own task just
/// before `fill` runs, so the zeroing happens in cache and on every core, instead of as one
/// thread's `memset` over the whole allocation (what `vec![0.0; len]` costs once the allocator
/// recycles memory: ~4% of a ResNet training step).
pub fn par_chunks_zeroed<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    par_chunks_init(len, chunk, |i, slots| {
        let values = zeroed(slots);
        let r = fill(i, values);
        (values, r)
    })
}

/// A vector of `len` values whose chunks (`chunk` values each, the last may be shorter) are
/// written in parallel by `fill(i, slots_i)`, which hands back its chunk as initialized values
/// (the proof that it wrote all of it: only a write, or unsafe code that vouches for one, turns
/// the slots into values) and a result; the results come back in chunk order. For outputs
/// that a gemm overwrites whole, this skips the zeroing pass.
pub fn par_chunks_init<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl for<'a> Fn(usize, &'a mut [MaybeUninit<f32>]) -> (&'a mut [f32], R) + Sync,
) -> (Vec<f32>, Vec<R>) {
    let mut out = Vec::with_capacity(len);
    let results = out.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().map(|(i, slots)| {
        let (start, n) = (slots.as_ptr() as usize, slots.len());
        let (values, r) = fill(i, slots);
        assert!(
            values.as_ptr() as usize == start && values.len() == n,
            "par_chunks_init: chunk {i} handed back another slice"
        );
        r
    });
    let results = results.collect();
    // SAFETY: every chunk was handed back as initialized values covering exactly that chunk
    // (asserted; a panic propagates out of the parallel loop before this line).
    unsafe { out.set_len(len) };
    (out, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_filled_in_order_and_short_planes_are_refused() {
        let v = par_planes(7, 3, |i| (0..3).map(move |j| (i * 10 + j) as f32));
        assert_eq!(v, [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0]);
        let short = std::panic::catch_unwind(|| par_planes(6, 3, |i| (0..i).map(|j| j as f32)));
        assert!(short.is_err());
    }

    #[test]
    fn zeroed_chunks_start_at_zero_and_keep_what_fill_writes() {
        let (v, _) = par_chunks_zeroed(7, 3, |i, c| {
            assert!(c.iter().all(|&x| x == 0.0));
            c[0] = i as f32 + 1.0;
        });
        assert_eq!(v, [1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0]);
        let (v, sums) = par_chunks_zeroed(5, 2, |i, c| {
            c.fill(i as f32);
            c.len() * 10 + i
        });
        assert_eq!((v, sums), (vec![0.0, 0.0, 1.0, 1.0, 2.0], vec![20, 21, 12]));
    }

    #[test]
    fn initialized_chunks_must_be_handed_back_whole() {
        let (v, lens) = par_chunks_init(5, 2, |i, slots| {
            let n = slots.len();
            let values = zeroed(slots);
            values.fill(i as f32 + 0.5);
            (values, n)
        });
        assert_eq!((v, lens), (vec![0.5, 0.5, 1.5, 1.5, 2.5], vec![2, 2, 1]));
        // Handing back only part of a chunk (the rest never written) is refused.
        let part = std::panic::catch_unwind(|| par_chunks_init(4, 2, |_, slots| (&mut zeroed(slots)[..1], ())));
        assert!(part.is_err());
    }
}

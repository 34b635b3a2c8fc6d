//! Borrowing a tensor's f32 values on the CPU, for the kernels' forward and backward passes.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

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

//! Allocator settings for large, short-lived activation buffers.
//!
//! glibc's malloc serves blocks above its mmap threshold (128 KiB at start, adapting) with fresh
//! `mmap`s and unmaps them on free, so every activation tensor of every step costs page faults and
//! kernel zeroing: measured at about a fifth of the CPU time of a ResNet-20 training step, as
//! system time. Raising the threshold to glibc's maximum (32 MiB on 64-bit) and never trimming the
//! heap keeps freed buffers in the process for the next step. The price: memory freed by the
//! process is not returned to the system until it exits.

/// The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Applies the settings; returns whether the allocator took them (glibc on Linux only).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; it is called with documented options.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

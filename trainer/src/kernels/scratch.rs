//! Per-thread scratch buffers (im2col matrices, unpooled outputs), reused from call to call:
//! allocating them per task cost page faults and zeroing in every layer of every step.

use std::cell::RefCell;

thread_local! {
    static BUFFERS: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch slices of the given lengths. Their contents are left over from
/// earlier calls: callers overwrite what they read. Falls back to fresh buffers if this thread's
/// are already in use (a nested call).
pub fn with_buffers<R>(a_len: usize, b_len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let [a, b] = &mut *bufs;
            grow(a, a_len);
            grow(b, b_len);
            f(&mut a[..a_len], &mut b[..b_len])
        }
        Err(_) => f(&mut vec![0.0; a_len], &mut vec![0.0; b_len]),
    })
}

fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_the_asked_lengths_and_nesting_still_works() {
        with_buffers(5, 3, |a, b| {
            assert_eq!((a.len(), b.len()), (5, 3));
            a[4] = 1.0;
            with_buffers(2, 7, |c, d| assert_eq!((c.len(), d.len()), (2, 7)));
        });
        // Reused: the second call sees the first one's value.
        with_buffers(5, 0, |a, _| assert_eq!(a[4], 1.0));
    }
}

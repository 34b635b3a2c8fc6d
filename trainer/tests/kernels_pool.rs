//! Max-pooling against a max over a reshaped view (candle 0.11.1's own `max_pool2d` backward scales
//! the gradient by 1/k², so it is not the reference): values, gradients, ties and odd sizes.

mod kernels_common;

use candle_core::{Device, Tensor, Var};
use crt_trainer::kernels;
use kernels_common::{assert_close, random, rng, weighted_sum};

fn reference(x: &Tensor, k: usize) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let x = x.narrow(2, 0, h / k * k).unwrap().narrow(3, 0, w / k * k).unwrap();
    x.reshape((n, c, h / k, k, w / k, k)).unwrap().max(5).unwrap().max(3).unwrap()
}

#[test]
fn values_and_gradients_match_the_reduction() {
    let mut r = rng(8);
    for (dims, k) in [([2, 3, 24, 24], 2), ([2, 5, 8, 8], 2), ([1, 2, 7, 9], 2), ([2, 2, 9, 9], 3)] {
        let x = Var::from_tensor(&random(&mut r, &dims)).unwrap();
        let ours = kernels::max_pool2d(x.as_tensor(), k).unwrap();
        let want = reference(x.as_tensor(), k);
        assert_close(&ours, &want, 0.0, &format!("forward {dims:?} k {k}"));
        let weights = random(&mut r, want.dims());
        let got = weighted_sum(&ours, &weights).backward().unwrap();
        let exp = weighted_sum(&want, &weights).backward().unwrap();
        assert_close(
            got.get(x.as_tensor()).unwrap(),
            exp.get(x.as_tensor()).unwrap(),
            0.0,
            &format!("gradient {dims:?}"),
        );
    }
}

/// A window of equal values (all zero after a ReLU) sends its whole gradient to its first entry,
/// as PyTorch does.
#[test]
fn ties_send_the_gradient_to_the_first_maximum() {
    let x = Var::from_tensor(&Tensor::zeros((1, 1, 2, 4), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    let y = kernels::max_pool2d(x.as_tensor(), 2).unwrap();
    let grads = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g, [3.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn a_window_larger_than_the_input_is_an_error() {
    let x = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = kernels::max_pool2d(&x, 2).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
}

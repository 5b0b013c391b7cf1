//! Observation bytes as the network's input tensor.

use tch::{Kind, Tensor};

use crate::env::ObsSpec;

/// A batch of `batch` observations from their bytes (`batch * obs.bytes()` long): u8
/// `[batch, c, h, w]` for frames, f32 `[batch, n]` for vectors.
pub fn obs_tensor(obs: ObsSpec, bytes: &[u8], batch: usize) -> Tensor {
    let b = batch as i64;
    match obs {
        ObsSpec::Frames([c, h, w]) => {
            Tensor::from_slice(bytes).view([b, c as i64, h as i64, w as i64])
        }
        ObsSpec::Vector(n) => Tensor::from_data_size(bytes, &[b, n as i64], Kind::Float),
    }
}

/// The same batch of frames `[batch, c, h, w]` in channels-last memory order (NHWC strides,
/// same shape and values); other tensors are returned as they are. On the CPU, libtorch's
/// convolutions then take oneDNN's NHWC kernels for the forward and backward passes, which
/// made a training step of the `nips` network on a batch of 64 about 1.5x faster on one thread
/// (30 ms instead of 46-60 ms, measured on an AMD EPYC with AVX2). Batch-1 inference is a
/// little faster without it, so only the learner uses it.
pub fn channels_last(obs: &Tensor) -> Tensor {
    if obs.dim() == 4 {
        obs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        obs.shallow_clone()
    }
}

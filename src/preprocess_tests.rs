//! Unit tests for `preprocess` on known inputs.

use super::*;

#[test]
fn max_pool_known_arrays() {
    let a = [0u8, 5, 200, 7, 255];
    let b = [1u8, 4, 100, 7, 0];
    let mut out = [9u8; 5];
    max_pool(&a, &b, &mut out).unwrap();
    assert_eq!(out, [1, 5, 200, 7, 255]);
    let mut short = [0u8; 4];
    assert!(max_pool(&a, &b, &mut short).is_err());
    assert!(max_pool(&a, &b[..3], &mut out).is_err());
}

#[test]
fn resize_constant_stays_constant() {
    let r = Resizer::new(SCREEN_H, SCREEN_W, OBS_H, OBS_W);
    for v in [0u8, 1, 77, 254, 255] {
        let src = vec![v; SCREEN_H * SCREEN_W];
        let mut dst = vec![0u8; FRAME_LEN];
        r.resize(&src, &mut dst).unwrap();
        assert!(dst.iter().all(|&p| p == v), "value {v}");
    }
}

#[test]
fn resize_4x4_to_2x2_gives_block_means() {
    #[rustfmt::skip]
    let src = [
        0u8, 2, 10, 20,
        4, 6, 30, 40,
        100, 100, 1, 2,
        100, 100, 3, 5,
    ];
    let mut dst = [0u8; 4];
    Resizer::new(4, 4, 2, 2).resize(&src, &mut dst).unwrap();
    // Means: 3, 25, 100, 2.75 -> rounded to nearest.
    assert_eq!(dst, [3, 25, 100, 3]);
}

#[test]
fn resize_fractional_overlap_5_to_2() {
    // Each output pixel covers 2.5 source pixels: weights 0.4, 0.4, 0.2 and
    // 0.2, 0.4, 0.4.
    let src = [10u8, 20, 30, 40, 50];
    let mut dst = [0u8; 2];
    Resizer::new(1, 5, 1, 2).resize(&src, &mut dst).unwrap();
    assert_eq!(dst, [18, 42]);
    // Same along the vertical axis.
    let mut dst = [0u8; 2];
    Resizer::new(5, 1, 2, 1).resize(&src, &mut dst).unwrap();
    assert_eq!(dst, [18, 42]);
    // 3 -> 2: weights 2/3, 1/3 and 1/3, 2/3: (0*2 + 90)/3 = 30, (90 + 180*2)/3 = 150.
    let mut dst = [0u8; 2];
    Resizer::new(1, 3, 1, 2)
        .resize(&[0, 90, 180], &mut dst)
        .unwrap();
    assert_eq!(dst, [30, 150]);
}

#[test]
fn resize_horizontal_gradient_is_monotone() {
    let mut src = vec![0u8; SCREEN_H * SCREEN_W];
    for row in src.chunks_exact_mut(SCREEN_W) {
        for (x, p) in row.iter_mut().enumerate() {
            *p = (x * 255 / (SCREEN_W - 1)) as u8;
        }
    }
    let mut dst = vec![0u8; FRAME_LEN];
    Resizer::new(SCREEN_H, SCREEN_W, OBS_H, OBS_W)
        .resize(&src, &mut dst)
        .unwrap();
    let first = &dst[..OBS_W];
    assert!(first.windows(2).all(|w| w[0] <= w[1]), "{first:?}");
    assert!(first[0] < 5 && first[OBS_W - 1] > 250);
    for row in dst.chunks_exact(OBS_W) {
        assert_eq!(row, first, "every row equals the first");
    }
}

#[test]
fn resize_rejects_wrong_lengths() {
    let r = Resizer::new(4, 4, 2, 2);
    let mut dst = [0u8; 4];
    assert!(r.resize(&[0u8; 15], &mut dst).is_err());
    assert!(r.resize(&[0u8; 16], &mut [0u8; 3]).is_err());
    // Degenerate sizes do not panic.
    Resizer::new(0, 0, 0, 0).resize(&[], &mut []).unwrap();
}

#[test]
fn frame_stack_order_after_pushes() {
    let frame = |v: u8| vec![v; FRAME_LEN];
    let mut s = FrameStack::new();
    assert_eq!(s.as_slice().len(), STACK * OBS_H * OBS_W);
    s.reset(&frame(1)).unwrap();
    assert!(s.as_slice().iter().all(|&p| p == 1));
    s.push(&frame(2)).unwrap();
    s.push(&frame(3)).unwrap();
    let firsts: Vec<u8> = (0..STACK).map(|i| s.frame(i).unwrap()[0]).collect();
    assert_eq!(firsts, [1, 1, 2, 3]);
    s.push(&frame(4)).unwrap();
    s.push(&frame(5)).unwrap();
    let firsts: Vec<u8> = s.as_slice().chunks(FRAME_LEN).map(|f| f[0]).collect();
    assert_eq!(firsts, [2, 3, 4, 5]);
    assert!(s.frame(STACK).is_none());
    assert!(s.push(&[0u8; 10]).is_err());
    assert!(s.reset(&[0u8; 10]).is_err());
}

#[test]
fn clip_reward_signs() {
    assert_eq!(clip_reward(0.0), 0.0);
    assert_eq!(clip_reward(-0.0), 0.0);
    assert_eq!(clip_reward(0.01), 1.0);
    assert_eq!(clip_reward(400.0), 1.0);
    assert_eq!(clip_reward(-25.0), -1.0);
    assert_eq!(clip_reward(f32::NAN), 0.0);
}

#[test]
fn rgb_to_gray_known_values() {
    let rgb = [255u8, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0];
    let mut out = [0u8; 4];
    rgb_to_gray(&rgb, &mut out).unwrap();
    assert_eq!(out, [255, 0, 76, 150]);
    assert!(rgb_to_gray(&rgb[..11], &mut out).is_err());
}

#[test]
fn separable_and_per_pixel_paths_agree() {
    let r = Resizer::new(SCREEN_H, SCREEN_W, OBS_H, OBS_W);
    // Deterministic pseudo-random image.
    let mut x = 12345u32;
    let src: Vec<u8> = (0..SCREEN_H * SCREEN_W)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 24) as u8
        })
        .collect();
    let mut a = vec![0u8; FRAME_LEN];
    let mut b = vec![0u8; FRAME_LEN];
    r.resize_rows(&src, &mut a);
    r.resize_pixels(&src, &mut b);
    assert!(a.iter().zip(&b).all(|(p, q)| p.abs_diff(*q) <= 1));
}

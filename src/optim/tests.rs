use super::*;
use tch::{Device, Kind};

#[test]
fn rmsprop_matches_the_formula() {
    let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let params = vec![("w".to_string(), p.shallow_clone())];
    let mut opt = RmsProp::new(&params, 0.9, 1e-8, RmspropForm::EpsOutside);
    // loss = sum(3 * p) -> g = 3
    (&p * 3.0).sum(Kind::Float).backward();
    opt.step(&params, 0.1);
    // v = 0.1 * 9 = 0.9; step = 0.1 * 3 / sqrt(0.9)
    let expect = 0.1 * 3.0 / 0.9f64.sqrt();
    let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
    assert!((got[0] as f64 - (1.0 - expect)).abs() < 1e-5, "{got:?}");
    assert!((got[1] as f64 - (-2.0 - expect)).abs() < 1e-5, "{got:?}");
    let v: Vec<f32> = Vec::try_from(&opt.state()[0]).unwrap();
    assert!((v[0] - 0.9).abs() < 1e-6);
}

#[test]
fn rmsprop_with_eps_inside_the_root_matches_the_a3c_form() {
    let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let params = vec![("w".to_string(), p.shallow_clone())];
    let mut opt = RmsProp::new(&params, 0.99, 0.1, RmspropForm::EpsInside);
    // g = (0.5, -0.01): v = 0.01 g^2; step = lr g / sqrt(v + 0.1).
    (&p * Tensor::from_slice(&[0.5f32, -0.01]))
        .sum(Kind::Float)
        .backward();
    opt.step(&params, 0.1);
    let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
    let step = |g: f64| 0.1 * g / (0.01 * g * g + 0.1).sqrt();
    assert!((got[0] as f64 - (1.0 - step(0.5))).abs() < 1e-6, "{got:?}");
    assert!(
        (got[1] as f64 - (-2.0 - step(-0.01))).abs() < 1e-6,
        "{got:?}"
    );
    // Unlike eps outside, a small gradient makes a small step: 0.1 * 0.01 / sqrt(0.1).
    assert!((step(-0.01).abs() - 0.00316).abs() < 1e-4);
}

/// v starting at 1 (TensorFlow's RMSProp, `--rms-initial-square-avg 1`) makes the first
/// step about lr * g; starting at 0 (torch's) a large enough gradient moves its weight by
/// about 10 lr, whatever its size.
#[test]
fn rmsprop_starting_at_one_takes_tensorflows_small_first_steps() {
    let (lr, eps, g) = (7e-4, 1e-5, [0.5f64, -0.01]);
    let first_step = |v0: f64| -> [f64; 2] {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        let mut opt = RmsProp::new(&params, 0.99, eps, RmspropForm::EpsInside).starting_at(v0);
        let v: Vec<f32> = Vec::try_from(&opt.state()[0]).unwrap();
        assert_eq!(v, vec![v0 as f32; 2]);
        (&p * Tensor::from_slice(&[g[0] as f32, g[1] as f32]))
            .sum(Kind::Float)
            .backward();
        opt.step(&params, lr);
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        [1.0 - got[0] as f64, -2.0 - got[1] as f64]
    };
    let (tf, torch) = (first_step(1.0), first_step(0.0));
    for i in 0..2 {
        let v = 0.99 + 0.01 * g[i] * g[i];
        let expect = lr * g[i] / (v + eps).sqrt();
        assert!(
            (tf[i] - expect).abs() < 5e-7,
            "{tf:?}, expected {expect} at {i}"
        );
    }
    assert!((torch[0] - 10.0 * lr).abs() < 1e-4, "{torch:?}");
    assert!(torch[0] > 19.0 * tf[0], "{torch:?} vs {tf:?}");
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let params = vec![("w".to_string(), p.shallow_clone())];
    // g = (3, 4): norm 5
    (&p * Tensor::from_slice(&[3.0f32, 4.0]))
        .sum(Kind::Float)
        .backward();
    let norm = clip_grad_norm(&params, 1.0);
    assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
    let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
    assert!(
        (g[0] - 0.6).abs() < 1e-4 && (g[1] - 0.8).abs() < 1e-4,
        "{g:?}"
    );
    zero_grad(&params);
    let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
    assert_eq!(g, vec![0.0, 0.0]);
    // Two parameters, one of them a matrix: the norm is global; below the maximum nothing
    // changes.
    let a = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let params = vec![
        ("a".to_string(), a.shallow_clone()),
        ("b".to_string(), b.shallow_clone()),
    ];
    // Gradients (1, 2; 2, 0) and (4): norm sqrt(1 + 4 + 4 + 16) = 5.
    ((&a * Tensor::from_slice(&[1.0f32, 2.0, 2.0, 0.0]).view([2, 2])).sum(Kind::Float)
        + (&b * 4.0).sum(Kind::Float))
    .backward();
    let norm = clip_grad_norm(&params, 10.0);
    assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
    assert_eq!(Vec::<f32>::try_from(&b.grad()).unwrap(), vec![4.0]);
    let norm = clip_grad_norm(&params, 2.5);
    assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
    let ga: Vec<f32> = Vec::try_from(&a.grad().reshape([-1])).unwrap();
    assert!((ga[1] - 1.0).abs() < 1e-5 && (b.grad().double_value(&[0]) - 2.0).abs() < 1e-5);
}

#[test]
fn adam_matches_the_bias_corrected_formula_over_two_steps() {
    let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let params = vec![("w".to_string(), p.shallow_clone())];
    let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64);
    let mut opt = Adam::new(&params, b1, b2, eps);
    let (mut m, mut v, mut w) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
    // Step 1 with g = (3, -0.5), step 2 with g = (1, 2): by hand as torch.optim.Adam.
    for (t, g) in [(1, [3.0f64, -0.5]), (2, [1.0, 2.0])] {
        zero_grad(&params);
        (&p * Tensor::from_slice(&[g[0] as f32, g[1] as f32]))
            .sum(Kind::Float)
            .backward();
        opt.step(&params, lr);
        for i in 0..2 {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - b1.powi(t));
            let v_hat = v[i] / (1.0 - b2.powi(t));
            w[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - w[i]).abs() < 1e-5,
                "step {t}: {got:?} vs {w:?}"
            );
        }
    }
}

#[test]
fn adam_state_survives_a_checkpoint_round_trip_and_a_rmsprop_checkpoint_is_refused() {
    let make = || Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let (p, q) = (make(), make());
    let pp = vec![("w".to_string(), p.shallow_clone())];
    let qq = vec![("w".to_string(), q.shallow_clone())];
    let (mut a, mut b) = (
        Adam::new(&pp, 0.9, 0.999, 1e-5),
        Adam::new(&qq, 0.9, 0.999, 1e-5),
    );
    let grad = |w: &Tensor, g: [f32; 2], ps: &[(String, Tensor)]| {
        zero_grad(ps);
        (w * Tensor::from_slice(&g)).sum(Kind::Float).backward();
    };
    for g in [[3.0f32, -0.5], [1.0, 2.0]] {
        grad(&p, g, &pp);
        a.step(&pp, 0.01);
    }
    let named: std::collections::HashMap<String, Tensor> = a.named_state(&pp).into_iter().collect();
    let mut names: Vec<&String> = named.keys().collect();
    names.sort();
    assert_eq!(names, ["adam/m/w", "adam/step", "adam/v/w"]);
    {
        let _g = tch::no_grad_guard();
        q.shallow_clone().copy_(&p);
    }
    b.load_named(&qq, &named).unwrap();
    // Resumed, the third step is the one the original takes (t = 3, the same moments).
    grad(&p, [-1.0, 0.5], &pp);
    a.step(&pp, 0.01);
    grad(&q, [-1.0, 0.5], &qq);
    b.step(&qq, 0.01);
    assert!(p.detach().allclose(&q.detach(), 1e-7, 1e-7, false));
    // A fresh Adam (t = 0) takes another step from the same point and gradient: its first
    // step moves each weight by lr, whatever the gradient's size.
    let mut fresh = Adam::new(&qq, 0.9, 0.999, 1e-5);
    let before = q.detach().copy();
    grad(&q, [-1.0, 0.5], &qq);
    fresh.step(&qq, 0.01);
    let moved: Vec<f32> = Vec::try_from(&(q.detach() - &before)).unwrap();
    assert!(
        (moved[0] - 0.01).abs() < 1e-6 && (moved[1] + 0.01).abs() < 1e-6,
        "{moved:?}"
    );
    // An RMSProp checkpoint holds no `adam/...` tensors: named, not a panic.
    let err = b
        .load_named(&qq, &std::collections::HashMap::new())
        .unwrap_err();
    assert_eq!(err, StateError::Missing("adam/step".into()));
    assert!(err.to_string().contains("--optimizer"), "{err}");
    // A moment of the wrong shape is refused.
    let mut bad = named;
    bad.insert(
        "adam/v/w".into(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    );
    assert!(matches!(
        b.load_named(&qq, &bad),
        Err(StateError::Shape { .. })
    ));
}

#[test]
fn optimizer_state_resumes_by_name_and_refuses_what_is_not_its_own() {
    use std::collections::HashMap;
    let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let params = vec![("w".to_string(), p.shallow_clone())];
    let rmsprop = || Optimizer::RmsProp(RmsProp::new(&params, 0.9, 1e-8, RmspropForm::EpsOutside));
    let v_of = |o: &Optimizer| -> Vec<f32> {
        let Optimizer::RmsProp(r) = o else {
            panic!("not RMSProp")
        };
        Vec::try_from(&r.state()[0]).unwrap()
    };
    let mut a = rmsprop();
    (&p * 3.0).sum(Kind::Float).backward();
    a.step(&params, 0.1);
    let named: HashMap<String, Tensor> = a.named_state(&params).into_iter().collect();
    assert_eq!(named.keys().collect::<Vec<_>>(), ["rmsprop/w"]);
    assert!(named.keys().all(|n| is_state_name(n)));
    let mut b = rmsprop();
    b.restore(&params, &named).unwrap();
    // v = 0.1 * 3^2 for both weights, as the original holds it.
    assert_eq!(v_of(&b), v_of(&a));
    assert!((v_of(&b)[1] - 0.9).abs() < 1e-6, "{:?}", v_of(&b));

    // model-best holds no optimizer state: said so, not "the other optimizer".
    let err = b.restore(&params, &HashMap::new()).unwrap_err();
    assert_eq!(err, StateError::Empty);
    assert!(err.to_string().contains("model-best"), "{err}");
    // A run trained with --optimizer adam: the missing tensor is named.
    let adam: HashMap<String, Tensor> = Adam::new(&params, 0.9, 0.999, 1e-5)
        .named_state(&params)
        .into_iter()
        .collect();
    let err = b.restore(&params, &adam).unwrap_err();
    assert_eq!(err, StateError::Missing("rmsprop/w".into()));
    assert!(err.to_string().contains("--optimizer"), "{err}");
    let mut fresh_adam = Optimizer::Adam(Adam::new(&params, 0.9, 0.999, 1e-5));
    assert_eq!(
        fresh_adam.restore(&params, &named).unwrap_err(),
        StateError::Missing("adam/step".into())
    );
    // A tensor of the wrong shape is refused and the state stays as it was.
    let mut bad = named;
    bad.insert(
        "rmsprop/w".into(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    );
    assert!(matches!(
        b.restore(&params, &bad),
        Err(StateError::Shape { .. })
    ));
    assert_eq!(v_of(&b), v_of(&a));
}

use super::*;
use crate::env::ObsSpec;
use crate::model::Network;
use crate::shm::{Segment, SlotLayout};
use tch::Device;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn gae_worked_by_hand_with_a_terminal_step() {
    // delta_2 = 2 + 0 * 100 - 3 = -1                  A_2 = -1
    // delta_1 = 0 + 0.5 * 3 - 2 = -0.5                A_1 = -0.5 + 0.5 * 0.5 * -1 = -0.75
    // delta_0 = 1 + 0.5 * 2 - 1 = 1                   A_0 = 1 + 0.25 * -0.75 = 0.8125
    let t = gae(
        &[1.0, 0.0, 2.0],
        &[0.5, 0.5, 0.0],
        &[1.0, 2.0, 3.0, 100.0],
        0.5,
    );
    assert_eq!(t.advantages, vec![0.8125, -0.75, -1.0]);
    assert_eq!(t.returns, vec![1.8125, 1.25, 2.0], "R = A + V");
}

#[test]
fn gae_is_the_td_error_at_lambda_0_and_the_n_step_return_at_lambda_1() {
    let (r, d, v) = ([1.0f32, -1.0, 0.5], [0.9f32; 3], [0.3f32, -0.2, 0.7, 2.0]);
    let td = gae(&r, &d, &v, 0.0);
    for k in 0..3 {
        let delta = r[k] + d[k] * v[k + 1] - v[k];
        assert!(close(td.advantages[k] as f64, delta as f64), "{td:?}");
    }
    let mc = gae(&r, &d, &v, 1.0);
    let mut g = v[3];
    for k in (0..3).rev() {
        g = r[k] + d[k] * g;
        assert!(close(mc.returns[k] as f64, g as f64), "{mc:?}");
    }
}

#[test]
fn each_epoch_covers_every_sample_once_in_near_equal_minibatches() {
    let mut rng = StdRng::seed_from_u64(1);
    let first = minibatches(10, 3, &mut rng);
    let mut sizes: Vec<usize> = first.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![3, 3, 4]);
    let mut all: Vec<usize> = first.concat();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    // The next epoch is shuffled anew, and still covers each sample once.
    let second = minibatches(10, 3, &mut rng);
    assert_ne!(first.concat(), second.concat());
    let mut all: Vec<usize> = second.concat();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    // More minibatches than samples: one sample each; no samples: no minibatch.
    assert_eq!(minibatches(2, 4, &mut rng).len(), 2);
    assert!(minibatches(0, 4, &mut rng).is_empty());
}

fn t(v: &[f32]) -> Tensor {
    Tensor::from_slice(v)
}

/// Three steps: ratios 1.5 (clipped at 1.2 for a positive advantage), 0.5 (the unclipped
/// term is the larger: kept) and 1; values with the first one's change clipped.
#[test]
fn the_clipped_surrogate_and_value_clipping_worked_by_hand() {
    let log_pi_a = t(&[1.5f32.ln(), 0.5f32.ln(), 0.0]).set_requires_grad(true);
    let values = t(&[1.0, 2.0, 0.0]).set_requires_grad(true);
    let (behaviour, old_values) = (t(&[0.0; 3]), t(&[0.5, 2.0, 0.0]));
    let (returns, advantages, entropy) = (
        t(&[2.0, 1.0, 0.5]),
        t(&[2.0, 2.0, -1.0]),
        t(&[0.5, 0.6, 0.7]),
    );
    let steps = Clipped {
        log_pi_a: &log_pi_a,
        entropy: &entropy,
        values: &values,
        behaviour_log_pi_a: &behaviour,
        old_values: &old_values,
        returns: &returns,
        advantages: &advantages,
    };
    let mut c = ClipSettings {
        clip: 0.2,
        value_clip: true,
        normalize_advantages: false,
        value_coef: 0.5,
        entropy_coef: 0.01,
    };
    let l = clipped_loss(&steps, &c);
    // max(-A r, -A clip(r)): max(-3, -2.4) = -2.4; max(-1, -1.6) = -1; max(1, 1) = 1.
    let policy = (-2.4 - 1.0 + 1.0) / 3.0;
    // Step 0: (1 - 2)^2 = 1 against (0.5 + 0.2 - 2)^2 = 1.69; steps 1, 2: 1 and 0.25.
    let value = 0.5 * (1.69 + 1.0 + 0.25) / 3.0;
    assert!(close(l.policy.double_value(&[]), policy), "{}", l.policy);
    assert!(close(l.value.double_value(&[]), value), "{}", l.value);
    assert!(close(l.entropy.double_value(&[]), 0.6));
    assert!(close(l.value_mean.double_value(&[]), 1.0));
    assert!(close(
        l.total.double_value(&[]),
        policy + 0.5 * value - 0.01 * 0.6
    ));
    l.total.backward();
    // The clipped ratio passes no gradient; the others d/dlogp (-A r / 3) = -A r / 3.
    let g = log_pi_a.grad();
    assert_eq!(g.double_value(&[0]), 0.0, "{g}");
    assert!(close(g.double_value(&[1]), -2.0 * 0.5 / 3.0), "{g}");
    assert!(close(g.double_value(&[2]), 1.0 / 3.0), "{g}");
    // The clipped value branch is the larger at step 0 and constant in V: no gradient there.
    // Step 1: 0.5 * 0.5 * 2 (V - R) / 3 = (2 - 1) / 6.
    let g = values.grad();
    assert_eq!(g.double_value(&[0]), 0.0, "{g}");
    assert!(close(g.double_value(&[1]), 1.0 / 6.0), "{g}");

    // Without value clipping: 0.5 * mean (V - R)^2.
    c.value_clip = false;
    let l = clipped_loss(&steps, &c);
    assert!(close(
        l.value.double_value(&[]),
        0.5 * (1.0 + 1.0 + 0.25) / 3.0
    ));
    // Normalised advantages: (A - 1) / sqrt(3) (mean 1, unbiased standard deviation sqrt 3).
    c.normalize_advantages = true;
    let l = clipped_loss(&steps, &c);
    let a = [1.0 / 3f64.sqrt(), 1.0 / 3f64.sqrt(), -2.0 / 3f64.sqrt()];
    let want = ((-a[0] * 1.5f64).max(-a[0] * 1.2)
        + (-a[1] * 0.5f64).max(-a[1] * 0.8)
        + (-a[2] * 1.0f64).max(-a[2] * 1.0))
        / 3.0;
    assert!(
        close(l.policy.double_value(&[]), want),
        "{} vs {want}",
        l.policy
    );
}

fn config(algorithm: &str, unroll: usize, batch: usize) -> Config {
    let mut cfg = Config::from_flags([format!("--algorithm={algorithm}")]).unwrap();
    cfg.rule.segments.unroll = unroll;
    cfg.learner.batch_size = batch;
    cfg.net.network = Network::Mlp;
    cfg.optim.lr = 1e-2;
    cfg
}

fn learner(cfg: &Config, rule: Rule) -> Learner {
    let obs = ObsSpec::Vector(4);
    let net = crate::rules::net_spec(cfg, obs, &crate::env::ActionSpec::Discrete(2)).unwrap();
    Learner::new(LearnerCore::new(cfg, net, obs, 2, Device::Cpu), cfg, rule)
}

/// Appends segment `i` of CartPole-sized observations (4 floats; 1 to 3 steps, terminal for
/// odd `i`) to `batch`, stamped with `version`.
fn push(batch: &mut Batch, i: usize, version: u32) {
    let vecs: Vec<f32> = (0..4 * 4).map(|k| (k as f32 * 0.37).sin()).collect();
    let bytes: Vec<u8> = vecs.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let len = 1 + i % 3;
    batch
        .push_segment(&Segment {
            frames: &bytes[..(1 + len) * 16],
            actions: &[0, 1, 1][..len],
            action_values: &[],
            rewards: &[1.0; 3][..len],
            behaviour_logp: &[-0.7; 3][..len],
            terminal: i % 2 == 1,
        })
        .unwrap();
    let last = batch.len() - 1;
    batch.versions[last] = version;
}

/// A batch of segments 0, 1, ... stamped with `versions`.
fn segments(layout: SlotLayout, versions: &[u32]) -> Batch {
    let mut batch = Batch::new(versions.len(), layout);
    for (i, v) in versions.iter().enumerate() {
        push(&mut batch, i, *v);
    }
    batch
}

#[test]
fn ppo_drops_segments_of_older_snapshots_and_appo_keeps_them() {
    let mut cfg = config("ppo", 3, 2);
    cfg.rule.gae.max_policy_lag = 0;
    let layout = crate::rules::slot_layout(&cfg, ObsSpec::Vector(4), 0);
    let mut l = learner(&cfg, Rule::Ppo);
    l.acting(7);
    // A pop of versions 6, 7: the first goes, the second waits for the next pop.
    let mut batch = segments(layout, &[6, 7]);
    assert_eq!(l.insert(&mut batch, 0), 0);
    assert_eq!((batch.len(), l.dropped()), (1, 1));
    assert_eq!(batch.lens[0], 2, "segment 1 moved down");
    // A publication: what version 7 acted is now stale too.
    l.acting(8);
    push(&mut batch, 2, 8);
    assert_eq!(l.insert(&mut batch, 0), 0);
    assert_eq!((batch.len(), l.dropped()), (1, 2));
    push(&mut batch, 3, 8);
    assert_eq!(l.insert(&mut batch, 0), 3 + 1);
    assert!(l.ready(0));
    assert_eq!(l.held.versions[..2], [8, 8]);
    assert_eq!(l.held.lens[..2], [3, 1], "the kept rows, in order");
    assert!(!l.held.terminal[0] && l.held.terminal[1]);
    assert!(batch.is_empty());

    let cfg = config("appo", 3, 2);
    let mut l = learner(&cfg, Rule::Appo);
    l.acting(7);
    let mut batch = segments(layout, &[6, 7]);
    assert_eq!(l.insert(&mut batch, 0), 1 + 2);
    assert_eq!(l.dropped(), 0);
}

#[test]
fn ppo_keeps_segments_within_the_policy_lag_across_the_version_wrap() {
    let cfg = config("ppo", 3, 4);
    assert_eq!(cfg.rule.gae.max_policy_lag, 1, "the default");
    let layout = crate::rules::slot_layout(&cfg, ObsSpec::Vector(4), 0);
    let mut l = learner(&cfg, Rule::Ppo);
    l.acting(8);
    // Lags 2, 1, 0: the first goes.
    let mut batch = segments(layout, &[6, 7, 8]);
    assert_eq!(l.insert(&mut batch, 0), 0);
    assert_eq!((batch.len(), l.dropped()), (2, 1));
    assert_eq!(batch.versions[..2], [7, 8]);
    // Versions are the low 32 bits of a counter: u32::MAX is one behind 0, 5 behind 4.
    l.acting(0);
    let mut batch = segments(layout, &[u32::MAX, 0, u32::MAX - 4]);
    assert_eq!(l.insert(&mut batch, 0), 0);
    assert_eq!((batch.len(), l.dropped()), (2, 2));
    assert_eq!(batch.versions[..2], [u32::MAX, 0]);
    let mut cfg = config("ppo", 3, 4);
    cfg.rule.gae.max_policy_lag = 2;
    let mut l = learner(&cfg, Rule::Ppo);
    l.acting(8);
    let mut batch = segments(layout, &[5, 6, 7, 8]);
    assert_eq!(
        l.insert(&mut batch, 0),
        0,
        "3 of 4 segments: not yet a batch"
    );
    assert_eq!((batch.len(), l.dropped()), (3, 1));
    assert_eq!(batch.versions[..3], [6, 7, 8]);
}

#[test]
fn an_update_trains_every_epoch_and_reports_its_parts() {
    tch::manual_seed(0);
    for (name, rule) in [("ppo", Rule::Ppo), ("appo", Rule::Appo)] {
        let cfg = config(name, 3, 4);
        let layout = crate::rules::slot_layout(&cfg, ObsSpec::Vector(4), 0);
        let mut l = learner(&cfg, rule);
        let x = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.05]).view([1, 4]);
        let before = l.core.model.forward(&x);
        let mut batch = segments(layout, &[1, 1, 1, 1]);
        assert_eq!(l.insert(&mut batch, 0), 7);
        let stats = l.update(1e-2).unwrap().unwrap();
        assert!(stats.loss.double_value(&[]).is_finite(), "{name}");
        assert!(!l.ready(0), "{name}: the batch is released");
        let m = l.metrics();
        assert!(m.policy_loss.is_some() && m.value_loss.is_some(), "{name}");
        assert!(m.entropy.unwrap() > 0.0 && m.entropy.unwrap() <= 2f64.ln() + 1e-6);
        assert_eq!(m.rho_mean.is_some(), rule == Rule::Appo, "{name}");
        assert!(
            !before.allclose(&l.core.model.forward(&x), 1e-7, 1e-7, false),
            "{name}"
        );
    }
}

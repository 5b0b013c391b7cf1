//! Continuous actions (a Box action space) through every seam: the slots, the Gaussian
//! policy's log-probabilities and entropy, the network's Gaussian head, and the refusal of the
//! Q rules.

use std::time::Duration;

use tch::{Device, Kind, Tensor};

use super::actor_critic::{log_prob_entropy, Actions};
use crate::config::Config;
use crate::env::{ActionSpec, ObsSpec};
use crate::model::{AgentNetwork, HeadKind, NetSpec, Network};
use crate::policy::{log_prob, sample_gaussian, sample_uniform, Action};
use crate::shm::{Batch, ExperienceQueue, Segment, SlotLayout, Transition};

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

#[test]
fn continuous_actions_round_trip_through_transition_and_segment_slots() {
    // Transitions of 2-byte observations and 2-dimensional actions.
    let layout = SlotLayout::transitions(2, false).with_action_dims(2);
    // 16-byte header, 2 observation bytes, padded to 4, then 2 f32; padded to 8.
    assert_eq!(layout.action_values_offset(), Some(20));
    assert_eq!(layout.slot_bytes(), Some(32));
    let name = format!("async-rl-test-{}-contq", std::process::id());
    let q = ExperienceQueue::create(&name, 1, 4, layout).unwrap();
    for (i, a) in [[0.5f32, -1.5], [2.0, 3.25]].iter().enumerate() {
        q.push(
            0,
            &Transition {
                obs: &[i as u8, 7],
                action_values: a,
                ret: i as f32,
                ..Transition::default()
            },
        )
        .unwrap();
    }
    // A discrete-sized action is refused, naming the sizes.
    let err = q
        .push(
            0,
            &Transition {
                obs: &[0, 0],
                ..Transition::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("0 values"), "{err}");
    let mut b = Batch::new(2, layout);
    assert!(q.pop_into(&mut b, Duration::from_secs(1)).unwrap());
    assert_eq!(b.action_values, vec![0.5, -1.5, 2.0, 3.25]);
    assert_eq!(b.returns, vec![0.0, 1.0]);

    // Segments of up to 3 steps of 1-dimensional actions.
    let layout = SlotLayout::segments(2, 3, 1).with_action_dims(1);
    let name = format!("async-rl-test-{}-contseg", std::process::id());
    let q = ExperienceQueue::create(&name, 1, 4, layout).unwrap();
    let seg = Segment {
        frames: &[0, 1, 2, 3],
        actions: &[0, 0],
        action_values: &[-0.25, 1.75],
        rewards: &[1.0, 2.0],
        // A density's log may be positive.
        behaviour_logp: &[0.5, -3.0],
        terminal: true,
    };
    q.push_segment(0, &seg, 1).unwrap();
    let short = Segment {
        action_values: &[1.0],
        ..seg
    };
    let err = q.push_segment(0, &short, 1).unwrap_err();
    assert!(
        err.to_string().contains("continuous action values"),
        "{err}"
    );
    let mut b = Batch::new(1, layout);
    assert!(q.pop_into(&mut b, Duration::from_secs(1)).unwrap());
    assert_eq!(b.action_values, vec![-0.25, 1.75, 0.0], "padding is zero");
    assert_eq!(b.behaviour_logp, vec![0.5, -3.0, 0.0]);

    // A remote host's raw slot: non-finite action values are refused, a positive log-density
    // is not.
    let mut raw = Vec::new();
    q.push_segment(0, &seg, 1).unwrap();
    assert_eq!(q.pop_raw(&mut raw, 1, Duration::from_secs(1)).unwrap(), 1);
    assert_eq!(layout.check_raw(&raw, 1), Ok(()));
    let at = layout.action_values_offset().unwrap();
    raw[at + 4..at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad = layout.check_raw(&raw, 1).unwrap_err();
    assert!(
        bad.to_string().contains("continuous action value NaN"),
        "{bad}"
    );
}

#[test]
fn the_gaussian_log_density_and_entropy_match_their_closed_forms() {
    // Two dimensions: mean (0, 1), log std (0, ln 2); the action (1, 0).
    let policy = [0.0f32, 1.0, 0.0, 2f32.ln()];
    let a = [1.0f32, 0.0];
    let by_hand = (-0.5 - HALF_LN_2PI) + (-0.5 * 0.25 - 2f64.ln() - HALF_LN_2PI);
    assert!((f64::from(log_prob(&policy, Action::Continuous(&a))) - by_hand).abs() < 1e-5);
    // The learner's tensors agree with the actor's log-probability, and the entropy is
    // sum_i (log std_i + (1 + ln 2 pi) / 2).
    let p = Tensor::from_slice(&policy).view([1, 4]);
    let actions = Actions::Continuous(Tensor::from_slice(&a).view([1, 2]));
    let (lp, h) = log_prob_entropy(&p, &actions);
    assert!((lp.double_value(&[0]) - by_hand).abs() < 1e-5);
    let h_by_hand = 2f64.ln() + 2.0 * (0.5 + HALF_LN_2PI);
    assert!((h.double_value(&[0]) - h_by_hand).abs() < 1e-5);
    // A wrong length is NaN (which the slot check refuses), never a panic.
    assert!(log_prob(&policy, Action::Continuous(&[1.0])).is_nan());
    assert!(log_prob(&[0.0, 0.0], Action::Discrete(2)).is_nan());
}

#[test]
fn gaussian_samples_have_the_policys_mean_and_spread() {
    use rand::{rngs::StdRng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(5);
    let policy = [3.0f32, -1.0, 0.0, (0.5f32).ln()];
    let n = 20_000;
    let mut sums = [0f64; 2];
    let mut squares = [0f64; 2];
    let mut out = [0f32; 2];
    for _ in 0..n {
        sample_gaussian(&policy, &mut out, &mut rng);
        for i in 0..2 {
            sums[i] += f64::from(out[i]);
            squares[i] += f64::from(out[i]).powi(2);
        }
    }
    for (i, (mean, sd)) in [(3.0, 1.0), (-1.0, 0.5)].into_iter().enumerate() {
        let m = sums[i] / n as f64;
        let var = squares[i] / n as f64 - m * m;
        assert!((m - mean).abs() < 4.0 * sd / (n as f64).sqrt(), "mean {m}");
        assert!((var.sqrt() - sd).abs() < 0.02, "sd {}", var.sqrt());
    }
    // Uniform actions stay within finite bounds.
    let spec = ActionSpec::Box {
        low: vec![-2.0, 0.0],
        high: vec![2.0, 0.5],
    };
    let mut v = Vec::new();
    for _ in 0..1000 {
        sample_uniform(&spec, &mut v, &mut rng);
        assert!(
            (-2.0..=2.0).contains(&v[0]) && (0.0..=0.5).contains(&v[1]),
            "{v:?}"
        );
    }
}

#[test]
fn the_gaussian_head_outputs_means_log_stds_and_a_value_and_learns_its_log_std() {
    let spec = NetSpec {
        arch: Network::Mlp,
        head: HeadKind::Gaussian,
    };
    assert_eq!(
        (spec.act_width(3), spec.policy_width(3), spec.action_dims(3)),
        (7, 6, 3)
    );
    let net = AgentNetwork::new(spec, ObsSpec::Vector(4), 3, Device::Cpu);
    let log_std = net.log_std().expect("a Gaussian head has log stds");
    assert_eq!(log_std.size(), [3]);
    assert_eq!(
        log_std.abs().sum(Kind::Float).double_value(&[]),
        0.0,
        "std 1 at first"
    );
    assert!(
        net.params().iter().any(|(n, _)| n == "log_std"),
        "in the snapshot"
    );
    let x = Tensor::ones([5, 4], (Kind::Float, Device::Cpu));
    let (policy, value) = net.policy_value(&x).unwrap();
    assert_eq!((policy.size(), value.size()), (vec![5, 6], vec![5]));
    assert_eq!(net.act_outputs(&x).size(), [5, 7]);
    // The log std gets a gradient through the log-density: a sample far from the mean
    // (|z| > 1) asks for a wider policy.
    let far = Actions::Continuous(policy.narrow(1, 0, 3).detach() + 3.0);
    let (lp, _) = log_prob_entropy(&policy, &far);
    (-lp.sum(Kind::Float)).backward();
    let g = net.log_std().unwrap().grad();
    assert!(
        g.max().double_value(&[]) < 0.0,
        "descent raises the log std: {g}"
    );
}

#[test]
fn the_q_rules_refuse_continuous_actions_by_name() {
    let spec = ActionSpec::Box {
        low: vec![-2.0],
        high: vec![2.0],
    };
    for rule in ["q", "sarsa", "dqn"] {
        let cfg = Config::from_flags(["--algorithm", rule]).unwrap();
        let err = super::net_spec(&cfg, ObsSpec::Vector(3), &spec).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("--algorithm {rule}"))
                && msg.contains("a3c")
                && msg.contains("Box"),
            "{msg}"
        );
    }
    for rule in ["a3c", "impala"] {
        let cfg = Config::from_flags(["--algorithm", rule, "--network", "mlp"]).unwrap();
        let net = super::net_spec(&cfg, ObsSpec::Vector(3), &spec).unwrap();
        assert_eq!(net.head, HeadKind::Gaussian);
        let layout = super::slot_layout(&cfg, ObsSpec::Vector(3), net.action_dims(1));
        assert_eq!(layout.action_dims, 1);
    }
}

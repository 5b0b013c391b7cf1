use super::*;
use crate::env::ObsSpec;
use crate::model::Network;
use crate::shm::SlotLayout;
use tch::Device;

/// Collects pushed transitions as (obs[0], action, ret, discount, next_obs[0]).
#[derive(Default)]
struct Collect(Vec<(u8, u32, f32, f32, u8)>);

impl ExperienceSink for Collect {
    fn push(&mut self, t: &Transition) -> Result<(), PushError> {
        let next = t
            .next_obs
            .expect("dqn transitions carry the next observation");
        self.0
            .push((t.obs[0], t.action, t.ret, t.discount, next[0]));
        Ok(())
    }
}

fn no_values(_: &[u8]) -> (Vec<f32>, usize) {
    panic!("the dqn adder never asks for Q-values")
}

#[test]
fn the_n_step_window_worked_by_hand() {
    // n = 2, gamma 0.5; observations are their step numbers.
    let mut w = NStepWindow::new(2, 0.5, 1);
    let mut out = Collect::default();
    let step = |w: &mut NStepWindow, t: u8, r: f32, end: StepEnd, out: &mut Collect| {
        assert!(!w.needs_values());
        w.begin(&[t], crate::policy::Action::Discrete(t as u32), None, out)
            .unwrap();
        w.end(r, end, &[t + 1], &mut no_values, out).unwrap();
    };
    step(&mut w, 0, 1.0, StepEnd::Continue, &mut out);
    assert!(out.0.is_empty(), "one step held, n = 2");
    step(&mut w, 1, 2.0, StepEnd::Continue, &mut out);
    // s0: G = 1 + 0.5*2 = 2, discount 0.25, bootstraps from s2.
    assert_eq!(out.0, vec![(0, 0, 2.0, 0.25, 2)]);
    step(&mut w, 2, 3.0, StepEnd::Continue, &mut out);
    assert_eq!(out.0[1], (1, 1, 3.5, 0.25, 3));
    // A terminal: both held steps go, without a bootstrap.
    step(&mut w, 3, 4.0, StepEnd::Terminal, &mut out);
    assert_eq!(out.0[2..], [(2, 2, 5.0, 0.0, 4), (3, 3, 4.0, 0.0, 4)]);
    // A new episode cut by a time limit: the held step bootstraps with gamma^1.
    step(&mut w, 10, 1.0, StepEnd::Truncated, &mut out);
    assert_eq!(out.0[4], (10, 10, 1.0, 0.5, 11));
    assert_eq!(out.0.len(), 5);
    // n = 1 is the 1-step DQN transition.
    let mut one = NStepWindow::new(1, 0.9, 1);
    step(&mut one, 0, 1.0, StepEnd::Continue, &mut out);
    assert_eq!(out.0[5], (0, 0, 1.0, 0.9, 1));
}

#[test]
fn double_q_takes_the_online_networks_action_and_the_target_networks_value() {
    let q_target = Tensor::from_slice(&[1.0f32, 5.0, 3.0, 2.0]).view([2, 2]);
    let q_online = Tensor::from_slice(&[9.0f32, 0.0, 0.0, 9.0]).view([2, 2]);
    let double: Vec<f32> = Vec::try_from(bootstrap_values(&q_target, Some(&q_online))).unwrap();
    // The online network picks actions 0 and 1; the target values them 1 and 2.
    assert_eq!(double, vec![1.0, 2.0]);
    let plain: Vec<f32> = Vec::try_from(bootstrap_values(&q_target, None)).unwrap();
    assert_eq!(plain, vec![5.0, 3.0]);
}

fn cartpole_cfg() -> Config {
    Config::from_flags([
        "--game=CartPole",
        "--algorithm=dqn",
        "--network=mlp",
        "--batch-size=4",
        "--replay-size=100",
        "--learning-starts=0",
        "--replay-ratio=2",
        "--target-update=3",
    ])
    .unwrap()
}

fn learner(cfg: &Config) -> Learner {
    let core = LearnerCore::new(cfg, Network::Mlp.into(), ObsSpec::Vector(4), 2, Device::Cpu);
    Learner::new(core, cfg)
}

/// A batch of `n` CartPole-sized transitions.
fn batch(n: usize, seed: u8) -> Batch {
    let layout = SlotLayout::transitions(16, true);
    let mut b = Batch::new(n, layout);
    for i in 0..n {
        let (obs, next, idx) = b.next_row();
        let x = (i as f32 + f32::from(seed)) * 0.01;
        obs.copy_from_slice(&[x, -x, x, 0.5].map(f32::to_ne_bytes).concat());
        next.copy_from_slice(&[x, x, -x, 0.5].map(f32::to_ne_bytes).concat());
        b.actions[idx] = (i % 2) as i64;
        b.returns[idx] = 1.0;
        b.discounts[idx] = 0.99;
        b.commit_row();
    }
    b
}

#[test]
fn the_replay_ratio_is_held_in_both_directions() {
    let cfg = cartpole_cfg();
    let mut l = learner(&cfg);
    assert!(!l.ready(0), "an empty memory trains nothing");
    let mut updates = 0;
    let mut inserted = 0;
    for round in 0..20u8 {
        let mut b = batch(8, round);
        inserted += l.insert(&mut b, 1000 * u64::from(round));
        assert!(b.is_empty(), "the rule takes every transition");
        while l.ready(1000 * u64::from(round)) {
            l.update(1e-3).unwrap().expect("a sample");
            updates += 1;
        }
        // Never ahead of 2 samples per insert (plus one batch of slack), never behind by
        // more than one batch once the learner has caught up.
        let since = inserted - 8;
        let sampled = updates * cfg.learner.batch_size;
        assert!(sampled as f64 <= 2.0 * since as f64 + 4.0, "round {round}");
        assert!(sampled as f64 + 4.0 > 2.0 * since as f64, "round {round}");
    }
    let m = l.metrics();
    assert_eq!(m.replay_size, Some(100));
    assert!((m.replay_ratio.unwrap() - 2.0).abs() < 0.2, "{m:?}");
    assert_eq!(m.priority_mean, None, "not prioritized");
}

#[test]
fn learning_waits_for_learning_starts_frames() {
    let mut cfg = cartpole_cfg();
    cfg.rule.replay.learning_starts = 5000;
    let mut l = learner(&cfg);
    l.insert(&mut batch(8, 0), 1000);
    assert!(!l.ready(5999), "4999 frames after the first insertion");
    assert!(l.ready(6000));
}

#[test]
fn the_target_network_follows_the_online_one_every_target_update_updates() {
    let mut cfg = cartpole_cfg();
    cfg.rule.replay.replay_ratio = 100.0;
    let mut l = learner(&cfg);
    let flat = |n: &AgentNetwork| {
        let mut v = vec![0f32; n.numel()];
        n.flat_params_into(&mut v);
        v
    };
    l.insert(&mut batch(8, 0), 0);
    assert!(l.ready(0), "learning starts");
    l.insert(&mut batch(8, 1), 0);
    assert_eq!(flat(&l.target), flat(l.model()), "a copy at the start");
    for k in 1..=3 {
        assert!(l.ready(0));
        l.update(1e-2).unwrap().unwrap();
        let same = flat(&l.target) == flat(l.model());
        // --target-update 3: copied after the third update only.
        assert_eq!(same, k == 3, "after update {k}");
    }
    let names: Vec<String> = l.extra_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"target/q.weight".to_string()), "{names:?}");
}

#[test]
fn prioritized_updates_report_priorities_and_weights() {
    let mut cfg = cartpole_cfg();
    cfg.rule.replay.prioritized = true;
    let mut l = learner(&cfg);
    l.insert(&mut batch(16, 0), 0);
    assert!(l.ready(0), "learning starts");
    l.insert(&mut batch(16, 1), 0);
    for _ in 0..4 {
        assert!(l.ready(0));
        l.update(1e-3).unwrap().unwrap();
    }
    let m = l.metrics();
    let w = m.is_weight_mean.unwrap();
    assert!(w > 0.0 && w <= 1.0, "{m:?}");
    assert!(m.priority_mean.unwrap() > 0.0, "{m:?}");
}

use super::*;

/// log softmax(logits)[a] (the actor's behaviour log-probability of a discrete action).
fn log_prob(logits: &[f32], a: usize) -> f32 {
    crate::policy::log_prob(logits, Action::Discrete(a as u32))
}
use crate::env::ObsSpec;
use crate::model::HeadKind;
use crate::model::Network;
use crate::shm::{ExperienceQueue, Transition};

/// A pushed segment, owned: frames, actions, rewards, log-probabilities, terminal.
type Owned = (Vec<u8>, Vec<u32>, Vec<f32>, Vec<f32>, bool);

/// Collects pushed segments as owned copies.
#[derive(Default)]
struct Collect(Vec<Owned>);

impl ExperienceSink for Collect {
    fn push(&mut self, _t: &Transition) -> Result<(), PushError> {
        panic!("impala pushes segments")
    }

    fn push_segment(&mut self, s: &Segment) -> Result<(), PushError> {
        self.0.push((
            s.frames.to_vec(),
            s.actions.to_vec(),
            s.rewards.to_vec(),
            s.behaviour_logp.to_vec(),
            s.terminal,
        ));
        Ok(())
    }
}

#[test]
fn log_prob_is_the_log_softmax() {
    let lp = log_prob(&[0.0, 3f32.ln()], 1);
    assert!((lp - 0.75f32.ln()).abs() < 1e-6);
    // Stable for huge logits.
    assert!((log_prob(&[1000.0, 1000.0], 0) - 0.5f32.ln()).abs() < 1e-6);
}

/// Stacks of 2 one-byte frames: s_t = [t, t + 1] (oldest first), as a frame stack shifts.
#[test]
fn segments_store_each_frame_once_and_cut_at_unroll_and_terminals() {
    let mut unroll = Unroll::new(SlotLayout::segments(2, 3, 1));
    let mut out = Collect::default();
    let mut never = |_: &[u8]| -> (Vec<f32>, usize) { panic!("impala never asks") };
    // Outputs: two logits, then V(s).
    let row = [0.0f32, 3f32.ln(), 5.0];
    for t in 0..3u8 {
        unroll
            .begin(
                &[t, t + 1],
                crate::policy::Action::Discrete(u32::from(t % 2)),
                Some(&row),
                &mut out,
            )
            .unwrap();
        assert!(out.0.is_empty());
        unroll
            .end(
                f32::from(t),
                StepEnd::Continue,
                &[t + 1, t + 2],
                &mut never,
                &mut out,
            )
            .unwrap();
    }
    // Three steps: s_0..s_3 as 2 + 3 frames.
    let (frames, actions, rewards, logp, terminal) = &out.0[0];
    assert_eq!(frames, &vec![0, 1, 2, 3, 4]);
    assert_eq!(actions, &vec![0, 1, 0]);
    assert_eq!(rewards, &vec![0.0, 1.0, 2.0]);
    let (a0, a1) = (0.25f32.ln(), 0.75f32.ln());
    for (got, want) in logp.iter().zip([a0, a1, a0]) {
        assert!((got - want).abs() < 1e-6, "{logp:?}");
    }
    assert!(!terminal);
    // The next segment starts from the state the first bootstraps from; a terminal step ends
    // it early (the refilled stack after it is stored but never bootstrapped).
    unroll
        .begin(
            &[3, 4],
            crate::policy::Action::Discrete(1),
            Some(&row),
            &mut out,
        )
        .unwrap();
    unroll
        .end(-1.0, StepEnd::Terminal, &[9, 9], &mut never, &mut out)
        .unwrap();
    let (frames, actions, rewards, logp, terminal) = &out.0[1];
    assert_eq!(
        (frames, actions, rewards, *terminal),
        (&vec![3, 4, 9], &vec![1], &vec![-1.0], true)
    );
    assert!((logp[0] - a1).abs() < 1e-6);
    // A truncation ends a segment that bootstraps.
    unroll
        .begin(
            &[9, 9],
            crate::policy::Action::Discrete(0),
            Some(&row),
            &mut out,
        )
        .unwrap();
    unroll
        .end(0.5, StepEnd::Truncated, &[9, 10], &mut never, &mut out)
        .unwrap();
    assert_eq!(out.0[2].0, vec![9, 9, 10]);
    assert!(!out.0[2].4);
}

#[test]
fn the_segment_slot_round_trips_through_the_queue() {
    let layout = SlotLayout::segments(2, 3, 1);
    // 16-byte header, 3 steps of (action, reward, log-prob), 2 + 3 frames; padded to 8.
    assert_eq!(
        layout.slot_bytes(),
        Some((16 + 36 + 5usize).next_multiple_of(8))
    );
    let name = format!("async-rl-test-{}-segq", std::process::id());
    let q = ExperienceQueue::create(&name, 1, 4, layout).unwrap();
    let long = Segment {
        frames: &[0, 1, 2, 3, 4],
        actions: &[2, 1, 0],
        action_values: &[],
        rewards: &[1.0, -1.0, 0.5],
        behaviour_logp: &[-0.1, -0.2, -0.3],
        terminal: false,
    };
    let short = Segment {
        frames: &[7, 8, 9],
        actions: &[3],
        action_values: &[],
        rewards: &[2.0],
        behaviour_logp: &[-1.5],
        terminal: true,
    };
    q.push_segment(0, &long, 41).unwrap();
    q.push_segment(0, &short, 42).unwrap();
    // What does not fit is refused, naming why.
    let bad = Segment {
        frames: &[0, 1],
        ..short
    };
    let err = q.push_segment(0, &bad, 1).unwrap_err();
    assert!(err.to_string().contains("frame bytes"), "{err}");
    let t = Transition {
        obs: &[0, 0],
        ..Transition::default()
    };
    assert!(matches!(q.push(0, &t), Err(PushError::Shape(_))));

    let mut b = Batch::new(2, layout);
    // Stale bytes in the batch must not show through a short segment's padding.
    b.push_segment(&long).unwrap();
    b.clear();
    assert!(q
        .pop_into(&mut b, std::time::Duration::from_secs(1))
        .unwrap());
    assert_eq!((b.lens[0], b.lens[1]), (3, 1));
    assert_eq!(b.steps(), 4, "agent steps, not segments");
    assert_eq!((b.terminal[0], b.terminal[1]), (false, true));
    assert_eq!(b.versions[..2], [41, 42]);
    assert_eq!(b.actions, vec![2, 1, 0, 3, 0, 0]);
    assert_eq!(b.rewards, vec![1.0, -1.0, 0.5, 2.0, 0.0, 0.0]);
    assert_eq!(b.behaviour_logp, vec![-0.1, -0.2, -0.3, -1.5, 0.0, 0.0]);
    for t in 0..=3 {
        assert_eq!(b.segment_obs(0, t), &[t as u8, t as u8 + 1]);
    }
    assert_eq!(b.segment_obs(1, 0), &[7, 8]);
    assert_eq!(b.segment_obs(1, 1), &[8, 9]);
}

fn impala_config(unroll: usize, batch: usize, network: Network) -> Config {
    let mut cfg = Config::from_flags(["--algorithm=impala"]).unwrap();
    cfg.rule.segments.unroll = unroll;
    cfg.learner.batch_size = batch;
    cfg.net.network = network;
    cfg
}

fn learner(cfg: &Config, obs: ObsSpec, actions: usize) -> Learner {
    let net = crate::rules::net_spec(cfg, obs, &crate::env::ActionSpec::Discrete(actions)).unwrap();
    assert_eq!(net.head, HeadKind::ActorCritic);
    Learner::new(LearnerCore::new(cfg, net, obs, actions, Device::Cpu), cfg)
}

#[test]
fn the_learner_rebuilds_every_stacked_atari_observation_from_the_frames() {
    let obs = ObsSpec::Frames([4, 84, 84]);
    let cfg = impala_config(3, 2, Network::Nips);
    let mut l = learner(&cfg, obs, 3);
    let fb = 84 * 84;
    // Frame k is filled with k, plus a pattern so that no two pixels of it are alike.
    let frame = |k: u8| -> Vec<u8> {
        (0..fb)
            .map(|p| k.wrapping_mul(31) ^ (p % 251) as u8)
            .collect()
    };
    let frames: Vec<u8> = (0..7u8).flat_map(frame).collect();
    let mut batch = Batch::new(2, super::super::slot_layout(&cfg, obs, 0));
    for (len, terminal) in [(3, false), (2, true)] {
        batch
            .push_segment(&Segment {
                frames: &frames[..(4 + len) * fb],
                actions: &[0, 1, 2][..len],
                action_values: &[],
                rewards: &[0.0; 3][..len],
                behaviour_logp: &[0.0; 3][..len],
                terminal,
            })
            .unwrap();
    }
    assert_eq!(l.insert(&mut batch, 0), 5);
    let states = segment_states(&l.core, &l.held, 2);
    assert_eq!(states.size(), vec![8, 4, 84, 84]);
    for i in 0..2 {
        let len = l.held.lens[i] as usize;
        for t in 0..=len {
            let got: Vec<u8> =
                Vec::try_from(&states.get((i * 4 + t) as i64).contiguous().view([-1])).unwrap();
            let want: Vec<u8> = (t as u8..t as u8 + 4).flat_map(frame).collect();
            assert!(got == want, "segment {i}, state {t}");
            assert_eq!(got, l.held.segment_obs(i, t));
        }
    }
}

#[test]
fn on_policy_segments_have_importance_weights_of_one_and_an_update_learns() {
    tch::manual_seed(0);
    let obs = ObsSpec::Vector(4);
    let mut cfg = impala_config(5, 3, Network::Mlp);
    cfg.optim.lr = 1e-2;
    let mut l = learner(&cfg, obs, 2);
    let layout = super::super::slot_layout(&cfg, obs, 0);
    let mut batch = Batch::new(3, layout);
    let vecs: Vec<f32> = (0..6 * 4).map(|k| (k as f32 * 0.37).sin()).collect();
    let bytes: Vec<u8> = vecs.iter().flat_map(|v| v.to_ne_bytes()).collect();
    // The behaviour policy is the learner's own: log-probabilities from its current weights.
    let x = Tensor::from_slice(&vecs).view([6, 4]);
    let (logits, _) = l.core.model.policy_value(&x).unwrap();
    let logits: Vec<f32> = Vec::try_from(&logits.view([-1])).unwrap();
    let actions = [0u32, 1, 1, 0, 1];
    let logp: Vec<f32> = actions
        .iter()
        .enumerate()
        .map(|(t, a)| log_prob(&logits[2 * t..2 * t + 2], *a as usize))
        .collect();
    for (len, terminal) in [(5, false), (3, true), (1, false)] {
        batch
            .push_segment(&Segment {
                frames: &bytes[..(1 + len) * 16],
                actions: &actions[..len],
                action_values: &[],
                rewards: &[1.0; 5][..len],
                behaviour_logp: &logp[..len],
                terminal,
            })
            .unwrap();
    }
    assert_eq!(l.insert(&mut batch, 0), 9);
    assert!(l.ready(0));
    let before = l.core.model.forward(&x);
    let stats = l.update(1e-2).unwrap().unwrap();
    assert!(stats.loss.double_value(&[]).is_finite() && stats.q_mean.double_value(&[]).is_finite());
    assert!(!l.ready(0));
    let m = l.metrics();
    let rho = m.rho_mean.unwrap();
    assert!((rho - 1.0).abs() < 1e-5, "on-policy rho {rho}");
    assert!(m.entropy.unwrap() > 0.0 && m.entropy.unwrap() <= 2f64.ln() + 1e-6);
    assert!(m.policy_loss.is_some() && m.value_loss.is_some() && m.value_mean.is_some());
    // The weights moved.
    assert!(!before.allclose(&l.core.model.forward(&x), 1e-7, 1e-7, false));
    // The metrics reset with each row.
    assert_eq!(l.metrics().rho_mean, None);
}

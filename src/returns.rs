//! n-step returns, computed on the actor side.
//!
//! Following the n-step Q-learning of Mnih et al. (2016, Algorithm S2) in the form of the
//! Keras/Theano reference variant: an actor holds its last n transitions (s_i, a_i, r_i), with
//! rewards already clipped. When n are held, or the episode reached a terminal state, it
//! bootstraps
//!
//! ```text
//! R = 0                               if s_{t+n} is terminal
//! R = max_a Q(s_{t+n}, a; snapshot)   otherwise (also after a time-limit truncation)
//! ```
//!
//! and walks back `R = r_i + gamma * R`, so the most recent step gets a 1-step return and the
//! oldest an n-step return. Each (s_i, a_i, R_i) becomes one transition in the queue; the
//! learner regresses Q(s_i, a_i) towards R_i. The snapshot plays the role of the target network.
//!
//! SARSA (Rummery & Niranjan 1994; the paper's 1-step SARSA, and its n-step form) bootstraps
//! instead with Q(s_{t+n}, a_{t+n}) for the action the actor really takes there. A time-limit
//! truncation is not terminal: it bootstraps like any other cut of the segment.

/// Writes the discounted returns of `rewards` (oldest first) into `out`, bootstrapped with
/// `bootstrap` after the last reward: `out[i] = sum_{k=i}^{n-1} gamma^(k-i) r_k
/// + gamma^(n-i) bootstrap`. Pass `bootstrap = 0.0` when the last step ended in a terminal
/// state. `out` must have the same length as `rewards`.
pub fn n_step_returns(rewards: &[f32], bootstrap: f32, gamma: f32, out: &mut [f32]) {
    assert_eq!(rewards.len(), out.len(), "one return per reward");
    let mut ret = bootstrap;
    for (r, o) in rewards.iter().zip(out.iter_mut()).rev() {
        ret = r + gamma * ret;
        *o = ret;
    }
}

/// What a segment that did not end in a terminal state bootstraps with (pass 0 for a
/// terminal one), from the snapshot's outputs for the state after the segment (see
/// [`crate::model::AgentNetwork::act_outputs`]) and the action the actor takes there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// `max_a Q(s', a)`: Q-learning.
    MaxQ,
    /// `Q(s', a')` of the action `a'` taken next: SARSA.
    ActionTaken,
    /// `V(s')`, the last output after the policy's logits: the actor-critic rules.
    Value,
}

impl Bootstrap {
    /// The bootstrap value for outputs `next` `[num_actions]` (`[num_actions + 1]` for
    /// [`Bootstrap::Value`]) and the action `next_action` taken there.
    pub fn value(self, next: &[f32], next_action: usize) -> f32 {
        match self {
            Bootstrap::MaxQ => next.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            Bootstrap::ActionTaken => next[next_action],
            Bootstrap::Value => next[next.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn n_step_with_bootstrap_worked_by_hand() {
        // gamma 0.5, rewards 1, 0, 2, bootstrap 4:
        // R2 = 2 + 0.5*4 = 4; R1 = 0 + 0.5*4 = 2; R0 = 1 + 0.5*2 = 2
        let mut out = [0.0; 3];
        n_step_returns(&[1.0, 0.0, 2.0], 4.0, 0.5, &mut out);
        assert!(close(&out, &[2.0, 2.0, 4.0]), "{out:?}");
    }

    #[test]
    fn terminal_does_not_bootstrap() {
        // A segment ending in a terminal state gets bootstrap 0, whatever Q says.
        let mut out = [0.0; 2];
        n_step_returns(&[1.0, 1.0], 0.0, 0.9, &mut out);
        assert!(close(&out, &[1.9, 1.0]), "{out:?}");
    }

    #[test]
    fn q_learning_bootstraps_with_the_greedy_value() {
        let q = [3.0, 7.0, -1.0];
        // The action taken next does not matter to Q-learning.
        assert_eq!(Bootstrap::MaxQ.value(&q, 2), 7.0);
        let mut out = [0.0; 1];
        n_step_returns(&[-1.0], Bootstrap::MaxQ.value(&q, 0), 0.99, &mut out);
        assert!(close(&out, &[-1.0 + 0.99 * 7.0]), "{out:?}");
    }

    #[test]
    fn sarsa_bootstraps_with_the_action_taken() {
        let q = [3.0, 7.0, -1.0];
        assert_eq!(Bootstrap::ActionTaken.value(&q, 0), 3.0);
        assert_eq!(Bootstrap::ActionTaken.value(&q, 2), -1.0);
        // 1-step SARSA target: r + gamma * Q(s', a') = 0.5 + 0.9 * -1 = -0.4
        let mut out = [0.0; 1];
        n_step_returns(&[0.5], Bootstrap::ActionTaken.value(&q, 2), 0.9, &mut out);
        assert!(close(&out, &[-0.4]), "{out:?}");
    }

    #[test]
    fn truncation_bootstraps_but_termination_does_not() {
        // CartPole: reward 1 per step, gamma 0.9, the last state valued 10 by the snapshot.
        let q = [10.0, 4.0];
        let (mut truncated, mut terminated) = ([0.0; 2], [0.0; 2]);
        n_step_returns(
            &[1.0, 1.0],
            Bootstrap::MaxQ.value(&q, 1),
            0.9,
            &mut truncated,
        );
        n_step_returns(&[1.0, 1.0], 0.0, 0.9, &mut terminated);
        // truncated: R1 = 1 + 0.9*10 = 10, R0 = 1 + 0.9*10 = 10; terminated: 1.9, 1
        assert!(close(&truncated, &[10.0, 10.0]), "{truncated:?}");
        assert!(close(&terminated, &[1.9, 1.0]), "{terminated:?}");
        // SARSA after a truncation takes the next action's value: R1 = 1 + 0.9*4 = 4.6.
        let mut sarsa = [0.0; 1];
        n_step_returns(&[1.0], Bootstrap::ActionTaken.value(&q, 1), 0.9, &mut sarsa);
        assert!(close(&sarsa, &[4.6]), "{sarsa:?}");
    }

    #[test]
    fn one_step_is_the_td_target() {
        let mut out = [0.0; 1];
        n_step_returns(&[0.5], 2.0, 0.99, &mut out);
        assert!(close(&out, &[0.5 + 0.99 * 2.0]));
    }

    #[test]
    fn five_step_matches_the_closed_form() {
        let r = [1.0f32, -1.0, 0.0, 1.0, 1.0];
        let (g, b) = (0.99f32, 2.5f32);
        let mut out = [0.0; 5];
        n_step_returns(&r, b, g, &mut out);
        for (i, got) in out.iter().enumerate() {
            let mut expect = 0.0f32;
            for (k, rk) in r.iter().enumerate().skip(i) {
                expect += g.powi((k - i) as i32) * rk;
            }
            expect += g.powi((5 - i) as i32) * b;
            assert!((got - expect).abs() < 1e-5, "i={i}: {} vs {expect}", out[i]);
        }
    }
}

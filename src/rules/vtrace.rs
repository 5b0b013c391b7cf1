//! V-trace targets (Espeholt et al. 2018, "IMPALA", section 4.1), for one segment of `n` steps
//! acted by a behaviour policy mu and learned by the target policy pi.
//!
//! With `rho_t = pi(a_t|x_t) / mu(a_t|x_t)`, clipped `rho_t' = min(rho_bar, rho_t)` and
//! `c_t = min(c_bar, rho_t)`, per-step discounts `gamma_t` (0 after a terminal state) and
//! `delta_t = rho_t' (r_t + gamma_t V(x_t+1) - V(x_t))`, the n-step V-trace target is
//!
//! ```text
//! v_s = V(x_s) + sum_{t=s}^{n-1} (prod_{k=s}^{t-1} gamma_k c_k) delta_t        (eq. 1)
//! ```
//!
//! computed backwards as `v_s - V(x_s) = delta_s + gamma_s c_s (v_s+1 - V(x_s+1))` with
//! `v_n = V(x_n)` (remark 1), and the policy-gradient advantage is
//! `rho_s'' (r_s + gamma_s v_s+1 - V(x_s))` with `rho_s'' = min(pg_rho_bar, rho_s)` (section
//! 4.2; the paper and its implementation use `pg_rho_bar = rho_bar`). A terminal x_n is given
//! `gamma_n-1 = 0`, so nothing is bootstrapped past it.
//!
//! Values are computed with the learner's current weights; nothing here is differentiated.

/// The V-trace targets and policy-gradient advantages of one segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VTrace {
    /// `v_s`, one per step `[n]`: the value targets.
    pub vs: Vec<f32>,
    /// `rho_s'' (r_s + gamma_s v_s+1 - V(x_s))` `[n]`: the policy gradient's advantages.
    pub pg_advantages: Vec<f32>,
    /// `min(rho_bar, rho_s)` `[n]`: the clipped importance weights (for the metrics).
    pub clipped_rhos: Vec<f32>,
}

/// The clipping thresholds: `rho_bar` (the value targets' importance weights), `c_bar` (the
/// traces) and `pg_rho_bar` (the policy gradient's); `f32::INFINITY` clips nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    pub rho_bar: f32,
    pub c_bar: f32,
    pub pg_rho_bar: f32,
}

/// V-trace of one segment of `n = rewards.len()` steps: `log_rhos[t] = log pi(a_t|x_t) -
/// log mu(a_t|x_t)`, `discounts[t]` = gamma_t (0 when x_t+1 is terminal), `values` = V(x_0..x_n)
/// (`n + 1` entries: the last is the bootstrap). Panics if the lengths disagree.
pub fn vtrace(
    log_rhos: &[f32],
    discounts: &[f32],
    rewards: &[f32],
    values: &[f32],
    clip: Clip,
) -> VTrace {
    let n = rewards.len();
    assert!(
        log_rhos.len() == n && discounts.len() == n && values.len() == n + 1,
        "vtrace: {n} rewards, {} log-rhos, {} discounts, {} values (want n, n, n + 1)",
        log_rhos.len(),
        discounts.len(),
        values.len()
    );
    let rhos: Vec<f32> = log_rhos.iter().map(|l| l.exp()).collect();
    let clipped_rhos: Vec<f32> = rhos.iter().map(|r| r.min(clip.rho_bar)).collect();
    let mut vs = vec![0f32; n];
    // acc = v_t+1 - V(x_t+1); 0 past the end (v_n = V(x_n)).
    let mut acc = 0f32;
    for t in (0..n).rev() {
        let delta = clipped_rhos[t] * (rewards[t] + discounts[t] * values[t + 1] - values[t]);
        acc = delta + discounts[t] * rhos[t].min(clip.c_bar) * acc;
        vs[t] = values[t] + acc;
    }
    let pg_advantages = (0..n)
        .map(|t| {
            let next = if t + 1 < n { vs[t + 1] } else { values[n] };
            rhos[t].min(clip.pg_rho_bar) * (rewards[t] + discounts[t] * next - values[t])
        })
        .collect();
    VTrace {
        vs,
        pg_advantages,
        clipped_rhos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Equation (1) summed directly, term by term.
    fn slow_vs(
        log_rhos: &[f32],
        discounts: &[f32],
        rewards: &[f32],
        values: &[f32],
        rho_bar: f64,
        c_bar: f64,
    ) -> Vec<f64> {
        let n = rewards.len();
        let rho = |t: usize| (log_rhos[t] as f64).exp();
        (0..n)
            .map(|s| {
                let mut v = values[s] as f64;
                for t in s..n {
                    let weight: f64 = (s..t)
                        .map(|k| discounts[k] as f64 * rho(k).min(c_bar))
                        .product();
                    let delta = rho(t).min(rho_bar)
                        * (rewards[t] as f64 + discounts[t] as f64 * values[t + 1] as f64
                            - values[t] as f64);
                    v += weight * delta;
                }
                v
            })
            .collect()
    }

    struct Case {
        log_rhos: Vec<f32>,
        discounts: Vec<f32>,
        rewards: Vec<f32>,
        values: Vec<f32>,
    }

    fn random_case(rng: &mut StdRng, n: usize, terminal_at: Option<usize>) -> Case {
        let mut discounts = vec![0.9f32; n];
        if let Some(t) = terminal_at {
            discounts[t] = 0.0;
        }
        Case {
            log_rhos: (0..n).map(|_| rng.gen_range(-2.0..1.5)).collect(),
            discounts,
            rewards: (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            values: (0..=n).map(|_| rng.gen_range(-3.0..3.0)).collect(),
        }
    }

    #[test]
    fn matches_the_papers_sum_for_random_segments_with_terminals_inside() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1, 2, 5, 20] {
            for terminal in [None, Some(0), Some(n / 2), Some(n - 1)] {
                for (rho_bar, c_bar) in [(1.0, 1.0), (2.0, 0.5), (f32::INFINITY, f32::INFINITY)] {
                    let c = random_case(&mut rng, n, terminal);
                    let clip = Clip {
                        rho_bar,
                        c_bar,
                        pg_rho_bar: rho_bar,
                    };
                    let got = vtrace(&c.log_rhos, &c.discounts, &c.rewards, &c.values, clip);
                    let want = slow_vs(
                        &c.log_rhos,
                        &c.discounts,
                        &c.rewards,
                        &c.values,
                        rho_bar as f64,
                        c_bar as f64,
                    );
                    for t in 0..n {
                        assert!(
                            (got.vs[t] as f64 - want[t]).abs() < 1e-4 * (1.0 + want[t].abs()),
                            "n {n}, terminal {terminal:?}, clip {clip:?}, t {t}: {} vs {}",
                            got.vs[t],
                            want[t]
                        );
                        // The advantage from the same targets, by hand.
                        let next = if t + 1 < n {
                            want[t + 1]
                        } else {
                            c.values[n] as f64
                        };
                        let rho = (c.log_rhos[t] as f64).exp().min(rho_bar as f64);
                        let adv = rho
                            * (c.rewards[t] as f64 + c.discounts[t] as f64 * next
                                - c.values[t] as f64);
                        assert!(
                            (got.pg_advantages[t] as f64 - adv).abs() < 1e-4 * (1.0 + adv.abs()),
                            "advantage at t {t}: {} vs {adv}",
                            got.pg_advantages[t]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn on_policy_without_clipping_it_is_the_n_step_return() {
        let mut rng = StdRng::seed_from_u64(3);
        for n in [1, 3, 20] {
            for terminal in [None, Some(n - 1)] {
                let mut c = random_case(&mut rng, n, terminal);
                c.log_rhos = vec![0.0; n];
                let inf = f32::INFINITY;
                let clip = Clip {
                    rho_bar: inf,
                    c_bar: inf,
                    pg_rho_bar: inf,
                };
                let got = vtrace(&c.log_rhos, &c.discounts, &c.rewards, &c.values, clip);
                // G_s = r_s + gamma_s G_s+1, G_n = V(x_n): the n-step return.
                let mut g = c.values[n] as f64;
                for t in (0..n).rev() {
                    g = c.rewards[t] as f64 + c.discounts[t] as f64 * g;
                    assert!(
                        (got.vs[t] as f64 - g).abs() < 1e-4,
                        "t {t}: {} vs {g}",
                        got.vs[t]
                    );
                }
            }
        }
    }

    #[test]
    fn a_terminal_stops_the_bootstrap_and_clipping_caps_the_weights() {
        // One step into a terminal state: v_0 = V + rho' (r - V), whatever V(x_1) is.
        let clip = Clip {
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
        };
        let got = vtrace(&[2f32.ln()], &[0.0], &[1.0], &[0.5, 100.0], clip);
        assert!((got.vs[0] - 1.0).abs() < 1e-6, "{got:?}");
        assert_eq!(got.clipped_rhos, vec![1.0]);
        assert!((got.pg_advantages[0] - 0.5).abs() < 1e-6);
        // Off-policy (rho = 0.5, below the clip): half the correction.
        let got = vtrace(&[0.5f32.ln()], &[0.0], &[1.0], &[0.5, 100.0], clip);
        assert!((got.vs[0] - 0.75).abs() < 1e-6, "{got:?}");
        assert!((got.clipped_rhos[0] - 0.5).abs() < 1e-6);
    }
}

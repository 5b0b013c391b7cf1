//! Linear schedules over the global frame count: epsilon annealing for the actors and learning
//! rate annealing for the learner.
//!
//! Both follow "Asynchronous Methods for Deep Reinforcement Learning" (Mnih et al. 2016, sec. 8):
//! epsilon is annealed linearly from 1 to each actor's final value over the first frames of
//! training, and the learning rate is annealed linearly to 0. Frames are emulator frames
//! (agent steps x frame skip), counted over all actors.

/// A value that moves linearly from `start` to `end` over `duration` frames, then stays at `end`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    pub start: f64,
    pub end: f64,
    /// Frames over which the value moves; 0 means the value is `end` from the first frame.
    pub duration: u64,
}

impl LinearSchedule {
    pub fn new(start: f64, end: f64, duration: u64) -> Self {
        LinearSchedule {
            start,
            end,
            duration,
        }
    }

    /// The value after `frames` emulator frames.
    pub fn value(&self, frames: u64) -> f64 {
        if self.duration == 0 || frames >= self.duration {
            return self.end;
        }
        let progress = frames as f64 / self.duration as f64;
        self.start + (self.end - self.start) * progress
    }
}

/// Epsilon of an actor whose final exploration rate is `final_epsilon`, annealed from 1.0 over
/// `decay_frames` frames of the global frame counter.
pub fn epsilon(final_epsilon: f64, decay_frames: u64, frames: u64) -> f64 {
    LinearSchedule::new(1.0, final_epsilon, decay_frames).value(frames)
}

/// Learning rate annealed linearly from `initial` to 0 over `decay_frames` frames.
pub fn learning_rate(initial: f64, decay_frames: u64, frames: u64) -> f64 {
    LinearSchedule::new(initial, 0.0, decay_frames).value(frames)
}

/// Picks an actor's final epsilon from `values` with probabilities `probs` (same length, summing
/// to 1), given a uniform sample `u` in [0, 1). The paper draws from {0.1, 0.01, 0.5} with
/// probabilities {0.4, 0.3, 0.3}.
pub fn sample_final_epsilon(values: &[f64], probs: &[f64], u: f64) -> f64 {
    let mut acc = 0.0;
    for (v, p) in values.iter().zip(probs) {
        acc += p;
        if u < acc {
            return *v;
        }
    }
    *values
        .last()
        .expect("validated: at least one final epsilon")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_anneals_linearly_then_stays() {
        assert_eq!(epsilon(0.1, 1000, 0), 1.0);
        assert!((epsilon(0.1, 1000, 500) - 0.55).abs() < 1e-12);
        assert!((epsilon(0.1, 1000, 250) - 0.775).abs() < 1e-12);
        assert_eq!(epsilon(0.1, 1000, 1000), 0.1);
        assert_eq!(epsilon(0.1, 1000, 5_000_000), 0.1);
        assert_eq!(epsilon(0.01, 0, 0), 0.01);
    }

    #[test]
    fn learning_rate_anneals_to_zero() {
        assert_eq!(learning_rate(1e-3, 4000, 0), 1e-3);
        assert!((learning_rate(1e-3, 4000, 1000) - 7.5e-4).abs() < 1e-15);
        assert_eq!(learning_rate(1e-3, 4000, 4000), 0.0);
        assert_eq!(learning_rate(1e-3, 4000, 9000), 0.0);
    }

    #[test]
    fn final_epsilon_follows_the_probabilities() {
        let v = [0.1, 0.01, 0.5];
        let p = [0.4, 0.3, 0.3];
        assert_eq!(sample_final_epsilon(&v, &p, 0.0), 0.1);
        assert_eq!(sample_final_epsilon(&v, &p, 0.39), 0.1);
        assert_eq!(sample_final_epsilon(&v, &p, 0.41), 0.01);
        assert_eq!(sample_final_epsilon(&v, &p, 0.69), 0.01);
        assert_eq!(sample_final_epsilon(&v, &p, 0.71), 0.5);
        assert_eq!(sample_final_epsilon(&v, &p, 0.999_999), 0.5);
    }
}

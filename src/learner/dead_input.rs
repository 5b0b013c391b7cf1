//! The warning that a run's input layer has stopped learning: when no update changes any
//! weight of the layer that reads the observation ([`crate::model::AgentNetwork::input_layer`])
//! for [`WINDOW_UPDATES`] updates, every ReLU after it is inactive on every input the learner
//! trains on ("dead ReLUs"; Lu et al. 2019), the network's outputs no longer depend on the
//! observation, and the run stays flat however long it trains: a Pong run of a3c kept a
//! uniform policy, and one of n-step Q constant Q-values, for 11 million frames
//! (docs/RESULTS.md, "Pong: why a run stays flat").
//!
//! The test is that the weights are bit for bit what they were, which needs no threshold and
//! holds for every optimizer and wherever its state started: RMSProp and Adam move a weight
//! whenever its gradient (for Adam, its first moment) is not zero. `scripts/dead-units --since`
//! counts the same between two checkpoints.

use tch::Tensor;

/// Updates over which every weight of the input layer must stay unchanged for the warning:
/// about 1.3 million frames of a3c on Pong (batches of 64 segments of 5 steps). A live layer
/// changes at every update.
pub(super) const WINDOW_UPDATES: u64 = 1_000;

/// Looks at the input layer's weights once per metrics row and says, once, when none of its
/// units changed over a window of at least [`WINDOW_UPDATES`] updates.
pub(super) struct InputLayerWatch {
    /// The weight's parameter name (`conv1.weight`, `fc1.weight`).
    layer: String,
    /// The update count and the weights (host copy) where the current window started.
    start: Option<(u64, Vec<f32>)>,
    warned: bool,
}

impl InputLayerWatch {
    pub(super) fn new(layer: String) -> Self {
        InputLayerWatch {
            layer,
            start: None,
            warned: false,
        }
    }

    /// Called with the update count, the frames trained and the network's parameters: the
    /// warning line the first time a window of [`WINDOW_UPDATES`] or more updates ends with
    /// every unit (row) of the input layer unchanged, else `None`. Copies the layer's weights
    /// to the host when a window starts or ends, not on the calls between.
    pub(super) fn look(
        &mut self,
        updates: u64,
        frames: u64,
        params: &[(String, Tensor)],
    ) -> Option<String> {
        if self.warned {
            return None;
        }
        if let Some((since, _)) = &self.start {
            if updates < since + WINDOW_UPDATES {
                return None;
            }
        }
        let weight = params.iter().find(|(n, _)| *n == self.layer)?.1.detach();
        let units = usize::try_from(*weight.size().first()?).ok()?;
        let now = Vec::<f32>::try_from(&weight.to_device(tch::Device::Cpu).reshape([-1])).ok()?;
        let since = match &self.start {
            Some((since, before)) if units > 0 && unchanged_units(before, &now, units) == units => {
                *since
            }
            _ => {
                // No window yet, or one in which a unit moved: the next window starts here.
                self.start = Some((updates, now));
                return None;
            }
        };
        self.warned = true;
        Some(format!(
            "warning: at {frames} frames ({updates} updates), no update since update {since} \
             has changed any of the {units} units of {}: the network's outputs no longer \
             depend on the observation, and this run is unlikely to learn (dead ReLUs; see \
             scripts/dead-units and docs/RESULTS.md, \"Pong: why a run stays flat\")",
            self.layer
        ))
    }
}

/// How many of `units` rows (equal parts of both slices, a unit's incoming weights) are bit
/// for bit the same in `before` and `after`; slices of different lengths have none the same.
pub(super) fn unchanged_units(before: &[f32], after: &[f32], units: usize) -> usize {
    if before.len() != after.len() || units == 0 || before.is_empty() {
        return 0;
    }
    let per = before.len().div_ceil(units);
    before
        .chunks(per)
        .zip(after.chunks(per))
        .filter(|(b, a)| {
            b.iter()
                .zip(a.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits())
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_units_are_the_rows_equal_bit_for_bit() {
        let before = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
        let mut after = before;
        assert_eq!(unchanged_units(&before, &after, 3), 3);
        after[3] = f32::from_bits(after[3].to_bits() + 1); // the smallest move of unit 1
        assert_eq!(unchanged_units(&before, &after, 3), 2);
        after[0] = -0.1;
        assert_eq!(unchanged_units(&before, &after, 3), 1);
        assert_eq!(unchanged_units(&before, &after[..4], 2), 0, "other shapes");
        assert_eq!(unchanged_units(&[], &[], 3), 0);
    }

    /// The warning comes once, only after a whole window without a change to any unit; a
    /// window in which one unit moved starts the next one.
    #[test]
    fn warns_once_when_no_unit_changed_for_a_window() {
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let params = vec![
            ("conv1.weight".to_string(), w.shallow_clone()),
            (
                "fc.weight".to_string(),
                Tensor::zeros([1], tch::kind::FLOAT_CPU),
            ),
        ];
        let mut watch = InputLayerWatch::new("conv1.weight".into());
        assert_eq!(
            watch.look(0, 0, &params),
            None,
            "the first look starts a window"
        );
        assert_eq!(
            watch.look(WINDOW_UPDATES - 1, 10, &params),
            None,
            "too soon"
        );
        // Unit 1 moves: the window ends without a warning and the next starts here.
        let _ = w.narrow(0, 1, 1).detach().fill_(5.0);
        assert_eq!(watch.look(WINDOW_UPDATES, 20, &params), None);
        assert_eq!(
            watch.look(2 * WINDOW_UPDATES - 1, 30, &params),
            None,
            "too soon"
        );
        let line = watch
            .look(2 * WINDOW_UPDATES, 40, &params)
            .expect("a whole window unchanged");
        assert!(
            line.contains("at 40 frames (2000 updates)")
                && line.contains(&format!("since update {WINDOW_UPDATES}"))
                && line.contains("the 2 units of conv1.weight"),
            "{line}"
        );
        assert_eq!(watch.look(5 * WINDOW_UPDATES, 50, &params), None, "once");

        // A network without the layer: nothing to say.
        let mut watch = InputLayerWatch::new("fc1.weight".into());
        assert_eq!(watch.look(0, 0, &params), None);
        assert_eq!(watch.look(10 * WINDOW_UPDATES, 0, &params), None);
    }
}

//! Character / background accuracy and F1, exactly as the original StoryGPT-V evaluator
//! (`eval/eval_cls.py`, `eval_model`) computes them:
//!
//! - a label is predicted present when `round(sigmoid(logit)) == 1`, with the sigmoid in f32
//!   and PyTorch's round-half-to-even (so a logit of exactly 0, or one so small that the f32
//!   sigmoid is exactly 0.5, is *absent*);
//! - **Acc** = 100 · (frames whose whole predicted multi-hot vector equals the ground truth) /
//!   frames;
//! - **F1** = micro-F1 × 100 over all labels of all frames: recall = TP / GT positives,
//!   precision = TP / predicted positives, F1 = 2RP / (R + P).
//!
//! Precision and F1 follow the original's float32 arithmetic exactly (see
//! [`MultiLabelCounts::scores`]); [`MultiLabelCounts::f1_f64`] gives the exact value. The
//! original divides by zero when nothing is predicted (or nothing is present) and reports NaN;
//! here those ratios are 0 and F1 is 0, which is scikit-learn's `zero_division=0`.

use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

/// `torch.round(torch.sigmoid(logit))` in f32: present iff the f32 sigmoid is above 0.5.
pub fn predict_label(logit: f32) -> bool {
    let p = 1.0f32 / (1.0 + (-logit).exp());
    // round-half-to-even: 0.5 → 0, anything above → 1 (p ≤ 1 < 1.5).
    p > 0.5
}

/// Predictions for a row-major `[n, labels]` block of logits.
pub fn predict(logits: &[f32], num_labels: usize) -> Vec<Vec<bool>> {
    logits
        .chunks(num_labels.max(1))
        .map(|row| row.iter().map(|&z| predict_label(z)).collect())
        .collect()
}

/// Counts behind [`MultiLabelScores`], so batches (or stories) can be accumulated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiLabelCounts {
    /// Frames seen.
    pub frames: usize,
    /// Frames whose whole vector was right.
    pub exact: usize,
    /// Labels present in the ground truth.
    pub gt_positives: usize,
    /// Labels predicted present.
    pub pred_positives: usize,
    /// Labels present and predicted present.
    pub true_positives: usize,
}

impl MultiLabelCounts {
    /// Adds frames. Every prediction must have the ground truth's length.
    pub fn add(&mut self, preds: &[Vec<bool>], truth: &[Vec<bool>]) -> Result<()> {
        if preds.len() != truth.len() {
            return Err(Error::InvalidInput(format!(
                "{} predictions for {} ground-truth frames",
                preds.len(),
                truth.len()
            )));
        }
        for (i, (p, t)) in preds.iter().zip(truth).enumerate() {
            if p.len() != t.len() {
                return Err(Error::InputShape {
                    what: format!("prediction of frame {i}"),
                    expected: format!("{} labels, like its ground truth", t.len()),
                    found: vec![p.len()],
                });
            }
            self.frames += 1;
            self.exact += usize::from(p == t);
            for (&pp, &tt) in p.iter().zip(t) {
                self.gt_positives += usize::from(tt);
                self.pred_positives += usize::from(pp);
                self.true_positives += usize::from(pp && tt);
            }
        }
        Ok(())
    }

    /// The scores (see the module docs), with the original's arithmetic: precision and F1
    /// come out of PyTorch in float32 there (`TP·100 / torch.sum(preds)` is a float32 tensor),
    /// and are reproduced bit for bit.
    pub fn scores(&self) -> MultiLabelScores {
        let recall = if self.gt_positives == 0 {
            0.0
        } else {
            self.true_positives as f64 * 100.0 / self.gt_positives as f64
        };
        // `np.int64 * 100.0 / float32 tensor` = `tensor.reciprocal() * x`, in f32.
        let precision32 = if self.pred_positives == 0 {
            0.0f32
        } else {
            (1.0f32 / self.pred_positives as f32) * (self.true_positives as f64 * 100.0) as f32
        };
        // `2 * recall * precision / (recall + precision)` with precision a float32 tensor.
        let denom = recall as f32 + precision32;
        let f1 = if denom == 0.0 {
            0.0
        } else {
            f64::from((2.0 * recall) as f32 * precision32 / denom)
        };
        let accuracy = if self.frames == 0 {
            0.0
        } else {
            self.exact as f64 * 100.0 / self.frames as f64
        };
        MultiLabelScores {
            accuracy,
            f1,
            precision: f64::from(precision32),
            recall,
            frames: self.frames,
        }
    }

    /// Micro-F1 × 100 in exact f64 arithmetic (scikit-learn's `f1_score(average="micro",
    /// zero_division=0)`), which differs from the original's float32 value from about the 7th
    /// digit.
    pub fn f1_f64(&self) -> f64 {
        let denom = self.gt_positives + self.pred_positives;
        if denom == 0 {
            0.0
        } else {
            200.0 * self.true_positives as f64 / denom as f64
        }
    }
}

/// Exact-match accuracy and micro scores, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelScores {
    /// % of frames whose whole multi-hot vector is right (the paper's Char-Acc / BG-Acc).
    pub accuracy: f64,
    /// Micro-F1 × 100 (Char-F1 / BG-F1).
    pub f1: f64,
    /// Micro precision × 100.
    pub precision: f64,
    /// Micro recall × 100.
    pub recall: f64,
    /// Frames scored.
    pub frames: usize,
}

/// Scores predictions against ground truth in one go.
pub fn score(preds: &[Vec<bool>], truth: &[Vec<bool>]) -> Result<MultiLabelScores> {
    let mut c = MultiLabelCounts::default();
    c.add(preds, truth)?;
    Ok(c.scores())
}

/// Per-label accuracy (fraction of frames where label `j` is right), the original's
/// "Accuracy by Class".
pub fn per_label_accuracy(preds: &[Vec<bool>], truth: &[Vec<bool>]) -> Vec<f64> {
    let l = truth.first().map_or(0, Vec::len);
    let mut right = vec![0usize; l];
    for (p, t) in preds.iter().zip(truth) {
        for j in 0..l.min(p.len()).min(t.len()) {
            right[j] += usize::from(p[j] == t[j]);
        }
    }
    let n = truth.len().max(1) as f64;
    right.iter().map(|&r| r as f64 / n).collect()
}

/// Where exact-set accuracy is lost: frames by how many labels their ground truth has, and each
/// wrong frame as a missing label (prediction a strict subset of the truth), an extra one (a
/// strict superset) or a swap (anything else).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetErrors {
    /// `(ground-truth label count, frames, exactly right)`, by count.
    pub by_count: Vec<(usize, usize, usize)>,
    /// Wrong frames that miss labels and add none.
    pub missing: usize,
    /// Wrong frames that add labels and miss none.
    pub extra: usize,
    /// Other wrong frames.
    pub swapped: usize,
}

impl SetErrors {
    /// Sorts each frame. Prediction and truth of a frame must have the same length.
    pub fn of(preds: &[Vec<bool>], truth: &[Vec<bool>]) -> Result<Self> {
        MultiLabelCounts::default().add(preds, truth)?;
        let mut by_count = std::collections::BTreeMap::<usize, (usize, usize)>::new();
        let mut e = SetErrors::default();
        for (p, t) in preds.iter().zip(truth) {
            let slot = by_count
                .entry(t.iter().filter(|&&x| x).count())
                .or_default();
            slot.0 += 1;
            if p == t {
                slot.1 += 1;
                continue;
            }
            let misses = p.iter().zip(t).any(|(&pp, &tt)| tt && !pp);
            let adds = p.iter().zip(t).any(|(&pp, &tt)| pp && !tt);
            match (misses, adds) {
                (true, false) => e.missing += 1,
                (false, true) => e.extra += 1,
                _ => e.swapped += 1,
            }
        }
        e.by_count = by_count.into_iter().map(|(k, (n, r))| (k, n, r)).collect();
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_errors_sort_wrong_frames_into_missing_extra_and_swapped() {
        let v = |s: &str| s.chars().map(|c| c == '1').collect::<Vec<bool>>();
        let truth = [v("110"), v("110"), v("100"), v("100"), v("011"), v("000")];
        let preds = [v("110"), v("100"), v("110"), v("010"), v("011"), v("000")];
        let e = SetErrors::of(&preds, &truth).unwrap();
        assert_eq!(e.by_count, vec![(0, 1, 1), (1, 2, 0), (2, 3, 2)]);
        assert_eq!((e.missing, e.extra, e.swapped), (1, 1, 1));
        assert!(SetErrors::of(&preds[..2], &truth).is_err());
        assert!(SetErrors::of(&[v("11")], &[v("110")]).is_err());
    }

    #[test]
    fn rounding_is_half_to_even_in_f32() {
        assert!(!predict_label(0.0));
        assert!(!predict_label(1e-9)); // f32 sigmoid rounds to exactly 0.5
        assert!(predict_label(1e-3));
        assert!(!predict_label(-1e-3));
    }

    #[test]
    fn hand_counted_example() {
        let t = |v: &[u8]| v.iter().map(|&x| x == 1).collect::<Vec<_>>();
        let truth = vec![t(&[1, 0, 0]), t(&[1, 1, 0]), t(&[0, 0, 1])];
        let preds = vec![t(&[1, 0, 0]), t(&[1, 0, 0]), t(&[0, 1, 1])];
        let s = score(&preds, &truth).unwrap();
        // exact: frames 0 only → 33.3 %; TP = 3, GT = 4, PRED = 4 → P = R = F1 = 75
        assert!((s.accuracy - 100.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 75.0).abs() < 1e-12);
        assert_eq!(
            per_label_accuracy(&preds, &truth),
            vec![1.0, 1.0 / 3.0, 1.0]
        );
    }

    #[test]
    fn nothing_predicted_gives_zero_f1_and_mismatched_lengths_are_errors() {
        let s = score(&[vec![false, false]], &[vec![true, false]]).unwrap();
        assert_eq!((s.accuracy, s.f1), (0.0, 0.0));
        assert!(score(&[vec![false]], &[vec![true, false]]).is_err());
        assert!(score(&[], &[vec![true]]).is_err());
    }
}

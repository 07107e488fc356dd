//! Accuracy metrics: top-k counts, 95% Wilson score intervals and the claim verdict.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// An accuracy with its 95% Wilson interval, in percent (the report's contract).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub percent: f64,
    pub ci95: [f64; 2],
    pub correct: usize,
    pub evaluated: usize,
}

impl Accuracy {
    /// `correct` out of `evaluated`; `None` when nothing was evaluated.
    pub fn new(correct: usize, evaluated: usize) -> Option<Accuracy> {
        if evaluated == 0 {
            return None;
        }
        let (low, high) = wilson_interval(correct, evaluated);
        Some(Accuracy {
            percent: 100.0 * correct as f64 / evaluated as f64,
            ci95: [100.0 * low, 100.0 * high],
            correct,
            evaluated,
        })
    }

    /// Half the interval's width, in points: what this slice can resolve.
    pub fn half_width(&self) -> f64 {
        (self.ci95[1] - self.ci95[0]) / 2.0
    }
}

/// 95% Wilson score interval for `k` successes out of `n`, as fractions.
pub fn wilson_interval(k: usize, n: usize) -> (f64, f64) {
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n_f;
    let center = (p + z2 / (2.0 * n_f)) / denom;
    let half = Z95 * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    // At p = 0 or 1 the bound equals p exactly; rounding must not move it.
    let low = if k == 0 { 0.0 } else { (center - half).max(0.0) };
    let high = if k == n { 1.0 } else { (center + half).min(1.0) };
    (low, high)
}

/// Where a claim stands against a measured interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStanding {
    /// The claim lies inside the 95% interval.
    Inside,
    /// The claim lies below the interval: the model measured better than claimed.
    BelowInterval,
    /// The claim lies above the interval: the model measured worse than claimed.
    AboveInterval,
}

/// The verdict on a claim for one form: standing and a plain sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub claim_top1: f64,
    pub standing: ClaimStanding,
    /// Whether the claim is reproduced: the measured interval contains it.
    pub reproduced: bool,
    pub text: String,
}

/// Compares a claimed top-1 (percent) with a measured one.
pub fn verdict(claim_top1: f64, measured: &Accuracy, form: &str) -> Verdict {
    let [low, high] = measured.ci95;
    let standing = if claim_top1 < low {
        ClaimStanding::BelowInterval
    } else if claim_top1 > high {
        ClaimStanding::AboveInterval
    } else {
        ClaimStanding::Inside
    };
    let measured_text = format!(
        "{form} top-1 {:.2}% (95% CI {:.2}-{:.2}, {} images, resolution about ±{:.1} points)",
        measured.percent,
        low,
        high,
        measured.evaluated,
        measured.half_width()
    );
    let text = match standing {
        ClaimStanding::Inside => format!(
            "claim {claim_top1:.1}% lies inside the measured interval: {measured_text}; consistent \
             with the claim at this slice's resolution"
        ),
        ClaimStanding::BelowInterval => format!(
            "claim {claim_top1:.1}% lies {:.1} points BELOW the measured interval: \
             {measured_text}. The model scored far above its claim here, which says this slice \
             is easier than the full validation set (or differs from it), not that the claim is \
             confirmed",
            low - claim_top1
        ),
        ClaimStanding::AboveInterval => format!(
            "claim {claim_top1:.1}% NOT reproduced: it lies {:.1} points ABOVE the measured \
             interval: {measured_text}",
            claim_top1 - high
        ),
    };
    Verdict { claim_top1, standing, reproduced: standing == ClaimStanding::Inside, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Reference: Wilson's closed form evaluated independently in Python for 748/900:
    /// (0.805238, 0.854169).
    #[test]
    fn wilson_matches_a_published_implementation() {
        let (lo, hi) = wilson_interval(748, 900);
        assert!(close(lo, 0.805238, 1e-6) && close(hi, 0.854169, 1e-6), "{lo} {hi}");
    }

    #[test]
    fn wilson_stays_inside_zero_and_one() {
        let (lo, hi) = wilson_interval(0, 10);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.2 && hi < 0.35);
        let (lo, hi) = wilson_interval(10, 10);
        assert!(lo > 0.65 && hi == 1.0);
    }

    #[test]
    fn resolution_at_900_images_is_about_2_5_points() {
        let acc = Accuracy::new(738, 900).unwrap();
        assert!(close(acc.half_width(), 2.5, 0.2), "{}", acc.half_width());
    }

    #[test]
    fn verdicts_say_which_side() {
        let acc = Accuracy::new(748, 900).unwrap();
        let v = verdict(75.1, &acc, "f32");
        assert_eq!(v.standing, ClaimStanding::BelowInterval);
        assert!(!v.reproduced && v.text.contains("BELOW"));
        assert_eq!(verdict(83.0, &acc, "f32").standing, ClaimStanding::Inside);
        assert_eq!(verdict(90.0, &acc, "f32").standing, ClaimStanding::AboveInterval);
    }

    #[test]
    fn nothing_evaluated_is_no_accuracy() {
        assert!(Accuracy::new(0, 0).is_none());
    }
}

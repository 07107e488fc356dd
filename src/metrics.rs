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
             {measured_text}. The model scored above its claim here, which says this slice is \
             easier than the full validation set (or differs from it), not that the claim is \
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

/// A form compared with f32 on the same images (a paired comparison).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    pub images: usize,
    /// Share of images whose top-1 class is the same in both forms, percent.
    pub top1_agreement_percent: f64,
    /// Images f32 classified right and this form wrong.
    pub f32_right_form_wrong: usize,
    /// Images f32 classified wrong and this form right.
    pub f32_wrong_form_right: usize,
    /// top-1 of f32 minus top-1 of this form, points (positive: this form lost accuracy);
    /// `null` without labels.
    pub top1_drop_points: Option<f64>,
    /// 95% interval of the drop (Agresti-Min interval of a paired difference of proportions).
    pub top1_drop_ci95: Option<[f64; 2]>,
    /// Exact two-sided McNemar p-value of the discordant pairs.
    pub mcnemar_p: Option<f64>,
    /// Mean cosine similarity of the logit vectors.
    pub logit_cosine_mean: f64,
    /// Mean KL divergence KL(softmax f32 ‖ softmax form), nats.
    pub softmax_kl_mean: f64,
    /// Largest absolute logit difference over all images.
    pub logit_max_abs_diff: f64,
}

impl PairedComparison {
    /// The drop and its interval for a table cell, or why there is none.
    pub fn drop_text(&self) -> String {
        match (self.top1_drop_points, self.top1_drop_ci95) {
            (Some(d), Some([lo, hi])) => format!("{d:.2} ({lo:.2} to {hi:.2})"),
            _ => "n/a (no labels)".into(),
        }
    }

    /// The two discordant counts for table cells (f32 right & form wrong, the reverse), or
    /// n/a without labels (nothing is right or wrong then).
    pub fn discordant_text(&self) -> [String; 2] {
        match self.top1_drop_points {
            Some(_) => {
                [self.f32_right_form_wrong.to_string(), self.f32_wrong_form_right.to_string()]
            }
            None => ["n/a".into(), "n/a".into()],
        }
    }

    /// The McNemar p-value for a table cell.
    pub fn mcnemar_text(&self) -> String {
        self.mcnemar_p.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into())
    }
}

/// Accumulates a paired comparison image by image.
#[derive(Debug, Clone, Default)]
pub struct PairedAccumulator {
    images: usize,
    labelled: usize,
    agree: usize,
    b: usize,
    c: usize,
    cosine_sum: f64,
    kl_sum: f64,
    max_abs: f64,
}

impl PairedAccumulator {
    /// Adds one image: both forms' logits and the label (none for synthetic images: then only
    /// agreement and logit fidelity count).
    pub fn add(&mut self, f32_logits: &[f32], form_logits: &[f32], label: Option<usize>) {
        let top = |l: &[f32]| crate::engine::top_k(l, 1)[0];
        let (a, b) = (top(f32_logits), top(form_logits));
        self.images += 1;
        self.labelled += usize::from(label.is_some());
        self.agree += usize::from(a == b);
        if let Some(label) = label {
            self.b += usize::from(a == label && b != label);
            self.c += usize::from(a != label && b == label);
        }
        self.cosine_sum += cosine(f32_logits, form_logits);
        self.kl_sum += softmax_kl(f32_logits, form_logits);
        for (x, y) in f32_logits.iter().zip(form_logits) {
            self.max_abs = self.max_abs.max(f64::from((x - y).abs()));
        }
    }

    pub fn finish(&self) -> Option<PairedComparison> {
        if self.images == 0 {
            return None;
        }
        let n = self.images as f64;
        let labelled = self.labelled.max(1) as f64;
        let diff = (self.b as f64 - self.c as f64) / labelled;
        // Agresti-Min interval: half a count added to each cell of the paired 2x2 table, so
        // that few or no discordant images still give an honest, non-zero width.
        let (b, c, m) = (self.b as f64 + 0.5, self.c as f64 + 0.5, labelled + 2.0);
        let adjusted = (b - c) / m;
        let var = ((b + c) / m - adjusted * adjusted) / m;
        let half = Z95 * var.max(0.0).sqrt();
        let accuracy = self.labelled > 0;
        Some(PairedComparison {
            images: self.images,
            top1_agreement_percent: 100.0 * self.agree as f64 / n,
            f32_right_form_wrong: self.b,
            f32_wrong_form_right: self.c,
            top1_drop_points: accuracy.then_some(100.0 * diff),
            top1_drop_ci95: accuracy
                .then_some([100.0 * (adjusted - half), 100.0 * (adjusted + half)]),
            mcnemar_p: accuracy.then(|| mcnemar_exact(self.b, self.c)),
            logit_cosine_mean: self.cosine_sum / n,
            softmax_kl_mean: self.kl_sum / n,
            logit_max_abs_diff: self.max_abs,
        })
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na.sqrt() * nb.sqrt())
}

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(*v)));
    let lse = l.iter().map(|v| (f64::from(*v) - max).exp()).sum::<f64>().ln() + max;
    l.iter().map(|v| f64::from(*v) - lse).collect()
}

/// KL(softmax p ‖ softmax q) in nats.
pub fn softmax_kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// Exact two-sided McNemar test: `2 * P(X <= min(b, c))`, X ~ Binomial(b + c, 1/2), capped at 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k_max = b.min(c);
    let ln2 = std::f64::consts::LN_2;
    let mut ln_choose = 0f64; // ln C(n, 0)
    let mut tail = 0f64;
    for k in 0..=k_max {
        if k > 0 {
            ln_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
        }
        tail += (ln_choose - n as f64 * ln2).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod paired_tests {
    use super::*;

    /// Reference, computed independently in Python: `2 * sum(comb(14, k) for k in range(3)) / 2**14`.
    #[test]
    fn mcnemar_matches_the_binomial_test() {
        assert!((mcnemar_exact(2, 12) - 0.012939453125).abs() < 1e-12);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
    }

    #[test]
    fn identical_logits_are_perfectly_faithful() {
        let mut acc = PairedAccumulator::default();
        acc.add(&[1.0, 2.0, 0.5], &[1.0, 2.0, 0.5], Some(1));
        acc.add(&[3.0, 2.0, 0.5], &[1.0, 2.0, 0.5], Some(0));
        let p = acc.finish().unwrap();
        assert_eq!(p.images, 2);
        assert_eq!(p.top1_agreement_percent, 50.0);
        assert_eq!((p.f32_right_form_wrong, p.f32_wrong_form_right), (1, 0));
        assert_eq!(p.top1_drop_points, Some(50.0));
        assert!(softmax_kl(&[1.0, 2.0], &[1.0, 2.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
    }
}

//! Calibration: activation statistics gathered by running the f32 model in tract, and the
//! clipping ranges each method derives from them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::engine::GraphIo;

/// How an activation's clipping range is chosen from its calibration statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum CalibMethod {
    /// The observed minimum and maximum.
    MinMax,
    /// The given percentile of the observed values (e.g. 99.99), on each side.
    Percentile { percentile: f64 },
    /// The range that minimises the expected squared quantization error over the histogram.
    Mse,
}

impl std::str::FromStr for CalibMethod {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<CalibMethod> {
        match s {
            "minmax" => Ok(CalibMethod::MinMax),
            "mse" => Ok(CalibMethod::Mse),
            "percentile" => Ok(CalibMethod::Percentile { percentile: 99.99 }),
            other => match other.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 50.0 && p <= 100.0 => {
                    Ok(CalibMethod::Percentile { percentile: p })
                }
                _ => anyhow::bail!(
                    "unknown calibration method {other:?}: expected minmax, mse, percentile or \
                     percentile:P with 50 < P <= 100 (e.g. percentile:99.99)"
                ),
            },
        }
    }
}

impl std::fmt::Display for CalibMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            CalibMethod::MinMax => write!(f, "minmax"),
            CalibMethod::Percentile { percentile } => write!(f, "percentile:{percentile}"),
            CalibMethod::Mse => write!(f, "mse"),
        }
    }
}

/// Bins on each side of zero.
const HALF_BINS: usize = 2048;

/// A histogram of one activation tensor over `[-bound, bound]`, widened as larger values
/// arrive, with the exact extremes beside it.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub min: f32,
    pub max: f32,
    bound: f32,
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            bound: 0.0,
            counts: vec![0; 2 * HALF_BINS],
        }
    }
}

impl Histogram {
    fn bin_width(&self) -> f32 {
        self.bound / HALF_BINS as f32
    }

    fn index(&self, v: f32) -> usize {
        let i = ((v + self.bound) / self.bin_width()).floor() as isize;
        i.clamp(0, (2 * HALF_BINS - 1) as isize) as usize
    }

    fn center(&self, i: usize) -> f32 {
        (i as f32 + 0.5) * self.bin_width() - self.bound
    }

    /// Adds values; a value beyond the current bound widens it, re-binning what was counted.
    pub fn add(&mut self, values: &[f32]) {
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if !lo.is_finite() || !hi.is_finite() {
            return;
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let needed = lo.abs().max(hi.abs()).max(f32::MIN_POSITIVE);
        if needed > self.bound {
            self.widen(needed);
        }
        for &v in values {
            let i = self.index(v);
            self.counts[i] += 1;
        }
    }

    fn widen(&mut self, bound: f32) {
        let old = std::mem::replace(
            self,
            Histogram { min: self.min, max: self.max, bound, counts: vec![0; 2 * HALF_BINS] },
        );
        if old.bound > 0.0 {
            for (i, &n) in old.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                let j = self.index(old.center(i));
                self.counts[j] += n;
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value below which a fraction `q` of the samples lie (bin upper edge).
    fn quantile(&self, q: f64) -> f32 {
        let target = (q * self.total() as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= target.max(1) {
                return self.center(i) + self.bin_width() / 2.0;
            }
        }
        self.bound
    }

    /// Expected squared error of quantizing the histogram to `levels` with `scale` and
    /// `zero_point` (values clipped to `[qmin, qmax]`).
    fn quant_error(&self, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> f64 {
        let mut err = 0.0;
        for (i, &n) in self.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let x = self.center(i);
            let q = ((x / scale).round() as i32 + zero_point).clamp(qmin, qmax);
            let back = (q - zero_point) as f32 * scale;
            err += n as f64 * f64::from(x - back).powi(2);
        }
        err
    }
}

/// An activation's per-tensor quantization: `x ≈ (q - zero_point) * scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: i32,
}

/// The integer type activations are quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActType {
    /// Asymmetric uint8 (zero point in 0..=255).
    U8,
    /// Symmetric int8 (zero point 0, range ±127).
    I8,
}

impl std::str::FromStr for ActType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<ActType> {
        match s {
            "u8" | "uint8" => Ok(ActType::U8),
            "i8" | "int8" => Ok(ActType::I8),
            other => anyhow::bail!("unknown activation type {other:?}: expected u8 or i8"),
        }
    }
}

/// Chooses the quantization of one activation from its histogram.
pub fn choose(h: &Histogram, method: CalibMethod, act: ActType) -> ActQuant {
    let (lo, hi) = match method {
        CalibMethod::MinMax => (h.min, h.max),
        CalibMethod::Percentile { percentile } => {
            let p = percentile / 100.0;
            (h.quantile(1.0 - p).max(h.min), h.quantile(p).min(h.max))
        }
        CalibMethod::Mse => return choose_mse(h, act),
    };
    from_range(lo, hi, act)
}

/// Scale and zero point covering `[lo, hi]` (widened to include 0, as zero must be exact).
pub fn from_range(lo: f32, hi: f32, act: ActType) -> ActQuant {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    match act {
        ActType::U8 => {
            let scale = ((hi - lo) / 255.0).max(1e-8);
            let zero_point = ((-lo / scale).round() as i32).clamp(0, 255);
            ActQuant { scale, zero_point }
        }
        ActType::I8 => ActQuant { scale: (lo.abs().max(hi) / 127.0).max(1e-8), zero_point: 0 },
    }
}

/// Searches clipping ranges shrunk from the observed extremes for the least squared error.
fn choose_mse(h: &Histogram, act: ActType) -> ActQuant {
    let (qmin, qmax) = match act {
        ActType::U8 => (0, 255),
        ActType::I8 => (-127, 127),
    };
    let mut best = from_range(h.min, h.max, act);
    let mut best_err = f64::INFINITY;
    // Log-spaced shrink factors from 1 down to about 0.02: outliers can sit 50x above the bulk.
    for step in 0..200 {
        let f = 0.98f32.powi(step);
        let candidate = from_range(h.min * f, h.max * f, act);
        let err = h.quant_error(candidate.scale, candidate.zero_point, qmin, qmax);
        if err < best_err {
            best_err = err;
            best = candidate;
        }
    }
    best
}

/// Runs the f32 model over `images` (each `[3, size, size]` f32) and hands every tensor named
/// in `tensors` to `observe(name_index, values, shape)`.
#[allow(clippy::too_many_arguments)] // the model (4 parts), what to watch, the images, 2 callbacks
pub fn observe_tensors(
    proto: &pb::ModelProto,
    io: &GraphIo,
    path: &Path,
    size: usize,
    tensors: &[String],
    images: &[Vec<f32>],
    mut observe: impl FnMut(usize, &[f32], &[usize]),
    mut progress: impl FnMut(),
) -> Result<()> {
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| anyhow::anyhow!("model {}: tract cannot parse it: {e:?}", path.display()))?;
    model.set_input_names([io.input.as_str()])?;
    model.set_input_fact(0, f32::fact([1, 3, size, size]).into())?;
    model.select_outputs_by_name(tensors.iter()).with_context(|| {
        format!("model {}: cannot observe the quantized ops' inputs", path.display())
    })?;
    let plan = model.into_typed()?.into_optimized()?.into_runnable()?;
    for image in images {
        let input = Tensor::from_shape(&[1, 3, size, size], image)?;
        let outputs = plan.run(tvec!(input.into_tvalue()))?;
        for (i, value) in outputs.iter().enumerate() {
            let view = value.to_plain_array_view::<f32>()?;
            match view.as_slice() {
                Some(values) => observe(i, values, value.shape()),
                None => observe(i, &view.iter().copied().collect::<Vec<_>>(), value.shape()),
            }
        }
        progress();
    }
    Ok(())
}

/// Histograms of every tensor named in `tensors` over the calibration images.
pub fn collect_histograms(
    proto: &pb::ModelProto,
    io: &GraphIo,
    path: &Path,
    size: usize,
    tensors: &[String],
    images: &[Vec<f32>],
    progress: impl FnMut(),
) -> Result<BTreeMap<String, Histogram>> {
    let mut hists: Vec<Histogram> = vec![Histogram::default(); tensors.len()];
    observe_tensors(proto, io, path, size, tensors, images, |i, v, _| hists[i].add(v), progress)?;
    Ok(tensors.iter().cloned().zip(hists).collect())
}

/// Per-channel maximum of |x| over the last axis of each tensor named in `tensors`.
pub fn collect_channel_absmax(
    proto: &pb::ModelProto,
    io: &GraphIo,
    path: &Path,
    size: usize,
    tensors: &[String],
    images: &[Vec<f32>],
    progress: impl FnMut(),
) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut maxima: Vec<Vec<f32>> = vec![vec![]; tensors.len()];
    observe_tensors(
        proto,
        io,
        path,
        size,
        tensors,
        images,
        |i, values, shape| {
            let channels = shape.last().copied().unwrap_or(1);
            let m = &mut maxima[i];
            m.resize(channels, 0.0);
            for row in values.chunks_exact(channels) {
                for (acc, v) in m.iter_mut().zip(row) {
                    *acc = acc.max(v.abs());
                }
            }
        },
        progress,
    )?;
    Ok(tensors.iter().cloned().zip(maxima).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussianish(n: usize) -> Vec<f32> {
        // A deterministic bell-shaped sample: sums of uniforms from SplitMix64.
        let mut rng = crate::dataset::SplitMix64(5);
        (0..n)
            .map(|_| {
                (0..4).map(|_| (rng.next_u64() >> 11) as f32 / (1u64 << 53) as f32).sum::<f32>()
                    - 2.0
            })
            .collect()
    }

    #[test]
    fn minmax_covers_the_extremes() {
        let mut h = Histogram::default();
        h.add(&[-1.0, 0.5, 3.0]);
        let q = choose(&h, CalibMethod::MinMax, ActType::U8);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(q.zero_point, 64);
        let q = choose(&h, CalibMethod::MinMax, ActType::I8);
        assert!((q.scale - 3.0 / 127.0).abs() < 1e-7 && q.zero_point == 0);
    }

    #[test]
    fn widening_keeps_every_count() {
        let mut h = Histogram::default();
        h.add(&[0.1, -0.2, 0.3]);
        h.add(&[10.0]);
        assert_eq!(h.total(), 4);
        assert_eq!((h.min, h.max), (-0.2, 10.0));
    }

    #[test]
    fn percentile_clips_outliers_and_mse_beats_minmax() {
        let mut values = gaussianish(100_000);
        values.push(40.0); // one outlier
        let mut h = Histogram::default();
        h.add(&values);
        let minmax = choose(&h, CalibMethod::MinMax, ActType::I8);
        let pct = choose(&h, CalibMethod::Percentile { percentile: 99.99 }, ActType::I8);
        let mse = choose(&h, CalibMethod::Mse, ActType::I8);
        assert!(pct.scale < minmax.scale / 5.0, "{pct:?} vs {minmax:?}");
        let err = |q: ActQuant| h.quant_error(q.scale, q.zero_point, -127, 127);
        assert!(err(mse) < err(minmax), "{} vs {}", err(mse), err(minmax));
    }

    #[test]
    fn zero_is_always_representable() {
        let q = from_range(0.5, 2.0, ActType::U8);
        assert_eq!(q.zero_point, 0);
        let q = from_range(-3.0, -1.0, ActType::U8);
        assert_eq!(q.zero_point, 255);
    }

    #[test]
    fn methods_parse() {
        assert_eq!(
            "percentile:99.9".parse::<CalibMethod>().unwrap(),
            CalibMethod::Percentile { percentile: 99.9 }
        );
        assert!("percentile:20".parse::<CalibMethod>().is_err());
        assert!("kl".parse::<CalibMethod>().is_err());
    }
}

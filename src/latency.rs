//! Latency measurement, apart from the accuracy pass: warm-up, then timed batch-1 runs;
//! percentiles and spread; plus process and machine facts the figures depend on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::board::BoardState;

/// How latency is measured (recorded in the report next to the figures).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyPlan {
    pub warmup_runs: usize,
    /// Timed runs wanted; fewer when `max_seconds` runs out first (at least 3 are taken).
    pub runs: usize,
    pub max_seconds: f64,
}

/// Batch-1 latency statistics, milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyStats {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub stdev: f64,
    pub min: f64,
    pub max: f64,
    /// Timed runs the statistics are over.
    pub runs: usize,
    pub warmup_runs: usize,
    /// Every timed run, in order, for distributions and re-analysis.
    pub samples_ms: Vec<f64>,
}

/// Runs `f` `plan.warmup_runs` times untimed, then times it up to `plan.runs` times.
pub fn measure(plan: &LatencyPlan, mut f: impl FnMut() -> Result<()>) -> Result<LatencyStats> {
    for _ in 0..plan.warmup_runs {
        f()?;
    }
    let budget = Duration::from_secs_f64(plan.max_seconds);
    let started = Instant::now();
    let mut samples_ms = Vec::with_capacity(plan.runs);
    while samples_ms.len() < plan.runs.max(1) {
        let t = Instant::now();
        f()?;
        samples_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if samples_ms.len() >= 3 && started.elapsed() > budget {
            break;
        }
    }
    Ok(LatencyStats::from_samples(samples_ms, plan.warmup_runs))
}

/// Times several functions in turn, as [`measure`] times one: each gets `plan.warmup_runs`
/// untimed runs, then rounds run each once, timed, until every one has `plan.runs` samples or
/// `plan.max_seconds` per function has passed (at least 3 rounds). Interleaving puts the
/// machine's slow moments on all of them alike, so their ratios hold on a shared, noisy machine.
pub fn measure_interleaved(
    plan: &LatencyPlan,
    fs: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<LatencyStats>> {
    for f in fs.iter_mut() {
        for _ in 0..plan.warmup_runs {
            f()?;
        }
    }
    let budget = Duration::from_secs_f64(plan.max_seconds * fs.len() as f64);
    let started = Instant::now();
    let mut samples_ms = vec![Vec::with_capacity(plan.runs); fs.len()];
    for round in 0..plan.runs.max(1) {
        for (f, samples) in fs.iter_mut().zip(&mut samples_ms) {
            let t = Instant::now();
            f()?;
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if round + 1 >= 3 && started.elapsed() > budget {
            break;
        }
    }
    Ok(samples_ms.into_iter().map(|s| LatencyStats::from_samples(s, plan.warmup_runs)).collect())
}

impl LatencyStats {
    pub fn from_samples(samples_ms: Vec<f64>, warmup_runs: usize) -> LatencyStats {
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = if sorted.len() > 1 {
            sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        LatencyStats {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            mean,
            stdev: var.sqrt(),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs: sorted.len(),
            warmup_runs,
            samples_ms,
        }
    }
}

/// Linear-interpolated percentile of sorted values (numpy's default method).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Peak resident set size of this process so far, bytes (Linux `VmHWM`), if readable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Facts about the machine a latency figure belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    pub cpu_model: String,
    /// Instruction-set features tract detected and uses to pick kernels.
    pub tract_isa: String,
    /// `TRACT_CPU_ISA` as set for this run, if any.
    pub tract_cpu_isa_override: Option<String>,
    pub logical_cpus: usize,
    pub threads: usize,
    pub os: String,
    pub arch: String,
    pub tract_version: String,
    pub edgeverify_version: String,
    /// Whether the run appears to be under user-mode emulation (qemu), where latency is
    /// meaningless.
    pub emulated: bool,
    /// The CPU qemu emulates (its `QEMU_CPU`, which scripts/qemu-run sets), under emulation.
    #[serde(default)]
    pub emulated_cpu: Option<String>,
    /// The board, from the device tree (e.g. `Raspberry Pi 5 Model B Rev 1.0`), where known.
    #[serde(default)]
    pub board_model: Option<String>,
    /// ARM core types from `/proc/cpuinfo`, e.g. `4 x Cortex-A72`; empty elsewhere.
    #[serde(default)]
    pub arm_cores: Vec<String>,
    /// tract's CPU-detection knobs set for this run (`TRACT_CPU_*`): they override what tract
    /// reads from `/proc/cpuinfo`, and so which kernels run.
    #[serde(default)]
    pub tract_knobs: BTreeMap<String, String>,
    /// Clock, governor, temperature before the latency runs...
    #[serde(default)]
    pub board_before_latency: BoardState,
    /// ...and after them (absent when the run stopped before).
    #[serde(default)]
    pub board_after_latency: Option<BoardState>,
}

impl Environment {
    pub fn detect(threads: usize) -> Environment {
        let emulated = detect_emulation();
        let emulated_cpu = std::env::var("QEMU_CPU").ok().filter(|_| emulated);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Environment {
            cpu_model: match &emulated_cpu {
                Some(cpu) => format!("{cpu} emulated by qemu on {}", cpu_model()),
                None => cpu_model(),
            },
            tract_isa: crate::engine::detected_isa(),
            tract_cpu_isa_override: std::env::var("TRACT_CPU_ISA").ok(),
            logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            threads,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            tract_version: "0.23.9".into(),
            edgeverify_version: env!("CARGO_PKG_VERSION").into(),
            emulated,
            emulated_cpu,
            board_model: crate::board::board_model(),
            arm_cores: crate::board::arm_cores(&cpuinfo),
            tract_knobs: std::env::vars().filter(|(k, _)| k.starts_with("TRACT_CPU_")).collect(),
            board_before_latency: BoardState::read(emulated),
            board_after_latency: None,
        }
    }
}

/// The CPU's model name from `/proc/cpuinfo` (x86 `model name`, ARM `Model`/`Hardware`/part).
pub fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown (no /proc/cpuinfo)".into();
    };
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    field("model name")
        .or_else(|| field("Model"))
        .or_else(|| field("Hardware"))
        .or_else(|| field("CPU part").map(|p| format!("ARM CPU part {p}")))
        .unwrap_or_else(|| "unknown".into())
}

/// qemu-user shows the host's `/proc/cpuinfo`: a binary for one architecture reading another
/// architecture's CPU description is emulated.
pub fn detect_emulation() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
    let x86_host = info.contains("vendor_id");
    let arm_binary = cfg!(any(target_arch = "aarch64", target_arch = "arm"));
    arm_binary && x86_host
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.5);
        assert!((percentile(&v, 90.0) - 9.1).abs() < 1e-12);
        assert_eq!(percentile(&[4.0], 99.0), 4.0);
    }

    #[test]
    fn stats_from_samples() {
        let s = LatencyStats::from_samples(vec![3.0, 1.0, 2.0], 2);
        assert_eq!((s.p50, s.min, s.max, s.mean, s.runs), (2.0, 1.0, 3.0, 2.0, 3));
        assert!((s.stdev - 1.0).abs() < 1e-12);
        assert_eq!(s.samples_ms, vec![3.0, 1.0, 2.0]);
    }

    #[test]
    fn measure_respects_run_count() {
        let plan = LatencyPlan { warmup_runs: 2, runs: 5, max_seconds: 60.0 };
        let mut calls = 0;
        let stats = measure(&plan, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((calls, stats.runs), (7, 5));
    }

    #[test]
    fn interleaved_runs_alternate_and_count_per_function() {
        let plan = LatencyPlan { warmup_runs: 1, runs: 4, max_seconds: 60.0 };
        let order = std::cell::RefCell::new(vec![]);
        let mut a = || {
            order.borrow_mut().push('a');
            Ok(())
        };
        let mut b = || {
            order.borrow_mut().push('b');
            Ok(())
        };
        let stats = measure_interleaved(&plan, &mut [&mut a, &mut b]).unwrap();
        assert_eq!(stats.iter().map(|s| s.runs).collect::<Vec<_>>(), vec![4, 4]);
        assert_eq!(order.into_inner().iter().collect::<String>(), "ababababab");
    }
}

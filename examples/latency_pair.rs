//! Batch-1 latency of two ONNX classifiers side by side, in one process, with their timed runs
//! interleaved (A, B, A, B, …) so that load from other processes falls on both alike.
//!
//! ```sh
//! cargo run --release --example latency_pair -- A.onnx B.onnx [runs] [threads]
//! ```
//!
//! Both get the same input (one seeded synthetic image, ImageNet preprocessing) and the same
//! thread count; five untimed runs each first.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeverify::engine::{self, Engine};
use edgeverify::latency::LatencyStats;
use edgeverify::preprocess::{self, PreprocessSpec};
use edgeverify::synthetic_images::SyntheticImages;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: latency_pair A.onnx B.onnx [runs, default 30] [threads, default all]");
    }
    let paths = [PathBuf::from(&args[0]), PathBuf::from(&args[1])];
    let runs: usize = args.get(2).map(|s| s.parse()).transpose().context("runs")?.unwrap_or(30);
    let threads = match args.get(3) {
        Some(s) => s.parse().context("threads")?,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    engine::set_threads(threads);

    let image = SyntheticImages { seed: 0, count: 1 }.image(0);
    let input = preprocess::to_tensor(&image, &PreprocessSpec::imagenet_standard())?;
    let engines = paths
        .iter()
        .map(|p| {
            let proto = engine::read_proto(p)?;
            let io = engine::graph_io(&proto, p, None, None)?;
            Engine::load_f32(p, &io, 1, 224)
        })
        .collect::<Result<Vec<_>>>()?;
    for e in &engines {
        for _ in 0..5 {
            e.run(&input)?;
        }
    }

    let mut samples = [vec![], vec![]];
    for _ in 0..runs {
        for (e, s) in engines.iter().zip(&mut samples) {
            let t = Instant::now();
            e.run(&input)?;
            s.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!("{threads} thread(s), {runs} interleaved runs each, batch 1");
    for ((p, e), s) in paths.iter().zip(&engines).zip(samples) {
        let st = LatencyStats::from_samples(s, 5);
        println!(
            "{}: p50 {:.2} ms, p90 {:.2}, min {:.2}, mean {:.2} ± {:.2}; load {:.0} ms",
            p.display(),
            st.p50,
            st.p90,
            st.min,
            st.mean,
            st.stdev,
            e.load_ms
        );
    }
    Ok(())
}

//! Per-op time profile of a runnable form: each node of tract's plan timed as it runs, summed
//! by op kind (matmuls by kernel), averaged over runs (`verify --profile`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tract_core::ops::matmul::optimized::OptMatMul;
use tract_core::plan::SimpleState;
use tract_onnx::prelude::*;

/// Time spent in one kind of op, per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpTime {
    /// tract's op name; matmuls carry their kernel, e.g. `OptMatMul(avx512vnni_mmm_i32_8x8)`.
    pub op: String,
    /// Nodes of this kind in the plan.
    pub count: usize,
    /// Mean time per run over all these nodes, milliseconds.
    pub ms: f64,
    /// Share of the profiled run time, percent.
    pub percent: f64,
}

/// Where a form's time goes, per op kind, slowest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Profiled runs the times are averaged over (after one untimed warm-up run).
    pub runs: usize,
    /// Mean time per run in all nodes, milliseconds (a little above the latency: the timing
    /// itself costs).
    pub total_ms: f64,
    pub ops: Vec<OpTime>,
}

/// The profile key of a node: its op name, with the kernel for a matmul.
fn op_key(node: &TypedNode) -> String {
    match node.op_as::<OptMatMul>() {
        Some(mm) => {
            let kernels: Vec<String> = mm.mmm.iter().map(|k| k.name().to_string()).collect();
            format!("OptMatMul({})", kernels.join(","))
        }
        None => node.op.name().to_string(),
    }
}

/// Runs `plan` on `input` once untimed and `runs` times timing every node.
pub fn profile(plan: &Arc<TypedRunnableModel>, input: TValue, runs: usize) -> Result<Profile> {
    let runs = runs.max(1);
    let mut state = SimpleState::new(plan)?;
    state.run(tvec!(input.clone()))?;
    let mut by_node: HashMap<usize, f64> = HashMap::new();
    for _ in 0..runs {
        state.run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
            let started = Instant::now();
            let outputs = tract_core::plan::eval(ctx, op_state, node, inputs);
            *by_node.entry(node.id).or_default() += started.elapsed().as_secs_f64() * 1e3;
            outputs
        })?;
    }
    Ok(summarize(plan.model(), &by_node, runs))
}

fn summarize(model: &TypedModel, by_node: &HashMap<usize, f64>, runs: usize) -> Profile {
    let mut by_op: HashMap<String, (usize, f64)> = HashMap::new();
    for (&id, &ms) in by_node {
        let entry = by_op.entry(op_key(model.node(id))).or_default();
        entry.0 += 1;
        entry.1 += ms / runs as f64;
    }
    let total_ms: f64 = by_op.values().map(|(_, ms)| ms).sum();
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (count, ms))| OpTime { op, count, ms, percent: 100.0 * ms / total_ms })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.op.cmp(&b.op)));
    Profile { runs, total_ms, ops }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_of_a_tiny_plan_counts_each_node_once() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3])).unwrap();
        let y = model.wire_node("relu", tract_core::ops::math::abs(), &[x]).unwrap();
        let z = model.wire_node("relu2", tract_core::ops::math::abs(), &y).unwrap();
        model.select_output_outlets(&z).unwrap();
        let plan = model.into_runnable().unwrap();
        let input = tensor2(&[[1f32, -2., 3.], [4., -5., 6.]]).into_tvalue();
        let profile = profile(&plan, input, 3).unwrap();
        assert_eq!(profile.runs, 3);
        let abs = profile.ops.iter().find(|o| o.op == "Abs").expect("the Abs nodes are profiled");
        assert_eq!(abs.count, 2);
        let percent: f64 = profile.ops.iter().map(|o| o.percent).sum();
        assert!((percent - 100.0).abs() < 1e-6, "shares sum to {percent}");
    }
}

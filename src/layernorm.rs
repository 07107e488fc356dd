//! LayerNorm over one axis in f32, replacing the ops tract expands ONNX's
//! `LayerNormalization` into, at load time.
//!
//! tract 0.23.9 turns `LayerNormalization` into `Reduce<Sum>` → `Mul(1/C)` → `Sub` →
//! `RmsNorm` → `Mul(γ)` → `Add(β)`, and on ConvNeXt-T, whose graph it keeps in NCHW, the
//! normalized axis is the channel axis: every one of those passes walks the tensor with a
//! stride of `H·W`. Profiled (`verify --profile`, f32, 1 thread) they took about 18 ms of 150
//! for almost no arithmetic. This op computes the same thing in three passes over blocks of
//! the contiguous inner positions (sum, centred sum of squares, normalise-scale-shift), with
//! the block's running sums in registers, split over tract's executor.
//!
//! Matched only where it is exactly that expansion: `Sub(x, Mul(Reduce<Sum>(x, [a]), 1/C))`
//! into `RmsNorm(axis a)`, the intermediate results used nowhere else; a following per-channel
//! `Mul` and `Add` are folded in. The sums' order differs from tract's, so the last bits do.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use crate::fastint8::per_channel_values;

/// Inner positions per block, held in registers across the channel loop.
const BLOCK: usize = 32;

/// `y = (x - mean) / sqrt(var + eps) · γ + β` along `axis`, mean and (biased) variance over it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    pub axis: usize,
    pub eps: f32,
    /// `[C]`; ones when no scale follows.
    pub gamma: Arc<Vec<f32>>,
    /// `[C]`; zeros when no shift follows.
    pub beta: Arc<Vec<f32>>,
}

impl Eq for LayerNorm {}

impl LayerNorm {
    /// Normalises `units` blocks; `outer` rows of `[C][inner]`, a unit is one outer row and
    /// one block of `inner`.
    #[inline(always)]
    fn units_body(
        &self,
        shape: (usize, usize, usize),
        units: std::ops::Range<usize>,
        x: &[f32],
        y: *mut f32,
    ) {
        let (_, c, inner) = shape;
        let blocks = inner.div_ceil(BLOCK);
        let inv_c = 1.0 / c as f32;
        for unit in units {
            let (o, b) = (unit / blocks, unit % blocks);
            let j0 = b * BLOCK;
            let n = BLOCK.min(inner - j0);
            let base = o * c * inner + j0;
            let mut mean = [0f32; BLOCK];
            for ch in 0..c {
                let row = &x[base + ch * inner..base + ch * inner + n];
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            for m in &mut mean {
                *m *= inv_c;
            }
            let mut var = [0f32; BLOCK];
            for ch in 0..c {
                let row = &x[base + ch * inner..base + ch * inner + n];
                for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                    let d = v - m;
                    *s += d * d;
                }
            }
            let mut rstd = [0f32; BLOCK];
            for (r, s) in rstd.iter_mut().zip(&var) {
                *r = 1.0 / (s * inv_c + self.eps).sqrt();
            }
            for ch in 0..c {
                let (g, bt) = (self.gamma[ch], self.beta[ch]);
                let at = base + ch * inner;
                let row = &x[at..at + n];
                // SAFETY: units are disjoint, so is what they write; `y` has `x.len()` floats.
                let out = unsafe { std::slice::from_raw_parts_mut(y.add(at), n) };
                for (((o, v), m), r) in out.iter_mut().zip(row).zip(&mean).zip(&rstd) {
                    *o = (v - m) * r * g + bt;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn units_avx2(
        &self,
        shape: (usize, usize, usize),
        units: std::ops::Range<usize>,
        x: &[f32],
        y: *mut f32,
    ) {
        self.units_body(shape, units, x, y)
    }

    fn units(
        &self,
        shape: (usize, usize, usize),
        units: std::ops::Range<usize>,
        x: &[f32],
        y: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.units_avx2(shape, units, x, y) };
        }
        self.units_body(shape, units, x, y)
    }

    /// `x` of `shape` into `y` (same length), units over the executor.
    pub fn compute(&self, shape: &[usize], x: &[f32], y: &mut [f32]) -> TractResult<()> {
        let outer: usize = shape[..self.axis].iter().product();
        let c = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        ensure!(x.len() == outer * c * inner && y.len() == x.len() && self.gamma.len() == c);
        let units = outer * inner.div_ceil(BLOCK);
        let y_addr = y.as_mut_ptr() as usize;
        let mut unit_slots = vec![(); units];
        tract_linalg::multithread::par_chunks_mut(&mut unit_slots, 1, x.len(), |first, part| {
            self.units((outer, c, inner), first..first + part.len(), x, y_addr as *mut f32);
            Ok(())
        })
    }
}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNormF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {} eps: {} channels: {}", self.axis, self.eps, self.gamma.len())])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        // SAFETY: `compute` writes every element.
        let mut out = unsafe { Tensor::uninitialized::<f32>(input.shape())? };
        {
            let mut ram = out.try_as_plain_ram_mut()?;
            self.compute(input.shape(), x, ram.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The single node using `outlet`, if it is its only use and not a model output.
fn only_use(model: &TypedModel, outlet: OutletId) -> Option<&TypedNode> {
    let succ = model.outlet_successors(outlet);
    if succ.len() != 1 || model.output_outlets().ok()?.contains(&outlet) {
        return None;
    }
    Some(model.node(succ[0].node))
}

/// The other input of binary node `node` than `from`, if it is a constant.
fn other_const(model: &TypedModel, node: &TypedNode, from: OutletId) -> Option<Arc<Tensor>> {
    if node.inputs.len() != 2 {
        return None;
    }
    let other = if node.inputs[0] == from { node.inputs[1] } else { node.inputs[0] };
    model.outlet_fact(other).ok()?.konst.clone()
}

fn bin_name(node: &TypedNode) -> Option<String> {
    node.op_as::<TypedBinOp>().map(|b| b.0.name().to_string())
}

/// For an `RmsNorm` node ending tract's LayerNorm expansion: the op, the input `x` and the
/// outlet it replaces.
fn for_rms_norm(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(LayerNorm, OutletId, OutletId)>> {
    let Some(rms) = node.op_as::<RmsNorm>() else { return Ok(None) };
    let sub = model.node(node.inputs[0].node);
    if bin_name(sub).as_deref() != Some("Sub")
        || only_use(model, node.inputs[0]).map(|n| n.id) != Some(node.id)
    {
        return Ok(None);
    }
    let x = sub.inputs[0];
    let mul = model.node(sub.inputs[1].node);
    if bin_name(mul).as_deref() != Some("Mul")
        || only_use(model, sub.inputs[1]).map(|n| n.id) != Some(sub.id)
    {
        return Ok(None);
    }
    let reduce_input = mul.inputs.iter().find(|i| model.node(i.node).op_is::<Reduce>()).copied();
    let Some(reduced) = reduce_input else { return Ok(None) };
    let Some(k) = other_const(model, mul, reduced) else { return Ok(None) };
    let reduce_node = model.node(reduced.node);
    let reduce = reduce_node.op_as::<Reduce>().unwrap();
    let fact = model.outlet_fact(x)?;
    let Some(shape) = fact.shape.as_concrete() else { return Ok(None) };
    let axis = rms.axis;
    if fact.datum_type != f32::datum_type()
        || reduce.reducer != Reducer::Sum
        || reduce.axes[..] != [axis]
        || reduce_node.inputs[0] != x
        || only_use(model, reduced).map(|n| n.id) != Some(mul.id)
        || k.len() != 1
        || k.datum_type() != f32::datum_type()
        || rms.eps.len() != 1
    {
        return Ok(None);
    }
    let c = shape[axis];
    let inv = k.cast_to_scalar::<f32>()?;
    if (inv * c as f32 - 1.0).abs() > 1e-6 {
        return Ok(None);
    }
    let mut op = LayerNorm {
        axis,
        eps: rms.eps.cast_to_scalar::<f32>()?,
        gamma: Arc::new(vec![1.0; c]),
        beta: Arc::new(vec![0.0; c]),
    };
    // Fold a following per-channel Mul (γ), then Add (β).
    let mut last = OutletId::new(node.id, 0);
    for wanted in ["Mul", "Add"] {
        let Some(next) = only_use(model, last) else { break };
        if bin_name(next).as_deref() != Some(wanted) {
            continue;
        }
        let Some(k) = other_const(model, next, last) else { break };
        let Some(values) = per_channel_values(&k, shape.len(), axis, c)? else { break };
        if model.outlet_fact(OutletId::new(next.id, 0))?.shape != fact.shape {
            break;
        }
        if wanted == "Mul" {
            op.gamma = Arc::new(values);
        } else {
            op.beta = Arc::new(values);
        }
        last = OutletId::new(next.id, 0);
    }
    Ok(Some((op, x, last)))
}

/// Replaces each LayerNorm expansion of a decluttered typed model by one [`LayerNorm`];
/// returns how many.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((op, x, last)) = for_rms_norm(model, node)? else { continue };
        let mut patch = TypedModelPatch::new(format!("layer norm {}", node.name));
        let tap = patch.tap_model(model, x)?;
        let y = patch.wire_node(format!("{}.layer_norm", node.name), op, &[tap])?[0];
        patch.shunt_outside(model, last, y)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::math::{Add, Mul, Sub};

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2001) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    /// tract's expansion of `LayerNormalization` over `axis`, with γ and β, as the ONNX
    /// loader and decluttering leave it.
    fn expansion(shape: &[usize], axis: usize, gamma: &[f32], beta: &[f32]) -> TypedModel {
        let rank = shape.len();
        let c = shape[axis];
        let per_channel = |v: &[f32]| {
            let mut s = vec![1; rank];
            s[axis] = c;
            Tensor::from_shape(&s, v).unwrap()
        };
        let scalar = |v: f32| Tensor::from_shape(&vec![1; rank], &[v]).unwrap();
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let sum = Reduce::new(tvec!(axis), Reducer::Sum);
        let r = m.wire_node("sum", sum, &[x]).unwrap()[0];
        let k = m.add_const("inv_c", scalar(1.0 / c as f32)).unwrap();
        let mean = m.wire_node("mean", TypedBinOp(Box::new(Mul), None), &[r, k]).unwrap()[0];
        let d = m.wire_node("d", TypedBinOp(Box::new(Sub), None), &[x, mean]).unwrap()[0];
        let rms = RmsNorm { axis, eps: Arc::new(tensor0(1e-6f32)) };
        let n = m.wire_node("rms", rms, &[d]).unwrap()[0];
        let g = m.add_const("gamma", per_channel(gamma)).unwrap();
        let n = m.wire_node("scale", TypedBinOp(Box::new(Mul), None), &[n, g]).unwrap()[0];
        let b = m.add_const("beta", per_channel(beta)).unwrap();
        let y = m.wire_node("shift", TypedBinOp(Box::new(Add), None), &[n, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn replaces_tracts_expansion_with_the_same_values() {
        // Channels first with a long inner run (ConvNeXt's NCHW), channels last, odd sizes.
        for (shape, axis) in [(vec![1, 40, 9, 11], 1), (vec![2, 5, 96], 2), (vec![3, 70, 33], 1)] {
            let c = shape[axis];
            let model = expansion(&shape, axis, &values(c, 1), &values(c, 2));
            let input = Tensor::from_shape(&shape, &values(shape.iter().product(), 3)).unwrap();
            let want = model.clone().into_runnable().unwrap();
            let want = want.run(tvec!(input.clone().into_tvalue())).unwrap();
            let mut ours = model;
            assert_eq!(rewrite(&mut ours).unwrap(), 1, "{shape:?}");
            let ours = ours.into_optimized().unwrap();
            let kinds: Vec<String> =
                ours.nodes().iter().map(|n| n.op().name().to_string()).collect();
            assert_eq!(kinds.iter().filter(|k| k.as_str() != "Source").count(), 1, "{kinds:?}");
            let got = ours.into_runnable().unwrap().run(tvec!(input.into_tvalue())).unwrap();
            got[0].close_enough(&want[0], true).unwrap();
        }
    }

    #[test]
    fn normalises_to_zero_mean_unit_variance_then_scales_and_shifts() {
        let op = LayerNorm {
            axis: 1,
            eps: 0.0,
            gamma: Arc::new(vec![2.0, 2.0, 2.0]),
            beta: Arc::new(vec![1.0, 1.0, 1.0]),
        };
        // [1, 3, 2]: position 0 sees (1, 2, 3) (variance 2/3), position 1 sees (0, 3, 6)
        // (variance 6).
        let x = [1.0, 0.0, 2.0, 3.0, 3.0, 6.0];
        let mut y = [0f32; 6];
        op.compute(&[1, 3, 2], &x, &mut y).unwrap();
        let s = (2.0f32 / 3.0).sqrt();
        let want = [
            1.0 - 2.0 / s,
            1.0 - 2.0 * 3.0 / 6f32.sqrt(),
            1.0,
            1.0,
            1.0 + 2.0 / s,
            1.0 + 2.0 * 3.0 / 6f32.sqrt(),
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn units_split_over_two_threads_give_the_same_values() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let shape = [1, 96, 56, 56];
        let x = values(shape.iter().product(), 5);
        let op = LayerNorm {
            axis: 1,
            eps: 1e-6,
            gamma: Arc::new(values(96, 6)),
            beta: Arc::new(values(96, 7)),
        };
        let run = || {
            let mut y = vec![0f32; x.len()];
            op.compute(&shape, &x, &mut y).unwrap();
            y
        };
        let one = multithread_tract_scope(Executor::SingleThread, run);
        assert_eq!(one, multithread_tract_scope(Executor::multithread(2), run));
    }
}

//! Depthwise convolution in f32 (NCHW), replacing tract's `DepthWiseConv` at load time.
//!
//! Profiling (`verify --profile`) showed tract 0.23.9's depthwise op far above its share of
//! the work: on ConvNeXt-T its 18 depthwise 7×7 convs are about 2.4% of the multiply-adds but
//! took 15% of the f32 time (22.8 ms of 150 at one thread) and 25% of the int8 form's, and a
//! second thread did not shorten them (20.3 ms); on EfficientNet-Lite0 depthwise convs were
//! half the time. tract walks the image zone by zone with the taps in the inner loop.
//!
//! This op turns each channel plane into long contiguous multiply-adds instead:
//!
//! * the plane is copied once into a zero-padded buffer, split for a stride `s` into its
//!   `s × s` phases (`phase[py][px][y][x] = padded[y·s + py][x·s + px]`), so that every tap
//!   reads one phase with unit stride;
//! * output point `(oy, ox)` is computed at flat index `oy · wq + ox` of a buffer whose rows
//!   are as wide as the phases (`wq`), so tap `(ky, kx)` reads the phase at the flat index plus
//!   one constant offset `(ky / s) · wq + kx / s`: the whole plane is one run of indices, cut
//!   into blocks of 64 (16 at the tail) accumulators held in registers across all taps;
//! * the `wq - ow` columns that fall in the padding are computed and dropped when the block is
//!   copied out with the bias.
//!
//! Channels are split over tract's executor (`tract_linalg::multithread`), so `--threads`
//! applies. The sums run tap by tap in row-major order, with fused multiply-adds on x86_64
//! with AVX2+FMA (chosen at run time) and on aarch64, plain multiply then add elsewhere: the
//! results differ from tract's in the last bits only (tested against a direct loop).
//!
//! Only what this does exactly is rewritten: f32, NCHW, 2-D, `group == channels`, dilation 1,
//! constant weights and bias. Every other conv stays tract's.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::array::{Pad, PadMode};
use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::DataFormat;

use crate::fastint8::FakeQuant;

/// Accumulators per block of the main loop (8 AVX2 registers, 16 NEON ones).
const BLOCK: usize = 64;
/// Accumulators per block at the tail of a plane.
const TAIL: usize = 16;

/// One depthwise convolution with its constants and geometry, for an `[n, c, h, w]` input.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseConv {
    /// `[n, c, h, w]`.
    input_shape: [usize; 4],
    /// Whether the tensors have the `n` axis (NCHW) or not (CHW, as tract declutters batch 1).
    with_n: bool,
    /// `[oh, ow]`.
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    stride: [usize; 2],
    pad_before: [usize; 2],
    /// Width of the padded input's phases, and of the computed rows.
    wq: usize,
    /// Floats per phase (rows of `wq`, with room for the last block's overrun).
    phase_len: usize,
    /// Per tap, row-major: where it reads in the phase buffer, relative to the output index.
    tap_offsets: Vec<usize>,
    /// `[c][kh · kw]`.
    weights: Arc<Vec<f32>>,
    /// `[c]`.
    bias: Arc<Vec<f32>>,
    /// `[lo, hi]` the output is clamped to (a following ReLU/ReLU6 folded in).
    clamp: [f32; 2],
}

impl Eq for DepthwiseConv {}

/// How a multiply-add is done: fused where the CPU has it (faster, one rounding), plain where
/// the fused form would be a library call.
trait MulAdd {
    fn mul_add(w: f32, x: f32, acc: f32) -> f32;
}

struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(w: f32, x: f32, acc: f32) -> f32 {
        w.mul_add(x, acc)
    }
}

#[allow(dead_code)] // only some targets use it
struct Plain;
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(w: f32, x: f32, acc: f32) -> f32 {
        acc + w * x
    }
}

impl DepthwiseConv {
    /// Geometry and constants; `weights` is `[c][kh · kw]`, `bias` `[c]`.
    pub fn new(
        input_shape: [usize; 4],
        kernel_hw: [usize; 2],
        stride: [usize; 2],
        pad_before: [usize; 2],
        pad_after: [usize; 2],
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) -> TractResult<DepthwiseConv> {
        let [_, c, h, w] = input_shape;
        let taps = kernel_hw[0] * kernel_hw[1];
        ensure!(weights.len() == c * taps && bias.len() == c, "depthwise constants mismatch");
        ensure!(stride[0] >= 1 && stride[1] >= 1 && taps >= 1);
        let hp = h + pad_before[0] + pad_after[0];
        let wp = w + pad_before[1] + pad_after[1];
        ensure!(hp >= kernel_hw[0] && wp >= kernel_hw[1], "depthwise kernel larger than input");
        let output_hw = [(hp - kernel_hw[0]) / stride[0] + 1, (wp - kernel_hw[1]) / stride[1] + 1];
        let hq = hp.div_ceil(stride[0]);
        let wq = wp.div_ceil(stride[1]);
        let computed = (output_hw[0] * wq).next_multiple_of(TAIL);
        let max_offset = (kernel_hw[0] - 1) / stride[0] * wq + (kernel_hw[1] - 1) / stride[1];
        let phase_len = (hq * wq).max(computed + max_offset);
        let phases_x = stride[1];
        let mut tap_offsets = Vec::with_capacity(taps);
        for ky in 0..kernel_hw[0] {
            for kx in 0..kernel_hw[1] {
                let phase = (ky % stride[0]) * phases_x + kx % stride[1];
                tap_offsets.push(phase * phase_len + ky / stride[0] * wq + kx / stride[1]);
            }
        }
        Ok(DepthwiseConv {
            input_shape,
            with_n: true,
            output_hw,
            kernel_hw,
            stride,
            pad_before,
            wq,
            phase_len,
            tap_offsets,
            weights: Arc::new(weights),
            bias: Arc::new(bias),
            clamp: crate::fastint8::NO_CLAMP,
        })
    }

    /// `[n, c, oh, ow]`, or `[c, oh, ow]` without the `n` axis.
    fn output_shape(&self) -> TVec<usize> {
        let [n, c, _, _] = self.input_shape;
        let [oh, ow] = self.output_hw;
        if self.with_n {
            tvec![n, c, oh, ow]
        } else {
            tvec![c, oh, ow]
        }
    }

    fn taps(&self) -> usize {
        self.kernel_hw[0] * self.kernel_hw[1]
    }

    /// Floats of scratch one plane needs: the phases, then the computed rows.
    fn scratch_len(&self) -> usize {
        self.stride[0] * self.stride[1] * self.phase_len
            + (self.output_hw[0] * self.wq).next_multiple_of(TAIL)
    }

    /// Writes `[oh][ow]` for channel `c` from its `[h][w]` input plane.
    #[inline(always)]
    fn plane_body<M: MulAdd>(&self, c: usize, x: &[f32], out: &mut [f32], scratch: &mut [f32]) {
        let [_, _, h, w] = self.input_shape;
        let [oh, ow] = self.output_hw;
        let [sy, sx] = self.stride;
        let wq = self.wq;
        let (phases, acc) = scratch.split_at_mut(sy * sx * self.phase_len);
        phases.fill(0.0);
        for (y, row) in x.chunks_exact(w).take(h).enumerate() {
            let py = y + self.pad_before[0];
            let base = (py % sy) * sx * self.phase_len + (py / sy) * wq;
            if sx == 1 {
                let start = base + self.pad_before[1];
                phases[start..start + w].copy_from_slice(row);
            } else if sx == 2 {
                // Split into even and odd padded columns, two at a time (vectorises).
                let pl = self.pad_before[1];
                let (first, rest) =
                    if pl % 2 == 1 { (Some(row[0]), &row[1..]) } else { (None, row) };
                let col = (pl + (pl % 2)) / 2;
                let (even, odd) = phases[base..].split_at_mut(self.phase_len);
                if let Some(v) = first {
                    odd[pl / 2] = v;
                }
                let pairs = rest.chunks_exact(2);
                let last = pairs.remainder().first().copied();
                let n = rest.len() / 2;
                for ((e, o), pair) in
                    even[col..col + n].iter_mut().zip(&mut odd[col..col + n]).zip(pairs)
                {
                    *e = pair[0];
                    *o = pair[1];
                }
                if let Some(v) = last {
                    even[col + n] = v;
                }
            } else {
                // Column phase p takes every sx-th input column, from the first whose padded
                // index is p modulo sx.
                let pl = self.pad_before[1];
                for p in 0..sx {
                    let x0 = (p + sx - pl % sx) % sx;
                    if x0 >= w {
                        continue;
                    }
                    let start = base + p * self.phase_len + (x0 + pl) / sx;
                    let dst = &mut phases[start..start + (w - x0).div_ceil(sx)];
                    for (d, v) in dst.iter_mut().zip(row[x0..].iter().step_by(sx)) {
                        *d = *v;
                    }
                }
            }
        }
        let taps = self.taps();
        let weights = &self.weights[c * taps..(c + 1) * taps];
        let computed = acc.len();
        let mut i0 = 0;
        while i0 + BLOCK <= computed {
            self.block::<M, BLOCK>(i0, weights, phases, &mut acc[i0..i0 + BLOCK]);
            i0 += BLOCK;
        }
        while i0 < computed {
            self.block::<M, TAIL>(i0, weights, phases, &mut acc[i0..i0 + TAIL]);
            i0 += TAIL;
        }
        let b = self.bias[c];
        let [lo, hi] = self.clamp;
        for (o, a) in out.chunks_exact_mut(ow).zip(acc.chunks(wq)).take(oh) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = (a + b).max(lo).min(hi);
            }
        }
    }

    /// `N` outputs from flat index `i0`, every tap, accumulators in registers.
    #[inline(always)]
    fn block<M: MulAdd, const N: usize>(
        &self,
        i0: usize,
        weights: &[f32],
        phases: &[f32],
        out: &mut [f32],
    ) {
        let mut acc = [0f32; N];
        for (&w, &offset) in weights.iter().zip(&self.tap_offsets) {
            let src: &[f32; N] = phases[i0 + offset..i0 + offset + N].try_into().unwrap();
            for j in 0..N {
                acc[j] = M::mul_add(w, src[j], acc[j]);
            }
        }
        out.copy_from_slice(&acc);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2(&self, c: usize, x: &[f32], out: &mut [f32], scratch: &mut [f32]) {
        self.plane_body::<Fused>(c, x, out, scratch)
    }

    fn plane(&self, c: usize, x: &[f32], out: &mut [f32], scratch: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { self.plane_avx2(c, x, out, scratch) };
            }
            self.plane_body::<Plain>(c, x, out, scratch)
        }
        #[cfg(target_arch = "aarch64")]
        self.plane_body::<Fused>(c, x, out, scratch);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        self.plane_body::<Plain>(c, x, out, scratch);
    }

    /// The whole `[n, c, h, w]` input into `[n, c, oh, ow]`, channels over the executor.
    pub fn compute(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        let [n, c, h, w] = self.input_shape;
        let in_plane = h * w;
        let out_plane = self.output_hw[0] * self.output_hw[1];
        ensure!(x.len() == n * c * in_plane && out.len() == n * c * out_plane);
        let work = out.len() * self.taps();
        tract_linalg::multithread::par_chunks_mut(out, out_plane, work, |first, chunk| {
            let mut scratch = vec![0f32; self.scratch_len()];
            for (i, o) in chunk.chunks_exact_mut(out_plane).enumerate() {
                let plane = first + i;
                let input = &x[plane * in_plane..(plane + 1) * in_plane];
                self.plane(plane % c, input, o, &mut scratch);
            }
            Ok(())
        })
    }
}

impl Op for DepthwiseConv {
    fn name(&self) -> StaticName {
        "DepthwiseConvF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "input {:?} kernel {:?} stride {:?} pad {:?}",
            self.input_shape, self.kernel_hw, self.stride, self.pad_before
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        // SAFETY: `compute` writes every element.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.output_shape())? };
        {
            let mut ram = out.try_as_plain_ram_mut()?;
            self.compute(x, ram.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        let skip = if self.with_n { 0 } else { 1 };
        ensure!(inputs[0].shape.as_concrete() == Some(&self.input_shape[skip..]));
        Ok(tvec!(f32::fact(self.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let [n, c, _, _] = self.input_shape;
        let macs = n * c * self.output_hw[0] * self.output_hw[1] * self.taps();
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

/// A zero `Pad` of the spatial axes feeding a conv, possibly through a [`FakeQuant`] (which
/// maps 0 to 0): its input, its pads `[top, left]` and `[bottom, right]`, and the fake
/// quantization to keep.
struct AbsorbedPad {
    input: OutletId,
    before: [usize; 2],
    after: [usize; 2],
    fake_quant: Option<FakeQuant>,
}

/// The pad in front of `outlet` (the conv's input) that the conv can take over.
fn absorbable_pad(model: &TypedModel, outlet: OutletId, rank: usize) -> Option<AbsorbedPad> {
    let single_use = |o: OutletId| {
        model.outlet_successors(o).len() == 1 && !model.output_outlets().unwrap().contains(&o)
    };
    let mut node = model.node(outlet.node);
    let mut fake_quant = None;
    if let Some(ew) = node.op_as::<ElementWiseOp>() {
        fake_quant = Some(ew.0.downcast_ref::<FakeQuant>()?.clone());
        if !single_use(node.inputs[0]) {
            return None;
        }
        node = model.node(node.inputs[0].node);
    }
    let pad = node.op_as::<Pad>()?;
    let PadMode::Constant(value) = &pad.mode else { return None };
    let zero = value.len() == 1 && value.cast_to_scalar::<f32>().ok()? == 0.0;
    let spatial = rank - 2;
    if !zero || pad.pads.len() != rank || pad.pads[..spatial].iter().any(|&p| p != (0, 0)) {
        return None;
    }
    if fake_quant.is_none() && !single_use(outlet) {
        return None;
    }
    let [(t, b), (l, r)] = [pad.pads[spatial], pad.pads[spatial + 1]];
    Some(AbsorbedPad { input: node.inputs[0], before: [t, l], after: [b, r], fake_quant })
}

/// This op for a decluttered tract `Conv` node, when it is one it computes exactly (see the
/// module docs), with the zero pad in front of it it can absorb; `None` otherwise.
fn for_conv(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(DepthwiseConv, Option<AbsorbedPad>)>> {
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    let channels = spec.input_channels;
    if conv.q_params.is_some()
        || conv.group != channels
        || spec.output_channels != channels
        || channels < 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|&d| d != 1)
        || conv.kernel_fmt != KernelFormat::OIHW
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = x.shape.as_concrete() else { return Ok(None) };
    let with_n = spec.data_format == DataFormat::NCHW;
    let shape: [usize; 4] = match (with_n, shape) {
        (true, &[n, c, h, w]) => [n, c, h, w],
        (false, &[c, h, w]) => [1, c, h, w],
        _ => return Ok(None),
    };
    if x.datum_type != f32::datum_type() || shape[1] != channels {
        return Ok(None);
    }
    let (kernel, bias) = (model.outlet_fact(node.inputs[1])?, model.outlet_fact(node.inputs[2])?);
    let (Some(kernel), Some(bias)) = (&kernel.konst, &bias.konst) else { return Ok(None) };
    let [kh, kw] = [spec.kernel_shape[0], spec.kernel_shape[1]];
    if kernel.datum_type() != f32::datum_type()
        || kernel.shape() != [channels, 1, kh, kw]
        || bias.datum_type() != f32::datum_type()
    {
        return Ok(None);
    }
    let weights = kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias_values = bias.try_as_plain_ram()?.as_slice::<f32>()?;
    let bias = match bias_values.len() {
        1 => vec![bias_values[0]; channels],
        n if n == channels => bias_values.to_vec(),
        _ => return Ok(None),
    };
    let padding = spec.computed_padding(&shape[2..]);
    let expected = [padding[0].convoluted, padding[1].convoluted];
    let mut before = [padding[0].pad_before, padding[1].pad_before];
    let mut after = [padding[0].pad_after, padding[1].pad_after];
    let mut input_shape = shape;
    let absorbed = absorbable_pad(model, node.inputs[0], if with_n { 4 } else { 3 });
    if let Some(pad) = &absorbed {
        for axis in 0..2 {
            before[axis] += pad.before[axis];
            after[axis] += pad.after[axis];
            input_shape[2 + axis] -= pad.before[axis] + pad.after[axis];
        }
    }
    let mut op = DepthwiseConv::new(
        input_shape,
        [kh, kw],
        [spec.stride(0), spec.stride(1)],
        before,
        after,
        weights,
        bias,
    )?;
    op.with_n = with_n;
    Ok((op.output_hw == expected).then_some((op, absorbed)))
}

/// What [`rewrite`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DepthwiseSummary {
    /// Depthwise convs now on [`DepthwiseConv`].
    pub replaced: usize,
    /// Zero pads in front of them taken over as their padding.
    pub pads_absorbed: usize,
    /// ReLU/ReLU6/Clip after them folded in.
    pub clamps_folded: usize,
}

/// Replaces every depthwise conv of a decluttered typed model that [`DepthwiseConv`] computes
/// exactly, taking over a zero pad in front of it and a clamp after it.
pub fn rewrite(model: &mut TypedModel) -> TractResult<DepthwiseSummary> {
    let mut summary = DepthwiseSummary::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((mut op, absorbed)) = for_conv(model, node)? else { continue };
        let mut last = OutletId::new(id, 0);
        if let Some((clamp, after)) = crate::fastint8::following_clamp(model, last)? {
            op.clamp = clamp;
            last = after;
            summary.clamps_folded += 1;
        }
        let mut patch = TypedModelPatch::new(format!("depthwise {}", node.name));
        let mut x = match &absorbed {
            Some(pad) => patch.tap_model(model, pad.input)?,
            None => patch.tap_model(model, node.inputs[0])?,
        };
        if let Some(fq) = absorbed.as_ref().and_then(|p| p.fake_quant.clone()) {
            let name = format!("{}.fake_quant", node.name);
            x = patch.wire_node(name, ElementWiseOp(Box::new(fq), None), &[x])?[0];
        }
        summary.pads_absorbed += absorbed.is_some() as usize;
        let y = patch.wire_node(&node.name, op, &[x])?[0];
        patch.shunt_outside(model, last, y)?;
        patch.apply(model)?;
        summary.replaced += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct loop over the definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        shape: [usize; 4],
        k: [usize; 2],
        s: [usize; 2],
        pb: [usize; 2],
        oh: usize,
        ow: usize,
        x: &[f32],
        w: &[f32],
        b: &[f32],
    ) -> Vec<f32> {
        let [n, c, h, wd] = shape;
        let mut out = vec![0f32; n * c * oh * ow];
        for p in 0..n * c {
            let ch = p % c;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = b[ch] as f64;
                    for ky in 0..k[0] {
                        for kx in 0..k[1] {
                            let iy = (oy * s[0] + ky) as isize - pb[0] as isize;
                            let ix = (ox * s[1] + kx) as isize - pb[1] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            let v = x[p * h * wd + iy as usize * wd + ix as usize] as f64;
                            sum += v * w[ch * k[0] * k[1] + ky * k[1] + kx] as f64;
                        }
                    }
                    out[p * oh * ow + oy * ow + ox] = sum as f32;
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_for_convnext_and_efficientnet_shapes() {
        // (input, kernel, stride, pad before, pad after)
        type Case = ([usize; 4], [usize; 2], [usize; 2], [usize; 2], [usize; 2]);
        let cases: &[Case] = &[
            ([1, 3, 14, 14], [7, 7], [1, 1], [3, 3], [3, 3]),
            ([1, 2, 7, 7], [7, 7], [1, 1], [3, 3], [3, 3]),
            ([2, 3, 9, 11], [3, 3], [1, 1], [1, 1], [1, 1]),
            ([1, 4, 112, 112], [3, 3], [2, 2], [0, 0], [1, 1]),
            ([1, 3, 15, 13], [5, 5], [2, 2], [1, 2], [2, 1]),
            ([1, 2, 8, 8], [3, 5], [2, 1], [0, 2], [1, 2]),
            ([1, 2, 5, 5], [5, 5], [1, 1], [0, 0], [0, 0]),
            ([1, 3, 11, 9], [3, 3], [2, 2], [1, 1], [1, 1]),
            ([1, 2, 10, 10], [3, 3], [3, 3], [1, 2], [1, 0]),
        ];
        for &(shape, k, s, pb, pa) in cases {
            let [n, c, h, w] = shape;
            let x = values(n * c * h * w, 7);
            let wt = values(c * k[0] * k[1], 11);
            let b = values(c, 13);
            let op = DepthwiseConv::new(shape, k, s, pb, pa, wt.clone(), b.clone()).unwrap();
            let [oh, ow] = op.output_hw;
            assert_eq!(oh, (h + pb[0] + pa[0] - k[0]) / s[0] + 1);
            let mut out = vec![f32::NAN; n * c * oh * ow];
            op.compute(&x, &mut out).unwrap();
            let want = reference(shape, k, s, pb, oh, ow, &x, &wt, &b);
            let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{shape:?} k{k:?} s{s:?}: max diff {worst}");
        }
    }

    #[test]
    fn channels_split_over_two_threads_give_the_same_values() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let shape = [1, 24, 28, 28];
        let x = values(24 * 28 * 28, 1);
        let op = DepthwiseConv::new(
            shape,
            [7, 7],
            [1, 1],
            [3, 3],
            [3, 3],
            values(24 * 49, 2),
            values(24, 3),
        )
        .unwrap();
        let run = || {
            let mut out = vec![0f32; x.len()];
            op.compute(&x, &mut out).unwrap();
            out
        };
        let one = multithread_tract_scope(Executor::SingleThread, run);
        assert_eq!(one, multithread_tract_scope(Executor::multithread(2), run));
    }

    /// EfficientNet's form: batch-free CHW, an explicit zero `Pad` in front, ReLU6 after; the
    /// pad and the clamp are taken in and the result is stock tract's.
    #[test]
    fn pad_in_front_and_relu6_after_are_folded_in() {
        use tract_core::ops::binary::TypedBinOp;
        use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
        use tract_core::ops::math::{Max, Min};
        let (c, h, w) = (6usize, 15usize, 16usize);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([c, h, w])).unwrap();
        let pad =
            Pad::new(vec![(0, 0), (1, 2), (2, 1)], PadMode::Constant(Arc::new(tensor0(0f32))));
        let padded = model.wire_node("pad", pad, &[x]).unwrap();
        let kernel = Tensor::from_shape(&[c, 1, 3, 3], &values(c * 9, 3)).unwrap();
        let kernel = model.add_const("k", kernel).unwrap();
        let bias = model.add_const("b", Tensor::from_shape(&[c], &values(c, 5)).unwrap()).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::CHW,
            kernel_shape: tvec!(3, 3),
            padding: PaddingSpec::Explicit(tvec!(0, 0), tvec!(0, 0)),
            dilations: None,
            strides: Some(tvec!(2, 2)),
            input_channels: c,
            output_channels: c,
        };
        let conv =
            Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group: c, q_params: None };
        let y = model.wire_node("conv", conv, &[padded[0], kernel, bias]).unwrap();
        let scalar = |v: f32| Tensor::from_shape(&[1, 1, 1], &[v]).unwrap();
        let zero = model.add_const("zero", scalar(0.0)).unwrap();
        let half = model.add_const("half", scalar(0.5)).unwrap();
        let y = model.wire_node("relu", TypedBinOp(Box::new(Max), None), &[y[0], zero]).unwrap();
        let y =
            model.wire_node("relu_half", TypedBinOp(Box::new(Min), None), &[y[0], half]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(&[c, h, w], &values(c * h * w, 9)).unwrap();
        let stock = model.clone().into_runnable().unwrap();
        let want = stock.run(tvec!(input.clone().into_tvalue())).unwrap();
        let mut ours = model;
        let summary = rewrite(&mut ours).unwrap();
        assert_eq!(
            summary,
            DepthwiseSummary { replaced: 1, pads_absorbed: 1, clamps_folded: 1 },
            "{ours}"
        );
        let ours = ours.into_optimized().unwrap();
        assert!(!ours.nodes().iter().any(|n| n.op_is::<Pad>() || n.op_is::<TypedBinOp>()));
        let got = ours.into_runnable().unwrap().run(tvec!(input.into_tvalue())).unwrap();
        assert_eq!(got[0].shape(), want[0].shape());
        got[0].close_enough(&want[0], true).unwrap();
        let out = got[0].to_plain_array_view::<f32>().unwrap();
        assert!(out.iter().any(|&v| v == 0.5) && out.iter().any(|&v| v == 0.0));
    }

    /// The rewrite on a real depthwise conv graph computes what tract's own op does.
    #[test]
    fn rewritten_model_matches_tracts_depthwise() {
        use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
        let (c, h, w) = (8usize, 20usize, 17usize);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let kernel = Tensor::from_shape(&[c, 1, 5, 5], &values(c * 25, 3)).unwrap();
        let kernel = model.add_const("k", kernel).unwrap();
        let bias = model.add_const("b", Tensor::from_shape(&[c], &values(c, 5)).unwrap()).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(5, 5),
            padding: PaddingSpec::Explicit(tvec!(2, 2), tvec!(2, 2)),
            dilations: None,
            strides: Some(tvec!(2, 2)),
            input_channels: c,
            output_channels: c,
        };
        let conv =
            Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group: c, q_params: None };
        let y = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(&[1, c, h, w], &values(c * h * w, 9)).unwrap();
        let stock = model.clone().into_optimized().unwrap().into_runnable().unwrap();
        let want = stock.run(tvec!(input.clone().into_tvalue())).unwrap();
        let mut ours = model.into_decluttered().unwrap();
        assert_eq!(rewrite(&mut ours).unwrap().replaced, 1);
        let ours = ours.into_optimized().unwrap();
        assert!(ours.nodes().iter().any(|n| n.op_is::<DepthwiseConv>()));
        let got = ours.into_runnable().unwrap().run(tvec!(input.into_tvalue())).unwrap();
        assert_eq!(got[0].shape(), want[0].shape());
        got[0].close_enough(&want[0], true).unwrap();
    }
}

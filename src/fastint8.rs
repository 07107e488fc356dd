//! The int8 form's fast path: a load-time rewrite of the decluttered QDQ graph that puts the
//! quantized MatMuls and 1x1 convs on tract's integer matmul kernels.
//!
//! tract folds a QDQ file's weight `DequantizeLinear` into f32 constants and runs the
//! activation `QuantizeLinear → DequantizeLinear` pairs as scalar loops, so the int8 file runs
//! slower than f32. The file stays standard QDQ; at load time, for each
//! `Q(x) → DQ → EinSum/Conv1x1(W)` where `W` is an int8 tensor times a per-output-channel scale,
//! this module wires instead
//!
//! `x f32 → QuantizeI8 → i8 × i8 EinSum (i32 accumulation) → DequantizeAcc → f32`
//!
//! where [`QuantizeI8`] is a vectorisable quantizer (u8 activations shifted by -128 so both
//! operands are i8, tract's VNNI/NEON dot-product kernels), and [`DequantizeAcc`] applies, in
//! one pass, the activation zero-point correction (`zp · Σ_k w[k, n]`), the per-channel scale
//! `s_x · s_w[n]`, the bias and a following per-channel `Mul` (ConvNeXt's layer scale).
//! The arithmetic is the QDQ graph's: the integer products are exact, only the f32 summation
//! order differs.
//!
//! By policy, everything else stays f32: depthwise and strided convs (the stem and
//! downsampling convs, a few percent of ConvNeXt's FLOPs), LayerNorm, GELU; their remaining
//! `Q → DQ` pairs become one vectorised [`FakeQuant`] pass with the same values. The f32 ops
//! the int8 form keeps get the same own ops as the f32 form ([`crate::depthwise`],
//! [`crate::layernorm`]), applied after this rewrite by the engine. A ReLU/ReLU6 after a
//! dequantization is folded into it as a clamp.
//!
//! [`QuantizeI8`], [`FakeQuant`] and [`DequantizeAcc`] split their work over tract's executor
//! (`tract_linalg::multithread`), as tract's own element-wise ops do, so `--threads` applies.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::DataFormat;
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// `x + MAGIC - MAGIC` rounds an f32 of magnitude below 2^22 to an integer, ties to even (the
/// default rounding mode), in plain vectorisable arithmetic.
const ROUND_MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23

/// An activation's quantization: `q = clamp(round(x / s) + zp, qmin, qmax)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    /// `1 / s`, as tract's QuantizeLinear multiplies by it.
    pub inv_scale: f32,
    /// `s`, as the matching DequantizeLinear multiplies by it.
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl ActQuant {
    /// u8 values are stored shifted by -128 as i8, so that both matmul operands are i8.
    fn shift(&self) -> i32 {
        if self.qmin == 0 {
            128
        } else {
            0
        }
    }

    /// The zero point of the stored i8 values.
    fn stored_zero_point(&self) -> i32 {
        self.zero_point - self.shift()
    }

    /// The float-domain bounds of `x / s` and the integer to add after rounding, for values
    /// stored shifted by `shift`.
    fn kernel(&self, shift: i32) -> QuantKernel {
        QuantKernel {
            inv_scale: self.inv_scale,
            lo: (self.qmin - self.zero_point) as f32,
            hi: (self.qmax - self.zero_point) as f32,
            add: self.zero_point - shift,
        }
    }
}

/// The quantizer's inner loop, `clamp(round(x · inv_scale), lo, hi) + add`, written so that
/// it vectorises: clamping before rounding is exact (the bounds are integers), and adding
/// [`ROUND_MAGIC`] leaves the rounded integer in the low mantissa bits.
#[derive(Debug, Clone, Copy)]
struct QuantKernel {
    inv_scale: f32,
    lo: f32,
    hi: f32,
    add: i32,
}

impl QuantKernel {
    #[inline(always)]
    fn level(&self, x: f32) -> i32 {
        let a = x * self.inv_scale;
        let a = if a < self.lo { self.lo } else { a };
        let a = if a > self.hi { self.hi } else { a };
        (a + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC.to_bits() as i32 + self.add
    }

    #[inline(always)]
    fn quantize_body(&self, xs: &[f32], ys: &mut [i8]) {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            *y = self.level(*x) as i8;
        }
    }

    /// `(level - zp) · s` in place, as `QuantizeLinear → DequantizeLinear` computes it (with
    /// `add` the zero point, `level` is the quantized value).
    #[inline(always)]
    fn fake_quant_body(&self, xs: &mut [f32], zero_point: i32, scale: f32) {
        for x in xs.iter_mut() {
            *x = (self.level(*x) - zero_point) as f32 * scale;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_avx2(&self, xs: &[f32], ys: &mut [i8]) {
        self.quantize_body(xs, ys)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fake_quant_avx2(&self, xs: &mut [f32], zero_point: i32, scale: f32) {
        self.fake_quant_body(xs, zero_point, scale)
    }

    fn quantize(&self, xs: &[f32], ys: &mut [i8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.quantize_avx2(xs, ys) };
        }
        self.quantize_body(xs, ys)
    }

    fn fake_quant(&self, xs: &mut [f32], zero_point: i32, scale: f32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.fake_quant_avx2(xs, zero_point, scale) };
        }
        self.fake_quant_body(xs, zero_point, scale)
    }
}

impl Eq for ActQuant {}

/// Runs `f(first, part)` on disjoint runs of `out` covering it, `first` the index of the run's
/// first element, over tract's executor (`--threads`) when `out` is long enough to pay.
fn par_elements<T: Send>(
    out: &mut [T],
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> TractResult<()> {
    let len = out.len();
    tract_linalg::multithread::par_chunks_mut(out, 1, len, |first, part| {
        f(first, part);
        Ok(())
    })
}

/// f32 → i8: the activation quantizer, `clamp(round(x / s) + zp, qmin, qmax) - shift`
/// (shift 128 for u8 activations, 0 for i8). Same shape, i8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeI8(pub ActQuant);

impl ElementWiseMiniOp for QuantizeI8 {
    fn name(&self) -> String {
        "QuantizeI8".into()
    }

    fn output_type(&self, _input_type: DatumType) -> Option<DatumType> {
        Some(i8::datum_type())
    }

    fn eval_out_of_place(&self, t: &Tensor, _out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let xs = t.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut out = Tensor::zero::<i8>(t.shape())?;
        let mut ram = out.try_as_plain_ram_mut()?;
        let kernel = self.0.kernel(self.0.shift());
        par_elements(ram.as_slice_mut::<i8>()?, |first, ys| {
            kernel.quantize(&xs[first..first + ys.len()], ys)
        })?;
        Ok(out)
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {} zero_point: {}", self.0.scale, self.0.zero_point)])
    }
}

/// f32 → f32: a `QuantizeLinear → DequantizeLinear` pair in one pass, same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeQuant(pub ActQuant);

impl ElementWiseMiniOp for FakeQuant {
    fn name(&self) -> String {
        "FakeQuant".into()
    }

    fn eval_in_place(&self, t: &mut Tensor, _out_dt: Option<DatumType>) -> TractResult<()> {
        let mut ram = t.try_as_plain_ram_mut()?;
        let kernel = self.0.kernel(0);
        par_elements(ram.as_slice_mut::<f32>()?, |_, xs| {
            kernel.fake_quant(xs, self.0.zero_point, self.0.scale)
        })
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {} zero_point: {}", self.0.scale, self.0.zero_point)])
    }
}

/// i32 accumulators → f32: `y = (acc - correction[c]) · scale[c] + bias[c]`, `c` the index
/// along `axis` (the output channel). Same shape, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct DequantizeAcc {
    pub axis: usize,
    /// `zp_x · Σ_k w[k, c]`, exact in i32.
    pub correction: Arc<Vec<i32>>,
    /// `s_x · s_w[c]` (times any per-channel factor folded in after).
    pub scale: Arc<Vec<f32>>,
    pub bias: Arc<Vec<f32>>,
    /// `[lo, hi]` the result is clamped to (a following ReLU/ReLU6 folded in);
    /// `[-inf, inf]` for none.
    pub clamp: [f32; 2],
}

impl Eq for DequantizeAcc {}

impl DequantizeAcc {
    /// Rows of `row_len(shape)` elements, `out` starting at row `first_row`.
    fn row_len(&self, shape: &[usize]) -> usize {
        let inner: usize = shape[self.axis + 1..].iter().product();
        if inner == 1 {
            shape[self.axis]
        } else {
            inner
        }
    }

    #[inline(always)]
    fn eval_body(&self, shape: &[usize], first_row: usize, acc: &[i32], out: &mut [f32]) {
        let channels = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        let (corr, scale, bias) = (&self.correction[..], &self.scale[..], &self.bias[..]);
        let [lo, hi] = self.clamp;
        if inner == 1 {
            for (a, y) in acc.chunks_exact(channels).zip(out.chunks_exact_mut(channels)) {
                let params = corr.iter().zip(scale).zip(bias);
                for ((a, y), ((z, s), b)) in a.iter().zip(y.iter_mut()).zip(params) {
                    *y = ((a - z) as f32 * s + b).max(lo).min(hi);
                }
            }
            return;
        }
        let rows = acc.chunks_exact(inner).zip(out.chunks_exact_mut(inner));
        for (row, (a, y)) in rows.enumerate() {
            let c = (first_row + row) % channels;
            let (z, s, b) = (corr[c], scale[c], bias[c]);
            for (a, y) in a.iter().zip(y.iter_mut()) {
                *y = ((a - z) as f32 * s + b).max(lo).min(hi);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn eval_avx2(&self, shape: &[usize], first_row: usize, acc: &[i32], out: &mut [f32]) {
        self.eval_body(shape, first_row, acc, out)
    }

    fn eval_rows(&self, shape: &[usize], first_row: usize, acc: &[i32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.eval_avx2(shape, first_row, acc, out) };
        }
        self.eval_body(shape, first_row, acc, out)
    }

    /// The whole tensor, rows split over tract's executor.
    fn eval_slices(&self, shape: &[usize], acc: &[i32], out: &mut [f32]) -> TractResult<()> {
        let row_len = self.row_len(shape);
        let len = out.len();
        tract_linalg::multithread::par_chunks_mut(out, row_len, len, |first_row, part| {
            let start = first_row * row_len;
            self.eval_rows(shape, first_row, &acc[start..start + part.len()], part);
            Ok(())
        })
    }
}

impl Op for DequantizeAcc {
    fn name(&self) -> StaticName {
        "DequantizeAcc".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {} channels: {}", self.axis, self.scale.len())])
    }

    op_as_typed_op!();
}

impl EvalOp for DequantizeAcc {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let acc = input.try_as_plain_ram()?.as_slice::<i32>()?;
        let mut out = Tensor::zero::<f32>(input.shape())?;
        let mut ram = out.try_as_plain_ram_mut()?;
        self.eval_slices(input.shape(), acc, ram.as_slice_mut::<f32>()?)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DequantizeAcc {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == i32::datum_type());
        Ok(tvec!(f32::datum_type().fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// What [`rewrite`] did, for the log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteSummary {
    /// MatMuls and 1x1 convs now on the integer kernels.
    pub integer_matmuls: usize,
    /// Per-channel `Add`/`Mul` constants folded into the dequantization.
    pub folded_affine: usize,
    /// `Q → DQ` pairs left in front of float ops, now one `FakeQuant` pass each.
    pub fake_quant: usize,
    /// Quantized matmuls left on the float path, with the reason.
    pub skipped: Vec<String>,
}

/// Rewrites a decluttered typed QDQ model in place (see the module docs).
pub fn rewrite(model: &mut TypedModel) -> TractResult<RewriteSummary> {
    let mut summary = RewriteSummary::default();
    let candidates: Vec<usize> = model
        .eval_order()?
        .into_iter()
        .filter(|&id| {
            let node = model.node(id);
            node.op_is::<EinSum>() || node.op_is::<Conv>()
        })
        .collect();
    for id in candidates {
        let Some(act) = dequantized_input(model, model.node(id).inputs[0])? else { continue };
        match integer_matmul_patch(model, id, &act)? {
            Ok((patch, folded)) => {
                patch.apply(model)?;
                summary.integer_matmuls += 1;
                summary.folded_affine += folded;
            }
            Err(reason) => {
                if let Some(reason) = reason {
                    summary.skipped.push(format!("{}: {reason}", model.node(id).name));
                }
            }
        }
    }
    summary.fake_quant = fuse_fake_quant(model)?;
    Ok(summary)
}

/// `Some(params)` when `outlet` is `DequantizeLinearF32(QuantizeLinear(x))` with matching
/// scale and zero point.
fn dequantized_input(model: &TypedModel, outlet: OutletId) -> TractResult<Option<ActQuant>> {
    let dq_node = model.node(outlet.node);
    let Some(dq) = dq_node.op_as::<DequantizeLinearF32>() else { return Ok(None) };
    let q_node = model.node(dq_node.inputs[0].node);
    let Some(act) = quantize_params(q_node, dq) else { return Ok(None) };
    Ok(Some(act))
}

fn quantize_params(q_node: &TypedNode, dq: &DequantizeLinearF32) -> Option<ActQuant> {
    let ew = q_node.op_as::<ElementWiseOp>()?;
    let (inv_scale, zero_point, qmin, qmax) =
        if let Some(q) = ew.0.downcast_ref::<QuantizeLinearU8>() {
            (q.scale, q.zero_point as i32, 0, 255)
        } else {
            let q = ew.0.downcast_ref::<QuantizeLinearI8>()?;
            (q.scale, q.zero_point as i32, -128, 127)
        };
    (zero_point == dq.zero_point).then_some(ActQuant {
        inv_scale,
        scale: dq.scale,
        zero_point,
        qmin,
        qmax,
    })
}

/// A matmul in the shape the integer path takes: the weight as `[K, N]`-like constant with its
/// axes named by an einsum mapping, the activation first.
struct MatMulForm {
    axes: AxesMapping,
    /// The weight, in the layout `axes` names for input 1.
    weight: Weight,
    /// Position of the output channel axis in the weight and in the output.
    weight_n: usize,
    output_n: usize,
    /// A bias to add per output channel (a conv's third input).
    bias: Option<Vec<f32>>,
}

/// A matmul weight as the decluttered graph holds it.
enum Weight {
    /// Folded to an f32 constant, `q · s[n]`.
    Folded(Arc<Tensor>),
    /// Left as `Cast(q) · s` (tract does not fold large constants): the int8 values and the
    /// per-channel scales.
    Int8(Arc<Tensor>, Vec<f32>),
}

/// `Ok((patch, folded))`, or `Err(Some(reason))` for a quantized matmul that stays float,
/// `Err(None)` for an op outside the pattern.
type PatchOrReason = Result<(TypedModelPatch, usize), Option<String>>;

fn integer_matmul_patch(
    model: &TypedModel,
    id: usize,
    act: &ActQuant,
) -> TractResult<PatchOrReason> {
    let node = model.node(id);
    let form = if let Some(op) = node.op_as::<EinSum>() {
        einsum_form(model, node, op)?
    } else if let Some(op) = node.op_as::<Conv>() {
        conv1x1_form(model, node, op)?
    } else {
        return Ok(Err(None));
    };
    let form = match form {
        Ok(form) => form,
        Err(reason) => return Ok(Err(reason)),
    };
    let split = match &form.weight {
        Weight::Folded(w) => int8_per_channel(w, form.weight_n)?,
        Weight::Int8(q, scales) => Some((q.clone().into_tensor(), scales.clone())),
    };
    let Some((wq, w_scales)) = split else {
        return Ok(Err(Some("weight is not int8 times a per-output-channel scale".into())));
    };
    let channels = w_scales.len();
    let k_sums = channel_sums(&wq, form.weight_n)?;
    let zp = act.stored_zero_point();
    let mut dequant = DequantizeAcc {
        axis: form.output_n,
        correction: Arc::new(k_sums.iter().map(|s| zp * s).collect()),
        scale: Arc::new(w_scales.iter().map(|s| s * act.scale).collect()),
        bias: Arc::new(form.bias.unwrap_or_else(|| vec![0.0; channels])),
        clamp: NO_CLAMP,
    };

    let mut patch = TypedModelPatch::new(format!("int8 matmul {}", node.name));
    // The activation is DequantizeLinear(QuantizeLinear(x)): tap x, the f32 before both.
    let quantized = model.node(node.inputs[0].node).inputs[0];
    let x_f32 = patch.tap_model(model, model.node(quantized.node).inputs[0])?;
    let xq = patch.wire_node(
        format!("{}.quantize", node.name),
        ElementWiseOp(Box::new(QuantizeI8(*act)), None),
        &[x_f32],
    )?[0];
    let w = patch.add_const(format!("{}.weight_i8", node.name), wq)?;
    let einsum = EinSum::new(form.axes, i32::datum_type());
    let acc = patch.wire_node(format!("{}.int8", node.name), einsum, &[xq, w])?[0];

    let (last, folded) = fold_affine(model, id, &mut dequant)?;
    let y = patch.wire_node(format!("{}.dequantize", node.name), dequant, &[acc])?[0];
    patch.shunt_outside(model, last, y)?;
    Ok(Ok((patch, folded)))
}

/// An EinSum with two inputs, the second a rank-2 f32 constant `[k, n]` (in either order).
fn einsum_form(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
) -> TractResult<Result<MatMulForm, Option<String>>> {
    if op.q_params.is_some() || node.inputs.len() != 2 || op.operating_dt != f32::datum_type() {
        return Ok(Err(None));
    }
    let rank = model.outlet_fact(node.inputs[1])?.rank();
    if rank != 2 {
        return Ok(Err(Some(format!("weight has rank {rank}"))));
    }
    let in_output = |pos: usize| -> Option<usize> {
        let axis = op.axes.axis((InOut::In(1), pos)).ok()?;
        axis.outputs[0].first().copied()
    };
    let (weight_n, output_n) = match (in_output(0), in_output(1)) {
        (None, Some(o)) => (1, o),
        (Some(o), None) => (0, o),
        _ => return Ok(Err(Some("weight is not [K, N]".into()))),
    };
    let k_axis = op.axes.axis((InOut::In(1), 1 - weight_n))?;
    if k_axis.inputs[0].len() != 1 {
        return Ok(Err(Some("reduction axis is not shared with the activation".into())));
    }
    let weight = if let Some(w) = model.outlet_fact(node.inputs[1])?.konst.clone() {
        Weight::Folded(w)
    } else if let Some((q, scales)) = cast_times_scale(model, node.inputs[1], weight_n)? {
        Weight::Int8(q, scales)
    } else {
        return Ok(Err(Some("weight is neither a constant nor int8 times a scale".into())));
    };
    Ok(Ok(MatMulForm { axes: op.axes.clone(), weight, weight_n, output_n, bias: None }))
}

/// `Some((q, s))` when `outlet` is `Cast<f32>(q) · s` with `q` a rank-2 i8 constant and `s` a
/// constant varying along `n_axis` only (the unfolded form of a per-channel weight
/// `DequantizeLinear` with zero points 0).
fn cast_times_scale(
    model: &TypedModel,
    outlet: OutletId,
    n_axis: usize,
) -> TractResult<Option<(Arc<Tensor>, Vec<f32>)>> {
    let mul = model.node(outlet.node);
    let is_mul = mul.op_as::<TypedBinOp>().is_some_and(|b| b.0.name() == "Mul");
    if !is_mul || mul.inputs.len() != 2 {
        return Ok(None);
    }
    for (cast_in, scale_in) in [(mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])] {
        let cast = model.node(cast_in.node);
        if !cast.op_is::<tract_core::ops::cast::Cast>() {
            continue;
        }
        let Some(q) = model.outlet_fact(cast.inputs[0])?.konst.clone() else { continue };
        let Some(s) = model.outlet_fact(scale_in)?.konst.clone() else { continue };
        if q.datum_type() != i8::datum_type() || q.rank() != 2 {
            continue;
        }
        let channels = q.shape()[n_axis];
        if let Some(scales) = per_channel_values(&s, 2, n_axis, channels)? {
            return Ok(Some((q, scales)));
        }
    }
    Ok(None)
}

/// A 1x1, stride-1, unpadded, ungrouped NCHW/NHWC conv with constant OIHW weights and bias,
/// as an einsum over the channel axis.
fn conv1x1_form(
    model: &TypedModel,
    node: &TypedNode,
    op: &Conv,
) -> TractResult<Result<MatMulForm, Option<String>>> {
    let spec = &op.pool_spec;
    let pointwise = spec.kernel_shape.iter().all(|k| *k == 1)
        && spec.strides().iter().all(|s| *s == 1)
        && (0..spec.rank()).all(|d| spec.padding.valid_dim(d, true))
        && op.group == 1
        && op.q_params.is_none()
        && op.kernel_fmt == KernelFormat::OIHW
        && node.inputs.len() == 3;
    if !pointwise {
        return Ok(Err(Some("not a 1x1 stride-1 conv (kept float by policy)".into())));
    }
    let facts = model.node_input_facts(node.id)?;
    let (Some(weight), Some(bias)) = (facts[1].konst.clone(), facts[2].konst.clone()) else {
        return Ok(Err(Some("weight or bias is not a constant".into())));
    };
    let (o, i) = (weight.shape()[0], weight.shape()[1]);
    let weight = weight.into_tensor().into_shape(&[o, i])?;
    let bias = bias.cast_to::<f32>()?.into_owned();
    let bias: Vec<f32> = match bias.len() {
        1 => vec![bias.try_as_plain_ram()?.as_slice::<f32>()?[0]; o],
        n if n == o => bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        n => return Ok(Err(Some(format!("bias has {n} values for {o} channels")))),
    };
    let rank = facts[0].rank();
    let (input, output) = match (spec.data_format, rank) {
        (DataFormat::NCHW, 4) => ("bkhw", "bnhw"),
        (DataFormat::NHWC, 4) => ("bhwk", "bhwn"),
        (DataFormat::CHW, 3) => ("khw", "nhw"),
        (DataFormat::HWC, 3) => ("hwk", "hwn"),
        _ => return Ok(Err(Some(format!("conv layout {:?} rank {rank}", spec.data_format)))),
    };
    let axes = AxesMapping::from_strs(&[input, "nk"], &[output])?;
    let output_n = output.find('n').expect("n is in every output layout");
    let weight = Weight::Folded(weight.into_arc_tensor());
    Ok(Ok(MatMulForm { axes, weight, weight_n: 0, output_n, bias: Some(bias) }))
}

/// Splits a rank-2 f32 weight into int8 values and one scale per channel along `n_axis`
/// (`max |w| / 127`, the convention of edgeverify's quantizer and ONNX Runtime's symmetric
/// one), or `None` when the weight is not exactly such a product (another quantizer's range,
/// or a float weight): that matmul then stays on the float path.
pub fn int8_per_channel(weight: &Tensor, n_axis: usize) -> TractResult<Option<(Tensor, Vec<f32>)>> {
    let w = weight.cast_to::<f32>()?;
    let view = w.to_plain_array_view::<f32>()?.into_dimensionality::<tract_ndarray::Ix2>()?;
    let channels = view.shape()[n_axis];
    let mut scales = vec![1f32; channels];
    for (c, scale) in scales.iter_mut().enumerate() {
        let lane = view.index_axis(tract_ndarray::Axis(n_axis), c);
        let max = lane.iter().fold(0f32, |m, v| m.max(v.abs()));
        if max > 0.0 {
            *scale = max / 127.0;
        }
    }
    let mut q = tract_ndarray::Array2::<i8>::zeros(view.raw_dim());
    for ((r, c), v) in view.indexed_iter() {
        let s = scales[if n_axis == 0 { r } else { c }];
        let level = (v / s).round();
        // The folded weight is `q · s_file`; `s` may differ from `s_file` by an ulp.
        if level.abs() > 127.0 || (level * s - v).abs() > 1e-5 * s.max(v.abs()) {
            return Ok(None);
        }
        q[(r, c)] = level as i8;
    }
    Ok(Some((q.into_tensor(), scales)))
}

/// `Σ_k w[k, c]` for each channel `c` along `n_axis` of an i8 rank-2 tensor.
fn channel_sums(wq: &Tensor, n_axis: usize) -> TractResult<Vec<i32>> {
    let view = wq.to_plain_array_view::<i8>()?.into_dimensionality::<tract_ndarray::Ix2>()?;
    let channels = view.shape()[n_axis];
    Ok((0..channels)
        .map(|c| view.index_axis(tract_ndarray::Axis(n_axis), c).iter().map(|v| *v as i32).sum())
        .collect())
}

/// Folds the chain of per-channel `Add`/`Mul` by constants after node `id` into `dequant`;
/// returns the last folded outlet (or the node's own) and how many were folded.
fn fold_affine(
    model: &TypedModel,
    id: usize,
    dequant: &mut DequantizeAcc,
) -> TractResult<(OutletId, usize)> {
    let mut last = OutletId::new(id, 0);
    let mut folded = 0;
    let rank = model.outlet_fact(last)?.rank();
    let channels = dequant.scale.len();
    while let Some(next) = model.single_succ(last.node)? {
        if model.outlet_successors(last).len() != 1 || model.output_outlets()?.contains(&last) {
            break;
        }
        if let Some((clamp, after)) = following_clamp(model, last)? {
            dequant.clamp = clamp;
            last = after;
            folded += 1;
            break;
        }
        let Some(bin) = next.op_as::<TypedBinOp>() else { break };
        let name = bin.0.name();
        if name != "Add" && name != "Mul" {
            break;
        }
        let other = if next.inputs[0] == last { next.inputs[1] } else { next.inputs[0] };
        let Some(k) = model.outlet_fact(other)?.konst.clone() else { break };
        let Some(values) = per_channel_values(&k, rank, dequant.axis, channels)? else { break };
        if model.outlet_fact(OutletId::new(next.id, 0))?.shape != model.outlet_fact(last)?.shape {
            break;
        }
        let scale = Arc::make_mut(&mut dequant.scale);
        let bias = Arc::make_mut(&mut dequant.bias);
        for c in 0..channels {
            if name == "Add" {
                bias[c] += values[c];
            } else {
                scale[c] *= values[c];
                bias[c] *= values[c];
            }
        }
        last = OutletId::new(next.id, 0);
        folded += 1;
    }
    Ok((last, folded))
}

/// No clamp: `[-inf, inf]`.
pub const NO_CLAMP: [f32; 2] = [f32::NEG_INFINITY, f32::INFINITY];

/// The `Max(x, lo)` and/or `Min(x, hi)` with scalar constants that follow `outlet` as its only
/// use (ReLU, ReLU6, a Clip), as `[lo, hi]`, with the outlet after them; `None` when no such op
/// follows.
pub fn following_clamp(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<([f32; 2], OutletId)>> {
    let mut clamp = NO_CLAMP;
    let mut last = outlet;
    let shape = model.outlet_fact(outlet)?.shape.clone();
    while let Some(next) = model.single_succ(last.node)? {
        if model.outlet_successors(last).len() != 1 || model.output_outlets()?.contains(&last) {
            break;
        }
        let Some(bin) = next.op_as::<TypedBinOp>() else { break };
        let (is_max, is_min) = (bin.0.name() == "Max", bin.0.name() == "Min");
        if !(is_max || is_min) || next.inputs.len() != 2 {
            break;
        }
        let other = if next.inputs[0] == last { next.inputs[1] } else { next.inputs[0] };
        let Some(k) = model.outlet_fact(other)?.konst.clone() else { break };
        if k.len() != 1 || k.datum_type() != f32::datum_type() {
            break;
        }
        if model.outlet_fact(OutletId::new(next.id, 0))?.shape != shape {
            break;
        }
        let v = k.cast_to_scalar::<f32>()?;
        if is_max {
            clamp[0] = clamp[0].max(v);
            clamp[1] = clamp[1].max(v);
        } else {
            clamp[0] = clamp[0].min(v);
            clamp[1] = clamp[1].min(v);
        }
        last = OutletId::new(next.id, 0);
    }
    Ok((last != outlet).then_some((clamp, last)))
}

/// The values of a constant that varies only along `axis` of a rank-`rank` tensor (or is a
/// scalar), expanded to `channels` values; `None` otherwise.
pub(crate) fn per_channel_values(
    k: &Tensor,
    rank: usize,
    axis: usize,
    channels: usize,
) -> TractResult<Option<Vec<f32>>> {
    if k.datum_type() != f32::datum_type() || k.rank() > rank {
        return Ok(None);
    }
    let values = k.try_as_plain_ram()?.as_slice::<f32>()?;
    if k.len() == 1 {
        return Ok(Some(vec![values[0]; channels]));
    }
    let offset = rank - k.rank();
    let varying: Vec<usize> =
        (0..k.rank()).filter(|d| k.shape()[*d] != 1).map(|d| d + offset).collect();
    if varying != [axis] || k.len() != channels {
        return Ok(None);
    }
    Ok(Some(values.to_vec()))
}

/// Replaces each remaining `QuantizeLinear → DequantizeLinear` pair by one [`FakeQuant`].
fn fuse_fake_quant(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(dq) = node.op_as::<DequantizeLinearF32>() else { continue };
        let q_node = model.node(node.inputs[0].node);
        let Some(act) = quantize_params(q_node, dq) else { continue };
        if model.node(id).outputs[0].fact.datum_type != f32::datum_type() {
            continue;
        }
        let x = q_node.inputs[0];
        let mut patch = TypedModelPatch::new(format!("fake quant {}", node.name));
        let tap = patch.tap_model(model, x)?;
        let y = patch.wire_node(
            format!("{}.fake_quant", node.name),
            ElementWiseOp(Box::new(FakeQuant(act)), None),
            &[tap],
        )?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), y)?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

/// Declutters a typed QDQ model and applies [`rewrite`], logging what it did.
pub fn into_fast(model: TypedModel) -> TractResult<TypedModel> {
    let mut model = model.into_decluttered()?;
    let summary = rewrite(&mut model)?;
    log::info!(
        "int8 fast path: {} matmuls on integer kernels, {} per-channel ops folded, {} \
         quantize-dequantize pairs fused",
        summary.integer_matmuls,
        summary.folded_affine,
        summary.fake_quant
    );
    for skipped in &summary.skipped {
        log::debug!("int8 fast path: float path kept for {skipped}");
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    fn u8_act(scale: f32, zero_point: i32) -> ActQuant {
        ActQuant { inv_scale: scale.recip(), scale, zero_point, qmin: 0, qmax: 255 }
    }

    /// Values around every rounding tie and both saturation ends.
    fn probe_values(scale: f32) -> Vec<f32> {
        (-700..700).map(|i| i as f32 * 0.5 * scale).chain([1e5, -1e5, 0.0, -0.0]).collect()
    }

    #[test]
    fn quantizer_matches_tracts_quantize_linear_u8_shifted_to_i8() {
        let act = u8_act(0.25, 133);
        let xs = probe_values(act.scale);
        let mut ys = vec![0i8; xs.len()];
        act.kernel(act.shift()).quantize(&xs, &mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            let want = quantize_linear_f32_u8(*x, act.inv_scale, act.zero_point) as i32 - 128;
            assert_eq!(*y as i32, want, "x = {x}");
        }
    }

    #[test]
    fn quantizer_matches_tracts_quantize_linear_i8() {
        let act = ActQuant { inv_scale: 8.0, scale: 0.125, zero_point: -3, qmin: -128, qmax: 127 };
        let xs = probe_values(act.scale);
        let mut ys = vec![0i8; xs.len()];
        act.kernel(act.shift()).quantize(&xs, &mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(*y, quantize_linear_f32_i8(*x, act.inv_scale, act.zero_point), "x = {x}");
        }
    }

    #[test]
    fn fake_quant_is_quantize_then_dequantize() {
        let act = u8_act(0.1, 7);
        let xs = probe_values(act.scale);
        let mut ys = xs.clone();
        act.kernel(0).fake_quant(&mut ys, act.zero_point, act.scale);
        for (x, y) in xs.iter().zip(&ys) {
            let q = quantize_linear_f32_u8(*x, act.inv_scale, act.zero_point) as i32;
            assert_eq!(*y, (q - act.zero_point) as f32 * act.scale, "x = {x}");
        }
    }

    fn dequant(axis: usize) -> DequantizeAcc {
        DequantizeAcc {
            axis,
            correction: Arc::new(vec![10, -4]),
            scale: Arc::new(vec![0.5, 2.0]),
            bias: Arc::new(vec![1.0, -1.0]),
            clamp: NO_CLAMP,
        }
    }

    #[test]
    fn dequantize_applies_correction_scale_and_bias_per_channel_last() {
        // [3, 2], channels last.
        let acc = [10, 0, 12, 1, 8, -4];
        let mut out = [0f32; 6];
        dequant(1).eval_slices(&[3, 2], &acc, &mut out).unwrap();
        assert_eq!(out, [1.0, 7.0, 2.0, 9.0, 0.0, -1.0]);
    }

    #[test]
    fn dequantize_clamps_when_a_relu6_is_folded_in() {
        let acc = [10, 0, 12, 1, 8, -4];
        let mut out = [0f32; 6];
        let op = DequantizeAcc { clamp: [0.0, 6.0], ..dequant(1) };
        op.eval_slices(&[3, 2], &acc, &mut out).unwrap();
        assert_eq!(out, [1.0, 6.0, 2.0, 6.0, 0.0, 0.0]);
    }

    #[test]
    fn dequantize_applies_correction_scale_and_bias_per_channel_first() {
        // [1, 2, 3], channels on axis 1.
        let acc = [10, 12, 8, 0, 1, -4];
        let mut out = [0f32; 6];
        dequant(1).eval_slices(&[1, 2, 3], &acc, &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 0.0, 7.0, 9.0, -1.0]);
    }

    /// The ops split their work over a multithreaded executor with the values one thread
    /// gives (tensors above tract's threading threshold, both dequantization layouts).
    #[test]
    fn two_threads_compute_what_one_does() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let n = 96 * 1024 + 7 * 3;
        let xs: Vec<f32> = (0..n).map(|i| ((i * 37 % 1001) as f32 - 500.0) * 0.013).collect();
        let acc: Vec<i32> = (0..2 * n).map(|i| (i * 7919 % 4001) as i32 - 2000).collect();
        let x = Tensor::from_shape(&[n], &xs).unwrap();
        let act = u8_act(0.05, 3);
        let run = || {
            let q = QuantizeI8(act).eval_out_of_place(&x, None).unwrap();
            let mut fq = x.clone();
            FakeQuant(act).eval_in_place(&mut fq, None).unwrap();
            let mut last = vec![0f32; 2 * n];
            dequant(1).eval_slices(&[n, 2], &acc, &mut last).unwrap();
            let mut first = vec![0f32; 2 * n];
            dequant(1).eval_slices(&[1, 2, n], &acc, &mut first).unwrap();
            (q, fq, last, first)
        };
        let one = multithread_tract_scope(Executor::SingleThread, run);
        let two = multithread_tract_scope(Executor::multithread(2), run);
        assert_eq!(one.0, two.0);
        assert_eq!(one.1, two.1);
        assert_eq!(one.2, two.2);
        assert_eq!(one.3, two.3);
        assert_eq!(one.2[2 * 5 + 1], (acc[2 * 5 + 1] + 4) as f32 * 2.0 - 1.0);
        assert_eq!(one.3[n + 5], (acc[n + 5] + 4) as f32 * 2.0 - 1.0);
    }

    #[test]
    fn per_channel_weights_are_recovered_exactly_or_refused() {
        // [K=2, N=3], channel scales 0.5, 0.01 and an all-zero channel.
        let q = [[127i8, -3, 0], [-64, 127, 0]];
        let scales = [0.5f32, 0.01, 1.0];
        let w = tract_ndarray::Array2::from_shape_fn((2, 3), |(k, n)| q[k][n] as f32 * scales[n]);
        let (got_q, got_s) = int8_per_channel(&w.clone().into_tensor(), 1).unwrap().unwrap();
        assert_eq!(
            got_q.to_plain_array_view::<i8>().unwrap().as_slice().unwrap(),
            q.as_flattened()
        );
        for (g, s) in got_s.iter().zip(scales) {
            assert!((g - s).abs() <= s * 1e-6, "scale {g} vs {s}");
        }
        let mut float = w;
        float[(0, 1)] += 0.003;
        assert!(int8_per_channel(&float.into_tensor(), 1).unwrap().is_none());
    }
}

#[cfg(test)]
mod graph_tests {
    use super::*;
    use tract_core::ops::quant::quantize_linear_u8;

    /// `x [m, k] → Q → DQ → EinSum mk,kn->mn (W) → Add bias [1, n]`, W = q · s[n].
    fn qdq_matmul(m: usize, k: usize, n: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([m, k])).unwrap();
        let q = model.wire_node("q", quantize_linear_u8(1.0 / 0.05, 120), &[x]).unwrap();
        let dq = model.wire_node("dq", DequantizeLinearF32::new(0.05, 120), &q).unwrap();
        let w = tract_ndarray::Array2::from_shape_fn((k, n), |(i, j)| {
            // Every channel reaches 127, as a symmetric max|w|/127 quantizer makes it.
            let level = if i == 0 { 127.0 } else { ((i * 31 + j * 17) % 255) as f32 - 127.0 };
            level * (0.01 + 0.001 * j as f32)
        });
        let w = model.add_const("w", w.into_tensor()).unwrap();
        let axes = AxesMapping::from_strs(&["mk", "kn"], &["mn"]).unwrap();
        let y = model.wire_node("mm", EinSum::new(axes, f32::datum_type()), &[dq[0], w]).unwrap();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 1.0).collect();
        let b = model.add_const("b", tensor1(&bias).into_shape(&[1, n]).unwrap()).unwrap();
        let y = model.wire_node("add", tract_core::ops::math::add(), &[y[0], b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    #[test]
    fn rewritten_matmul_computes_the_qdq_matmul() {
        let (m, k, n) = (37, 96, 24);
        let plain = qdq_matmul(m, k, n);
        let mut fast = plain.clone().into_decluttered().unwrap();
        let summary = rewrite(&mut fast).unwrap();
        assert_eq!((summary.integer_matmuls, summary.folded_affine), (1, 1));
        let x = tract_ndarray::Array2::from_shape_fn((m, k), |(i, j)| {
            ((i * 7 + j * 13) % 101) as f32 * 0.09 - 4.0
        });
        let x = x.into_tensor().into_tvalue();
        let run = |model: TypedModel| {
            let out = model.into_optimized().unwrap().into_runnable().unwrap();
            out.run(tvec!(x.clone())).unwrap().remove(0).into_tensor()
        };
        let (want, got) = (run(plain), run(fast));
        let (want, got) =
            (want.to_plain_array_view::<f32>().unwrap(), got.to_plain_array_view::<f32>().unwrap());
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "at {i}: {g} vs {w}");
        }
    }
}

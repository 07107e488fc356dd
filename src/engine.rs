//! The inference engine: tract loads an ONNX classifier, fixes its batch, optimises it for this
//! CPU and runs it. One [`Form`] is one runnable numeric form of the model (f32 today; int8
//! and f16 build on the same loader).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The numeric forms edgeverify knows how to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    F32,
    Int8,
    F16,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::F32 => "f32",
            Form::Int8 => "int8",
            Form::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Form {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Form> {
        match s.trim() {
            "f32" => Ok(Form::F32),
            "int8" => Ok(Form::Int8),
            "f16" => Ok(Form::F16),
            other => bail!("unknown form {other:?}: expected f32, int8 or f16"),
        }
    }
}

/// What the graph declares about its image input and logits output, read from the ONNX proto.
#[derive(Debug, Clone)]
pub struct GraphIo {
    pub input: String,
    pub output: String,
    /// Declared input dims; `None` where symbolic (e.g. a named batch).
    pub input_dims: Vec<Option<i64>>,
}

/// A loaded, optimised, runnable form of a model.
pub struct Engine {
    pub form: Form,
    plan: Arc<TypedRunnableModel>,
    /// Datum type the plan's input wants (f16 for the f16 form); f32 is converted to it.
    input_dt: DatumType,
    /// `[batch, 3, size, size]`.
    pub input_shape: [usize; 4],
    pub num_classes: usize,
    /// Matrix-multiplication kernels chosen by tract, with how many ops use each.
    pub kernels: BTreeMap<String, usize>,
    /// Wall time to parse, type, optimise and plan the model, milliseconds.
    pub load_ms: f64,
    /// edgeverify's own ops in the plan (see [`OWN_OPS`]), with how many nodes use each; empty
    /// for a plan exactly as stock tract builds it.
    pub own_ops: BTreeMap<String, usize>,
}

/// Names of the ops edgeverify adds to tract's plans: the depthwise conv
/// ([`crate::depthwise`]) and the int8 fast path's ([`crate::fastint8`]).
pub const OWN_OPS: &[&str] =
    &["DepthwiseConvF32", "LayerNormF32", "QuantizeI8", "DequantizeAcc", "FakeQuant"];

/// Reads the ONNX protobuf, naming the file in the error.
pub fn read_proto(path: &Path) -> Result<pb::ModelProto> {
    tract_onnx::onnx().proto_model_for_path(path).map_err(|e| {
        anyhow::anyhow!(
            "model file {} is not a readable ONNX model ({e}); re-export it or check the path",
            path.display()
        )
    })
}

/// Finds the image input and logits output, honouring the names a description gives.
pub fn graph_io(
    proto: &pb::ModelProto,
    path: &Path,
    input: Option<&str>,
    output: Option<&str>,
) -> Result<GraphIo> {
    let graph = proto.graph.as_ref().context("ONNX file has no graph")?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
    let pick = |wanted: Option<&str>, all: &[&pb::ValueInfoProto], what: &str| -> Result<String> {
        let names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
        match wanted {
            Some(w) if names.contains(&w) => Ok(w.to_string()),
            Some(w) => bail!(
                "model {}: no graph {what} named {w:?} (it has {names:?}); fix `{what}` in the \
                 description",
                path.display()
            ),
            None => names
                .first()
                .map(|s| s.to_string())
                .with_context(|| format!("model {}: the graph has no {what}", path.display())),
        }
    };
    let input_name = pick(input, &inputs, "input")?;
    if input.is_none() && inputs.len() > 1 {
        bail!(
            "model {}: {} graph inputs; edgeverify feeds one image tensor, name it with `input` \
             in a description",
            path.display(),
            inputs.len()
        );
    }
    let outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
    let output_name = pick(output, &outputs, "output")?;
    let info = inputs.iter().find(|i| i.name == input_name).expect("picked from this list");
    let input_dims = declared_dims(info);
    Ok(GraphIo { input: input_name, output: output_name, input_dims })
}

fn declared_dims(info: &pb::ValueInfoProto) -> Vec<Option<i64>> {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as TypeValue;
    let Some(TypeValue::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return vec![];
    };
    let Some(shape) = &t.shape else { return vec![] };
    shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(v)) if *v > 0 => Some(*v),
            _ => None,
        })
        .collect()
}

/// Checks the declared input against `[batch, 3, size, size]` NCHW, with a fix in the error.
pub fn check_input_dims(io: &GraphIo, path: &Path, size: usize) -> Result<()> {
    let dims = &io.input_dims;
    if dims.is_empty() {
        return Ok(());
    }
    if dims.len() != 4 {
        bail!(
            "model {}: input {:?} has rank {} ({dims:?}); edgeverify feeds images as [1, 3, H, W] \
             NCHW",
            path.display(),
            io.input,
            dims.len()
        );
    }
    if let Some(c) = dims[1] {
        if c != 3 {
            bail!(
                "model {}: input {:?} wants {c} channels in dimension 1 ({dims:?}); edgeverify \
                 feeds RGB images NCHW [1, 3, H, W] (a channels-last model must be re-exported)",
                path.display(),
                io.input
            );
        }
    }
    for (axis, d) in dims[2..].iter().enumerate() {
        if let Some(d) = d {
            if *d as usize != size {
                bail!(
                    "model {}: input {:?} is {dims:?}, but preprocessing crops {size}x{size} \
                     (axis {} is {d}); set crop_size = {d} in the model description",
                    path.display(),
                    io.input,
                    axis + 2
                );
            }
        }
    }
    Ok(())
}

/// Parses a proto into a typed tract model with input `[batch, 3, size, size]` f32.
///
/// Stored intermediate and output shapes are ignored: exporters (dynamo, ONNX Runtime's
/// quantizer) write them with a symbolic batch that tract cannot unify with the fixed one.
pub fn typed_model(
    proto: &pb::ModelProto,
    io: &GraphIo,
    path: &Path,
    batch: usize,
    size: usize,
) -> Result<TypedModel> {
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| anyhow::anyhow!("model {}: tract cannot parse it: {e:?}", path.display()))?;
    model.set_input_names([io.input.as_str()])?;
    model.select_outputs_by_name([io.output.as_str()])?;
    model.set_input_fact(0, f32::fact([batch, 3, size, size]).into())?;
    let typed = model.into_typed().map_err(|e| {
        anyhow::anyhow!(
            "model {}: shapes do not work out with input [{batch}, 3, {size}, {size}]: {e:?}",
            path.display()
        )
    })?;
    Ok(typed)
}

/// Number of classes of a typed model whose output must be `[batch, N]`.
pub fn output_classes(model: &TypedModel, path: &Path, batch: usize) -> Result<usize> {
    let fact = model.output_fact(0)?;
    let shape: Vec<usize> = fact.shape.as_concrete().map(|s| s.to_vec()).unwrap_or_default();
    let float = [f32::datum_type(), f16::datum_type()].contains(&fact.datum_type);
    if shape.len() != 2 || shape[0] != batch || !float {
        bail!(
            "model {}: output is {:?} {:?}, expected [{batch}, N] f32 logits; name the logits \
             output with `output` in the description",
            path.display(),
            fact.shape,
            fact.datum_type
        );
    }
    Ok(shape[1])
}

/// The matmul kernels tract picked for an optimised model, with their use counts.
pub fn kernels_of(model: &TypedModel) -> BTreeMap<String, usize> {
    use tract_core::ops::matmul::optimized::OptMatMul;
    let mut kernels = BTreeMap::new();
    for node in model.nodes() {
        if let Some(op) = node.op_as::<OptMatMul>() {
            for mmm in &op.mmm {
                *kernels.entry(mmm.name().to_string()).or_insert(0) += 1;
            }
        }
    }
    kernels
}

/// The kernel families behind kernel names, sorted: the part before `_mmm_` (`arm64simd`,
/// `arm64fp16`, `armv7neon`, `armvfpv2`, `fma`, `avx512`, ...), which says which instruction
/// set did the arithmetic.
pub fn kernel_families(kernels: &BTreeMap<String, usize>) -> Vec<String> {
    let families: std::collections::BTreeSet<&str> = kernels
        .keys()
        .map(|name| match name.split_once("_mmm_") {
            Some((family, _)) => family,
            None => name.split('_').next().unwrap_or(name),
        })
        .collect();
    families.into_iter().map(String::from).collect()
}

impl Engine {
    /// Loads the f32 form of `path` for `[batch, 3, size, size]` inputs.
    pub fn load_f32(path: &Path, io: &GraphIo, batch: usize, size: usize) -> Result<Engine> {
        let start = Instant::now();
        let proto = read_proto(path)?;
        Engine::from_proto(Form::F32, &proto, io, path, batch, size, start)
    }

    /// Loads a form from an already-read ONNX proto (e.g. a QDQ int8 model); `path` names it
    /// in errors, `start` is when loading began.
    pub fn from_proto(
        form: Form,
        proto: &pb::ModelProto,
        io: &GraphIo,
        path: &Path,
        batch: usize,
        size: usize,
        start: Instant,
    ) -> Result<Engine> {
        let typed = typed_model(proto, io, path, batch, size)?;
        let mut typed = match form {
            Form::Int8 => crate::fastint8::into_fast(typed)
                .with_context(|| format!("model {}: the int8 rewrite failed", path.display()))?,
            _ => typed.into_decluttered()?,
        };
        let depthwise = crate::depthwise::rewrite(&mut typed)
            .with_context(|| format!("model {}: the depthwise rewrite failed", path.display()))?;
        let layer_norms = crate::layernorm::rewrite(&mut typed)
            .with_context(|| format!("model {}: the LayerNorm rewrite failed", path.display()))?;
        log::info!(
            "{}: {} depthwise convs on edgeverify's kernel ({} zero pads and {} clamps folded \
             in), {layer_norms} LayerNorms",
            form.name(),
            depthwise.replaced,
            depthwise.pads_absorbed,
            depthwise.clamps_folded
        );
        Engine::from_typed(form, typed, path, batch, size, start)
    }

    /// The f32 form exactly as stock tract runs it (no edgeverify op): the baseline the f32
    /// form's own kernels are measured against.
    pub fn load_f32_stock(path: &Path, io: &GraphIo, batch: usize, size: usize) -> Result<Engine> {
        let start = Instant::now();
        let proto = read_proto(path)?;
        let typed = typed_model(&proto, io, path, batch, size)?;
        Engine::from_typed(Form::F32, typed, path, batch, size, start)
    }

    /// The f16 form: the f32 model through tract's `f32_to_f16` transform (inputs and outputs
    /// stay f32 at the boundary).
    pub fn load_f16(path: &Path, io: &GraphIo, batch: usize, size: usize) -> Result<Engine> {
        let start = Instant::now();
        let proto = read_proto(path)?;
        let mut typed = typed_model(&proto, io, path, batch, size)?.into_decluttered()?;
        let transform = tract_core::transform::get_transform("f32_to_f16")?
            .context("this tract has no f32_to_f16 transform")?;
        transform.transform(&mut typed)?;
        Engine::from_typed(Form::F16, typed, path, batch, size, start)
    }

    /// Optimises and plans a typed model as stock tract does (no edgeverify rewrite); `start`
    /// is when loading began (for `load_ms`).
    pub fn from_typed(
        form: Form,
        typed: TypedModel,
        path: &Path,
        batch: usize,
        size: usize,
        start: Instant,
    ) -> Result<Engine> {
        let num_classes = output_classes(&typed, path, batch)?;
        let input_dt = typed.input_fact(0)?.datum_type;
        let optimized = typed
            .into_optimized()
            .with_context(|| format!("model {}: tract failed to optimise it", path.display()))?;
        let kernels = kernels_of(&optimized);
        let mut own_ops = BTreeMap::new();
        for node in optimized.nodes() {
            let name = node.op().name();
            if OWN_OPS.contains(&name.as_ref()) {
                *own_ops.entry(name.to_string()).or_insert(0) += 1;
            }
        }
        let plan = optimized.into_runnable()?;
        Ok(Engine {
            form,
            plan,
            input_dt,
            input_shape: [batch, 3, size, size],
            num_classes,
            kernels,
            load_ms: start.elapsed().as_secs_f64() * 1e3,
            own_ops,
        })
    }

    /// Runs a batch: `input` is `[batch, 3, size, size]` NCHW f32, flat; returns logits
    /// `[batch, num_classes]` f32, flat.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        let outputs = self.plan.run(tvec!(self.input_tensor(input)?.into_tvalue()))?;
        let logits = outputs[0].cast_to::<f32>()?;
        let view = logits.to_plain_array_view::<f32>()?;
        Ok(view.iter().copied().collect())
    }

    /// Per-op time profile over `runs` runs on `input` (`[batch, 3, size, size]` NCHW f32).
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<crate::profile::Profile> {
        crate::profile::profile(&self.plan, self.input_tensor(input)?.into_tvalue(), runs)
    }

    /// The plan's input tensor from flat NCHW f32 values, in the datum type it wants.
    fn input_tensor(&self, input: &[f32]) -> Result<Tensor> {
        let tensor = Tensor::from_shape(&self.input_shape, input)?;
        Ok(if self.input_dt == f32::datum_type() {
            tensor
        } else {
            tensor.cast_to_dt(self.input_dt)?.into_owned()
        })
    }
}

/// Indices of the `k` largest values, best first (ties: lower index first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Sets tract's matmul executor: `threads` > 1 uses its multithreaded executor.
pub fn set_threads(threads: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    if threads > 1 {
        set_default_executor(Executor::multithread(threads));
    } else {
        set_default_executor(Executor::SingleThread);
    }
}

/// The instruction-set features tract detected (after `TRACT_CPU_ISA` edits), e.g.
/// `x86_64,avx,avx2,fma,...`.
pub fn detected_isa() -> String {
    format!("{:?}", tract_linalg::isa::native())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_best_first() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0, 3.0], 3), vec![1, 4, 3]);
    }

    #[test]
    fn kernel_families_are_name_prefixes() {
        let kernels: BTreeMap<String, usize> = [
            ("arm64simd_mmm_f32_8x8_gen", 3),
            ("arm64simd_mmm_f32_64x1_gen", 1),
            ("arm64fp16_mmm_f16_16x8_gen", 2),
            ("generic_f32_4x4", 1),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
        assert_eq!(kernel_families(&kernels), ["arm64fp16", "arm64simd", "generic"]);
    }

    #[test]
    fn forms_parse() {
        assert_eq!("int8".parse::<Form>().unwrap(), Form::Int8);
        assert!("f64".parse::<Form>().is_err());
    }
}

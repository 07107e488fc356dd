//! The `verify` pipeline: model description → slice → preprocessing (once per image, shared by
//! every form) → evaluation per form → latency per form, apart → report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::convnext::{self, Arch, SyntheticIdentity};
use crate::dataset::{sha256_bytes, Slice, SliceEntry};
use crate::engine::{self, Engine, Form, GraphIo};
use crate::latency::{self, Environment, LatencyPlan, LatencyStats};
use crate::metrics::{self, Accuracy, ClaimStanding, PairedAccumulator};
use crate::model::ModelSpec;
use crate::preprocess::{self, PreprocessSpec};
use crate::quantize::{self, CalibrationInfo, QuantizeOptions, Recipe};
use crate::report::{
    Failure, FormReport, LatencyMethod, ModelInfo, Prediction, PreprocessingInfo, Report,
    SliceInfo, StockBaseline, Throughput,
};
use crate::synthetic_images::SyntheticImages;

/// Everything `verify` is asked to do.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub source: Source,
    pub out: PathBuf,
    pub forms: Vec<Form>,
    pub threads: usize,
    pub latency: LatencyPlan,
    /// Batch size of the throughput measurement.
    pub throughput_batch: usize,
    /// Evaluate only the first N images of the slice (a quick look; the report says so).
    pub limit: Option<usize>,
    pub quiet: bool,
    pub command: Vec<String>,
    /// Calibration images for the int8 form (any slice form).
    pub calib: Option<PathBuf>,
    pub quant: QuantizeOptions,
    /// A quantized model written earlier (`edgeverify quantize`) to use as the int8 form.
    pub int8_model: Option<PathBuf>,
    /// Measure f16 latency even where the CPU has no native f16 arithmetic.
    pub f16_latency: bool,
    /// The caller will gate on the claim: refuse a run that has none to check.
    pub require_claim: bool,
    /// Profile each form per op into the report.
    pub profile: bool,
}

/// What a run measures.
#[derive(Debug, Clone)]
pub enum Source {
    /// A described model (.toml, Hugging Face-style folder or .onnx) on a labelled slice.
    Described {
        model: PathBuf,
        slice: PathBuf,
        labels: Option<PathBuf>,
        slice_root: Option<PathBuf>,
    },
    /// A ConvNeXt built by edgeverify with seeded synthetic weights, run on seeded synthetic
    /// images: latency, throughput and memory are real, accuracy is not measurable.
    Synthetic { arch: Arch, seed: u64, images: usize },
}

/// The accuracy note of a synthetic run, in place of any figure.
pub const SYNTHETIC_ACCURACY_NOTE: &str = "not measurable: synthetic weights";

/// What a finished run hands back to the command line.
pub struct Outcome {
    pub report: Report,
    /// Whether some form's measured interval lies below its claim.
    pub claim_not_reproduced: bool,
}

/// Images handled per chunk: preprocessed in parallel, then run through every form.
const CHUNK: usize = 32;

/// One form being evaluated: its engine and what it predicted so far.
struct FormRun {
    engine: Engine,
    /// How the form was quantized (int8 only).
    recipe: Option<Recipe>,
    /// The quantized model (int8 only), to load again at another batch size.
    int8_proto: Option<tract_onnx::pb::ModelProto>,
    /// This form against f32 on the same images (forms other than f32, when f32 runs too).
    paired: PairedAccumulator,
    top1_correct: usize,
    top5_correct: usize,
    /// Images scored against a label (synthetic images have none).
    evaluated: usize,
}

/// The images a run evaluates, in order.
enum Images {
    Slice(Slice),
    Synthetic(SyntheticImages),
}

/// One image read (or generated) and preprocessed, or the reason it could not be.
struct PreparedImage {
    /// Its name in the report.
    file: String,
    /// Where it came from, for messages.
    origin: String,
    label: Option<usize>,
    /// Content sha256 (of the file, or of a synthetic image's pixels), when readable.
    sha256: Option<String>,
    tensor: Result<Vec<f32>>,
}

impl Images {
    /// Images the run evaluates.
    fn len(&self) -> usize {
        match self {
            Images::Slice(s) => s.entries.len(),
            Images::Synthetic(s) => s.count,
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Images::Slice(s) => s.entries.truncate(n),
            Images::Synthetic(s) => s.count = s.count.min(n),
        }
    }

    fn prepare(&self, index: usize, spec: &PreprocessSpec) -> PreparedImage {
        match self {
            Images::Slice(slice) => {
                let e = &slice.entries[index];
                let (sha256, tensor) = prepare_image(e, spec);
                PreparedImage {
                    file: e.file.clone(),
                    origin: e.path.display().to_string(),
                    label: Some(e.label),
                    sha256,
                    tensor,
                }
            }
            Images::Synthetic(images) => {
                let rgb = images.image(index);
                PreparedImage {
                    file: images.name(index),
                    origin: format!("synthetic image {index} (seed {})", images.seed),
                    label: None,
                    sha256: Some(sha256_bytes(&rgb.data)),
                    tensor: preprocess::to_tensor(&rgb, spec),
                }
            }
        }
    }
}

pub fn run(opts: &VerifyOptions) -> Result<Outcome> {
    crate::report::prepare_output_dir(&opts.out)?;
    let (spec, synthetic) = load_model(&opts.source, &opts.out)?;
    if opts.require_claim && (spec.claim.is_none() || synthetic.is_some()) {
        bail!(
            "--require-claim: {} carries no accuracy claim that this run can check (a synthetic \
             model's accuracy is not measurable; a bare .onnx has no claim: describe it in a \
             .toml with [claim])",
            spec.description_path.display()
        );
    }
    for a in &spec.assumptions {
        log::warn!("{a}");
    }
    let model_sha256 = spec.check_onnx_file()?;
    let proto = engine::read_proto(&spec.onnx_path)?;
    let io =
        engine::graph_io(&proto, &spec.onnx_path, spec.input.as_deref(), spec.output.as_deref())?;
    let size = spec.preprocess.crop_size as usize;
    engine::check_input_dims(&io, &spec.onnx_path, size)?;
    drop(proto);

    let mut images = load_images(&opts.source, &spec)?;
    let mut notes = spec.assumptions.clone();
    if let Some(n) = opts.limit {
        if n < images.len() {
            notes.push(format!(
                "--limit {n}: only the first {n} of the {} images were evaluated",
                images.len()
            ));
            images.truncate(n);
        }
    }
    if let (Some(id), Images::Synthetic(imgs)) = (&synthetic, &images) {
        notes.extend(synthetic_notes(id, imgs));
    }

    let mut runs = Vec::new();
    for &form in &opts.forms {
        let (engine, recipe, int8_proto) = match form {
            Form::F32 => (Engine::load_f32(&spec.onnx_path, &io, 1, size)?, None, None),
            Form::F16 => (Engine::load_f16(&spec.onnx_path, &io, 1, size)?, None, None),
            Form::Int8 => {
                let (engine, recipe, proto, seconds) =
                    build_int8(opts, &spec, &io, &model_sha256, &images)?;
                notes.push(format!(
                    "int8 form ({} in {seconds:.1} s): {} calibration on {} images of {}, \
                     activations {:?}, {} ops quantized, {} kept in float{}",
                    if opts.int8_model.is_some() { "read" } else { "quantized" },
                    recipe.method,
                    recipe.calibration.images,
                    recipe.calibration.source,
                    recipe.activations,
                    recipe.ops_quantized.len(),
                    recipe.ops_kept_float.len(),
                    recipe
                        .smoothquant_alpha
                        .map(|a| format!(
                            ", SmoothQuant alpha {a} on {} LayerNorm->MatMul pairs",
                            recipe.smoothed_pairs
                        ))
                        .unwrap_or_default()
                ));
                (engine, Some(recipe), Some(proto))
            }
        };
        check_classes(&engine, &spec)?;
        log::info!("loaded form {} in {:.0} ms", form.name(), engine.load_ms);
        runs.push(FormRun {
            engine,
            recipe,
            int8_proto,
            top1_correct: 0,
            top5_correct: 0,
            evaluated: 0,
            paired: PairedAccumulator::default(),
        });
    }

    let eval = evaluate(&images, &spec.preprocess, &mut runs, opts.quiet)?;
    let mut env = Environment::detect(opts.threads);
    if env.emulated {
        notes.push("run under emulation (qemu): latency figures are not board figures".into());
    }
    let accuracy_unmeasurable = synthetic.is_some().then_some(SYNTHETIC_ACCURACY_NOTE);
    let forms = measure_forms(&mut runs, &spec, &io, &eval, opts, accuracy_unmeasurable)?;
    env.board_after_latency = Some(crate::board::BoardState::read(env.emulated));
    let claim_not_reproduced = forms
        .iter()
        .any(|f| f.verdict.as_ref().is_some_and(|v| v.standing == ClaimStanding::AboveInterval));

    let report = Report {
        format: crate::report::REPORT_FORMAT.into(),
        created: utc_now(),
        command: opts.command.clone(),
        model: ModelInfo {
            name: spec.name.clone(),
            onnx_path: spec.onnx_path.display().to_string(),
            sha256: model_sha256,
            file_bytes: std::fs::metadata(&spec.onnx_path)?.len(),
            described_by: spec.described_by.clone(),
            input: io.input.clone(),
            output: io.output.clone(),
            num_classes: runs[0].engine.num_classes,
            preprocess: spec.preprocess.clone(),
            claim: spec.claim.clone(),
            synthetic,
        },
        slice: slice_info(&opts.source, &images, &eval),
        forms,
        latency_method: LatencyMethod {
            plan: opts.latency.clone(),
            batch: 1,
            threads: opts.threads,
            input: eval
                .latency_input
                .as_ref()
                .map(|(file, _)| format!("the preprocessed image {file}"))
                .unwrap_or_else(|| "none (no image could be preprocessed)".into()),
            peak_rss_bytes: latency::peak_rss_bytes(),
        },
        environment: env,
        predictions: eval.predictions,
        failures: eval.failures,
        preprocessing: eval.preprocessing,
        notes,
    };
    report.write(&opts.out)?;
    let evaluated = runs.iter().map(|r| r.evaluated).max().unwrap_or(0);
    if report.model.synthetic.is_none() && evaluated == 0 {
        bail!(
            "no image could be evaluated: all {} failed (reasons in {} under `failures`); check \
             the slice's paths (a moved manifest: pass --slice-root) and files",
            report.failures.len(),
            opts.out.join("report.json").display()
        );
    }
    Ok(Outcome { report, claim_not_reproduced })
}

const NO_NATIVE_F16: &str = "latency not measured: this CPU has no native f16 arithmetic, so \
     tract runs f16 on a generic fallback kernel (about 20x slower than f32, not what an f16-capable \
     board would see); pass --f16-latency to time it anyway";

const F16_FALLBACK_TIMED: &str = "timed on tract's generic f16 fallback kernel (this CPU has \
     no native f16 arithmetic, --f16-latency): far slower than an f16-capable board would be";

/// Whether tract found native f16 arithmetic (aarch64 FP16, x86 AVX512-FP16).
fn native_f16() -> bool {
    let isa = engine::detected_isa();
    isa.split(',').any(|f| f == "fp16" || f == "avx512fp16")
}

/// Builds the int8 form: from `--int8-model`, or by quantizing now on `--calib`.
fn build_int8(
    opts: &VerifyOptions,
    spec: &ModelSpec,
    io: &GraphIo,
    model_sha256: &str,
    images: &Images,
) -> Result<(Engine, Recipe, tract_onnx::pb::ModelProto, f64)> {
    let size = spec.preprocess.crop_size as usize;
    let quantize_started = Instant::now();
    let slice_hashes = match images {
        Images::Slice(slice) => content_hashes(slice),
        Images::Synthetic(_) => Default::default(),
    };
    let (proto, recipe, path) = match (&opts.int8_model, &opts.calib) {
        (Some(path), _) => {
            let proto = engine::read_proto(path)?;
            let recipe = quantize::recipe_of(&proto).with_context(|| {
                format!(
                    "int8 model {} carries no edgeverify recipe (metadata {}); write it with \
                     `edgeverify quantize`, or quantize on the fly with --calib",
                    path.display(),
                    quantize::RECIPE_KEY
                )
            })?;
            if recipe.source_sha256 != model_sha256 {
                bail!(
                    "int8 model {} was quantized from a model with sha256 {}, not {} ({}); \
                     quantize this model again",
                    path.display(),
                    recipe.source_sha256,
                    model_sha256,
                    spec.onnx_path.display()
                );
            }
            check_overlap(
                &recipe.calibration.image_sha256,
                &slice_hashes,
                &recipe.calibration.source,
            )?;
            (proto, recipe, path.clone())
        }
        (None, Some(calib)) => {
            let q = quantize_with_calib(
                calib,
                spec,
                io,
                model_sha256,
                &opts.quant,
                Some(&slice_hashes),
                opts.quiet,
            )?;
            let written = opts.out.join("model.int8.onnx");
            crate::report::write_atomically(&written, &quantize::encode(&q.proto))?;
            (q.proto, q.recipe, written)
        }
        (None, None) if matches!(images, Images::Synthetic(_)) => {
            let Images::Synthetic(eval) = images else { unreachable!() };
            let q = quantize_synthetic(eval, spec, io, model_sha256, &opts.quant, opts.quiet)?;
            let written = opts.out.join("model.int8.onnx");
            crate::report::write_atomically(&written, &quantize::encode(&q.proto))?;
            (q.proto, q.recipe, written)
        }
        (None, None) => bail!(
            "the int8 form needs calibration images: pass --calib FOLDER (e.g. ImageNet train \
             images, never the evaluation slice) or --int8-model FILE from `edgeverify quantize`"
        ),
    };
    let prepare_seconds = quantize_started.elapsed().as_secs_f64();
    // load_ms is tract's loading alone, like the other forms'; quantizing is reported apart.
    let engine = Engine::from_proto(Form::Int8, &proto, io, &path, 1, size, Instant::now())?;
    Ok((engine, recipe, proto, prepare_seconds))
}

/// Every image of the slice by content sha256 (unreadable files left out: they fail later,
/// by name).
pub fn content_hashes(slice: &Slice) -> SliceHashes {
    slice
        .entries
        .par_iter()
        .filter_map(|e| Some((crate::dataset::sha256_file(&e.path).ok()?, e.file.clone())))
        .collect()
}

/// The evaluation slice's images by content sha256: hash -> file.
pub type SliceHashes = std::collections::HashMap<String, String>;

/// Refuses calibration images that are also evaluation images, naming (up to five of) the
/// evaluation files they duplicate.
fn check_overlap(
    calib_hashes: &[String],
    slice_hashes: &SliceHashes,
    calib_source: &str,
) -> Result<()> {
    let mut shared: Vec<&str> =
        calib_hashes.iter().filter_map(|h| slice_hashes.get(h).map(String::as_str)).collect();
    shared.sort_unstable();
    shared.dedup();
    if !shared.is_empty() {
        let named = shared.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = if shared.len() > 5 {
            format!(" and {} more", shared.len() - 5)
        } else {
            String::new()
        };
        bail!(
            "{} calibration image(s) of {calib_source} are also in the evaluation slice (same \
             content sha256 as {named}{more}): calibrating on evaluation images inflates int8 \
             accuracy; calibrate on other images (e.g. ImageNet train)",
            shared.len()
        );
    }
    Ok(())
}

/// Loads and preprocesses a calibration set, checks it against the evaluation slice's
/// content hashes, and quantizes.
pub fn quantize_with_calib(
    calib: &std::path::Path,
    spec: &ModelSpec,
    io: &GraphIo,
    model_sha256: &str,
    qopts: &QuantizeOptions,
    slice_hashes: Option<&SliceHashes>,
    quiet: bool,
) -> Result<quantize::Quantized> {
    let set = Slice::load_for_calibration(calib, &spec.classes)
        .with_context(|| format!("calibration set {}", calib.display()))?;
    let prepared: Vec<_> =
        set.entries.par_iter().map(|e| prepare_image(e, &spec.preprocess)).collect();
    let mut tensors = vec![];
    let mut labels = vec![];
    let mut hashes = vec![];
    let mut failed: Vec<(String, String)> = set.missing.clone();
    for (entry, (sha, tensor)) in set.entries.iter().zip(prepared) {
        match tensor {
            Ok(t) => {
                tensors.push(t);
                labels.push(entry.label);
                hashes.push(sha.unwrap_or_default());
            }
            Err(e) => {
                log::warn!("calibration image {}: {e:#}", entry.path.display());
                failed.push((entry.file.clone(), format!("{e:#}")));
            }
        }
    }
    if let Some(slice_hashes) = slice_hashes {
        check_overlap(&hashes, slice_hashes, &calib.display().to_string())?;
    }
    let info = CalibrationInfo {
        source: calib.display().to_string(),
        images: tensors.len(),
        failed,
        sha256: crate::dataset::sha256_bytes(hashes.join("\n").as_bytes()),
        image_sha256: hashes,
    };
    let labelled = set.kind != "unlabelled-folder";
    run_quantizer(
        spec,
        io,
        model_sha256,
        qopts,
        &tensors,
        labelled.then_some(&labels[..]),
        info,
        quiet,
    )
}

/// Synthetic calibration images for a synthetic model: seeded apart from the evaluation
/// images, so the two never overlap.
const SYNTHETIC_CALIB_IMAGES: usize = 16;
const SYNTHETIC_CALIB_SEED_OFFSET: u64 = 0xCA11_B7A7_E000_0001;

fn quantize_synthetic(
    eval: &SyntheticImages,
    spec: &ModelSpec,
    io: &GraphIo,
    model_sha256: &str,
    qopts: &QuantizeOptions,
    quiet: bool,
) -> Result<quantize::Quantized> {
    let set = SyntheticImages {
        seed: eval.seed.wrapping_add(SYNTHETIC_CALIB_SEED_OFFSET),
        count: SYNTHETIC_CALIB_IMAGES,
    };
    let rgbs: Vec<_> = (0..set.count).into_par_iter().map(|i| set.image(i)).collect();
    let hashes: Vec<String> = rgbs.iter().map(|r| sha256_bytes(&r.data)).collect();
    let tensors = rgbs
        .iter()
        .map(|r| preprocess::to_tensor(r, &spec.preprocess))
        .collect::<Result<Vec<_>>>()?;
    let info = CalibrationInfo {
        source: format!(
            "synthetic images generated in memory (seed {}), not ImageNet: the scales fit \
             synthetic inputs only",
            set.seed
        ),
        images: tensors.len(),
        failed: vec![],
        sha256: crate::dataset::sha256_bytes(hashes.join("\n").as_bytes()),
        image_sha256: hashes,
    };
    run_quantizer(spec, io, model_sha256, qopts, &tensors, None, info, quiet)
}

#[allow(clippy::too_many_arguments)] // the model (3 parts), options, the images and their facts
fn run_quantizer(
    spec: &ModelSpec,
    io: &GraphIo,
    model_sha256: &str,
    qopts: &QuantizeOptions,
    tensors: &[Vec<f32>],
    labels: Option<&[usize]>,
    info: CalibrationInfo,
    quiet: bool,
) -> Result<quantize::Quantized> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("quantizing: {msg} ({pos} steps, {elapsed})")
                .expect("valid template"),
        );
        bar
    };
    let proto = engine::read_proto(&spec.onnx_path)?;
    let size = spec.preprocess.crop_size as usize;
    let q = quantize::quantize(
        &proto,
        io,
        &spec.onnx_path,
        size,
        model_sha256,
        tensors,
        labels,
        info,
        qopts,
        |stage| {
            bar.set_message(stage.to_string());
            bar.inc(1)
        },
    );
    bar.finish_and_clear();
    q
}

fn check_classes(engine: &Engine, spec: &ModelSpec) -> Result<()> {
    if engine.num_classes != spec.classes.len() {
        bail!(
            "model {} outputs {} classes, but its class list has {}; give the description a \
             matching `classes` file",
            spec.onnx_path.display(),
            engine.num_classes,
            spec.classes.len()
        );
    }
    Ok(())
}

/// The model of a run; a synthetic one is built into `out` first.
fn load_model(source: &Source, out: &Path) -> Result<(ModelSpec, Option<SyntheticIdentity>)> {
    match source {
        Source::Described { model, .. } => Ok((ModelSpec::load(model)?, None)),
        Source::Synthetic { arch, seed, .. } => {
            let spec = convnext::write_model(arch, *seed, out)?;
            Ok((spec, Some(SyntheticIdentity::new(arch, *seed))))
        }
    }
}

fn load_images(source: &Source, spec: &ModelSpec) -> Result<Images> {
    Ok(match source {
        Source::Described { slice, labels, slice_root, .. } => Images::Slice(Slice::load_rooted(
            slice,
            labels.as_deref(),
            &spec.classes,
            slice_root.as_deref(),
        )?),
        Source::Synthetic { seed, images, .. } => {
            Images::Synthetic(SyntheticImages { seed: *seed, count: *images })
        }
    })
}

/// What a reader of a synthetic run's report must know.
fn synthetic_notes(id: &SyntheticIdentity, images: &SyntheticImages) -> Vec<String> {
    let mut notes = vec![
        format!(
            "SYNTHETIC MODEL: the {} graph ({}) with seeded synthetic weights (seed {}, \
             generator {}); latency, throughput and memory are this CPU's real figures for \
             this architecture; accuracy is not measurable (the weights know nothing of \
             ImageNet)",
            id.arch, id.graph_of, id.seed, id.generator
        ),
        format!(
            "images: {} seeded synthetic {}x{} RGB images (seed {}), preprocessed as the \
             model's processor does; they carry no labels",
            images.count,
            crate::synthetic_images::WIDTH,
            crate::synthetic_images::HEIGHT,
            images.seed
        ),
    ];
    if id.arch == Arch::tiny().name {
        notes.push(
            "the claim (ConvNeXt-T 82.1% top-1, arXiv 2201.03545) needs the real weights: \
             export them with models/export_convnext_onnx.py (README, \"Getting the real \
             ConvNeXt-T\")"
                .into(),
        );
    }
    notes
}

fn slice_info(source: &Source, images: &Images, eval: &Evaluation) -> SliceInfo {
    match (source, images) {
        (Source::Described { slice: path, .. }, Images::Slice(slice)) => SliceInfo {
            path: path.display().to_string(),
            kind: slice.kind.clone(),
            labels_source: slice.labels_source.clone(),
            images: slice.entries.len() + slice.missing.len(),
            sha256: slice.identity(&eval.content_sha256),
            hashes_checked: slice.entries.iter().all(|e| e.expected_sha256.is_some()),
        },
        (_, images) => SliceInfo {
            path: "synthetic images (generated in memory)".into(),
            kind: "synthetic".into(),
            labels_source: "none: synthetic images have no labels".into(),
            images: images.len(),
            sha256: sha256_bytes(
                eval.content_sha256
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
                    .as_bytes(),
            ),
            hashes_checked: false,
        },
    }
}

/// What the accuracy pass produced.
struct Evaluation {
    predictions: Vec<Prediction>,
    failures: Vec<Failure>,
    /// Content sha256 of each slice entry (None where unreadable), in slice order.
    content_sha256: Vec<Option<String>>,
    /// Images the run was given, those absent from a slice included.
    listed: usize,
    /// The first preprocessed image, reused as the latency input.
    latency_input: Option<(String, Vec<f32>)>,
    preprocessing: PreprocessingInfo,
}

/// Reads and preprocesses one image, checking a manifest's hash. Returns its content hash
/// (when readable) and the tensor or the reason it failed.
fn prepare_image(e: &SliceEntry, spec: &PreprocessSpec) -> (Option<String>, Result<Vec<f32>>) {
    let bytes = match std::fs::read(&e.path) {
        Ok(b) => b,
        Err(err) => return (None, Err(anyhow::anyhow!("cannot read the file: {err}"))),
    };
    let sha = sha256_bytes(&bytes);
    if let Some(expected) = &e.expected_sha256 {
        if !expected.eq_ignore_ascii_case(&sha) {
            let msg = format!(
                "content sha256 {sha} differs from the manifest's {expected}: not the image the \
                 slice was drawn with"
            );
            return (Some(sha), Err(anyhow::anyhow!(msg)));
        }
    }
    let tensor = preprocess::decode_rgb8(&bytes).and_then(|rgb| preprocess::to_tensor(&rgb, spec));
    (Some(sha), tensor)
}

fn evaluate(
    images: &Images,
    spec: &PreprocessSpec,
    runs: &mut [FormRun],
    quiet: bool,
) -> Result<Evaluation> {
    let total = (images.len() * runs.len()) as u64;
    let bar = progress_bar(total, quiet, "evaluating (image-forms)");
    let missing = match images {
        Images::Slice(slice) => slice.missing.as_slice(),
        Images::Synthetic(_) => &[],
    };
    for (file, reason) in missing {
        log::warn!("{file}: {reason}");
    }
    let mut eval = Evaluation {
        predictions: vec![],
        failures: missing
            .iter()
            .map(|(file, reason)| Failure { file: file.clone(), reason: reason.clone() })
            .collect(),
        content_sha256: vec![],
        listed: images.len() + missing.len(),
        latency_input: None,
        preprocessing: PreprocessingInfo {
            images: 0,
            seconds: 0.0,
            images_per_second: 0.0,
            threads: rayon::current_num_threads(),
        },
    };
    for start in (0..images.len()).step_by(CHUNK) {
        let chunk = start..(start + CHUNK).min(images.len());
        let started = Instant::now();
        let prepared: Vec<_> =
            chunk.clone().into_par_iter().map(|i| images.prepare(i, spec)).collect();
        eval.preprocessing.seconds += started.elapsed().as_secs_f64();
        eval.preprocessing.images += chunk.len();
        for image in prepared {
            eval.content_sha256.push(image.sha256);
            let tensor = match image.tensor {
                Ok(t) => t,
                Err(err) => {
                    let reason = format!("{err:#}");
                    bar.suspend(|| log::warn!("{}: {reason}", image.origin));
                    eval.failures.push(Failure { file: image.file.clone(), reason });
                    bar.inc(runs.len() as u64);
                    continue;
                }
            };
            let mut f32_logits: Option<Vec<f32>> = None;
            for run in runs.iter_mut() {
                let logits = run
                    .engine
                    .run(&tensor)
                    .with_context(|| format!("inference failed on {}", image.origin))?;
                eval.predictions.push(score(run, &image.file, image.label, &logits));
                match (&f32_logits, run.engine.form) {
                    (None, Form::F32) => f32_logits = Some(logits),
                    (Some(reference), _) => run.paired.add(reference, &logits, image.label),
                    (None, _) => {}
                }
                bar.inc(1);
            }
            if eval.latency_input.is_none() {
                eval.latency_input = Some((image.file.clone(), tensor));
            }
        }
    }
    bar.finish_and_clear();
    let p = &mut eval.preprocessing;
    p.images_per_second = if p.seconds > 0.0 { p.images as f64 / p.seconds } else { 0.0 };
    Ok(eval)
}

fn score(run: &mut FormRun, file: &str, label: Option<usize>, logits: &[f32]) -> Prediction {
    let top5 = engine::top_k(logits, 5);
    if let Some(label) = label {
        run.evaluated += 1;
        if top5.first() == Some(&label) {
            run.top1_correct += 1;
        }
        if top5.contains(&label) {
            run.top5_correct += 1;
        }
    }
    Prediction {
        file: file.to_string(),
        label,
        form: run.engine.form.name().into(),
        top5_logits: top5.iter().map(|&i| logits[i]).collect(),
        top5,
    }
}

fn progress_bar(total: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{pos}}/{{len}}, {{per_sec}}, ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Timed runs of a `--profile` (after one warm-up run).
const PROFILE_RUNS: usize = 10;

/// Accuracy figures and latency per form, latency measured now, after the accuracy pass.
/// `accuracy_unmeasurable` gives the reason no accuracy figure may be reported, if any.
fn measure_forms(
    runs: &mut [FormRun],
    spec: &ModelSpec,
    io: &GraphIo,
    eval: &Evaluation,
    opts: &VerifyOptions,
    accuracy_unmeasurable: Option<&str>,
) -> Result<Vec<FormReport>> {
    let failed = eval.failures.len();
    let listed = eval.listed;
    let scored = accuracy_unmeasurable.is_none();
    let (latency, stock) = time_forms(runs, spec, io, eval, opts)?;
    let mut forms = vec![];
    for ((run, latency_ms), stock_tract) in runs.iter().zip(latency).zip(stock) {
        let top1 = Accuracy::new(run.top1_correct, run.evaluated).filter(|_| scored);
        let top5 = Accuracy::new(run.top5_correct, run.evaluated).filter(|_| scored);
        let with_failures = Accuracy::new(run.top1_correct, run.evaluated + failed);
        let verdict = match (&spec.claim, &top1) {
            (Some(c), Some(a)) => {
                let mut v = metrics::verdict(c.top1, a, run.engine.form.name());
                if let Some(w) = with_failures.filter(|_| failed > 0) {
                    if c.top1 < w.ci95[0] || c.top1 > w.ci95[1] {
                        v.text.push_str(&format!(
                            "; but counting the {failed} failed image(s) as wrong gives \
                             {:.2}% ({:.2}-{:.2}), which excludes the claim",
                            w.percent, w.ci95[0], w.ci95[1]
                        ));
                    }
                }
                Some(v)
            }
            _ => None,
        };
        let skip_f16 = run.engine.form == Form::F16 && !native_f16() && !opts.f16_latency;
        let fallback_f16 = run.engine.form == Form::F16 && !native_f16();
        let latency_note = match &eval.latency_input {
            Some(_) if skip_f16 => Some(NO_NATIVE_F16.to_string()),
            Some(_) => fallback_f16.then(|| F16_FALLBACK_TIMED.to_string()),
            None => Some("no image could be preprocessed to time the model on".into()),
        };
        let profile = match &eval.latency_input {
            Some((_, input)) if opts.profile && !skip_f16 => {
                Some(run.engine.profile(input, PROFILE_RUNS)?)
            }
            _ => None,
        };
        let throughput = match &eval.latency_input {
            Some((_, input)) if !skip_f16 => Some(throughput(run, spec, io, input, opts)?),
            _ => None,
        };
        forms.push(FormReport {
            form: run.engine.form.name().into(),
            accuracy_note: accuracy_unmeasurable
                .map(str::to_string)
                .or_else(|| top1.is_none().then(|| "no image could be evaluated".to_string())),
            top1,
            top5,
            top1_failures_as_wrong: Accuracy::new(run.top1_correct, run.evaluated + failed)
                .filter(|_| scored && (failed > 0 || listed == run.evaluated)),
            top5_failures_as_wrong: Accuracy::new(run.top5_correct, run.evaluated + failed)
                .filter(|_| scored && (failed > 0 || listed == run.evaluated)),
            verdict,
            latency_ms,
            latency_note,
            throughput,
            load_ms: run.engine.load_ms,
            kernels: run.engine.kernels.clone(),
            recipe: run.recipe.clone(),
            vs_f32: run.paired.finish(),
            kernel_families: engine::kernel_families(&run.engine.kernels),
            profile,
            own_ops: run.engine.own_ops.clone(),
            stock_tract,
        });
    }
    Ok(forms)
}

/// Whether a form's latency is measured in this run (f16 only where the CPU has native f16
/// arithmetic, unless asked).
fn is_timed(form: Form, opts: &VerifyOptions) -> bool {
    form != Form::F16 || native_f16() || opts.f16_latency
}

/// Batch-1 latency of every timed form, interleaved in the same rounds, plus stock tract's
/// plan of the same file next to an f32 form that has edgeverify's own ops.
#[allow(clippy::type_complexity)]
fn time_forms(
    runs: &[FormRun],
    spec: &ModelSpec,
    io: &GraphIo,
    eval: &Evaluation,
    opts: &VerifyOptions,
) -> Result<(Vec<Option<LatencyStats>>, Vec<Option<StockBaseline>>)> {
    let mut latency = vec![None; runs.len()];
    let mut stock_tract = vec![None; runs.len()];
    let Some((_, input)) = &eval.latency_input else { return Ok((latency, stock_tract)) };
    let baseline_for =
        runs.iter().position(|r| r.engine.form == Form::F32 && !r.engine.own_ops.is_empty());
    let stock = match baseline_for {
        Some(_) => {
            Some(Engine::load_f32_stock(&spec.onnx_path, io, 1, runs[0].engine.input_shape[2])?)
        }
        None => None,
    };
    let timed: Vec<usize> =
        (0..runs.len()).filter(|&i| is_timed(runs[i].engine.form, opts)).collect();
    let mut fns: Vec<Box<dyn FnMut() -> Result<()> + '_>> = timed
        .iter()
        .map(|&i| Box::new(move || runs[i].engine.run(input).map(drop)) as Box<dyn FnMut() -> _>)
        .collect();
    if let Some(stock) = &stock {
        fns.push(Box::new(move || stock.run(input).map(drop)));
    }
    let mut refs: Vec<&mut dyn FnMut() -> Result<()>> =
        fns.iter_mut().map(|f| &mut **f as &mut dyn FnMut() -> Result<()>).collect();
    let mut stats = latency::measure_interleaved(&opts.latency, &mut refs)?.into_iter();
    for &i in &timed {
        latency[i] = stats.next();
    }
    if let (Some(i), Some(stock)) = (baseline_for, &stock) {
        stock_tract[i] = stats.next().map(|latency_ms| StockBaseline {
            latency_ms,
            load_ms: stock.load_ms,
            kernels: stock.kernels.clone(),
        });
    }
    Ok((latency, stock_tract))
}

/// Images per second at the configured batch: batch 1 reuses the form's engine, a larger batch
/// loads the model again for that batch.
fn throughput(
    run: &FormRun,
    spec: &ModelSpec,
    io: &GraphIo,
    input: &[f32],
    opts: &VerifyOptions,
) -> Result<Throughput> {
    let batch = opts.throughput_batch.max(1);
    let plan = LatencyPlan {
        warmup_runs: 1,
        runs: opts.latency.runs.div_ceil(batch).max(3),
        max_seconds: opts.latency.max_seconds,
    };
    let stats = if batch == 1 {
        latency::measure(&plan, || run.engine.run(input).map(drop))?
    } else {
        let size = spec.preprocess.crop_size as usize;
        let start = Instant::now();
        let batched = match (&run.int8_proto, run.engine.form) {
            (Some(proto), _) => {
                Engine::from_proto(Form::Int8, proto, io, &spec.onnx_path, batch, size, start)?
            }
            (None, Form::F16) => Engine::load_f16(&spec.onnx_path, io, batch, size)?,
            (None, _) => Engine::load_f32(&spec.onnx_path, io, batch, size)?,
        };
        let inputs = input.repeat(batch);
        latency::measure(&plan, || batched.run(&inputs).map(drop))?
    };
    Ok(Throughput {
        batch,
        images_per_second: batch as f64 * 1e3 / stats.p50,
        batch_p50_ms: stats.p50,
        runs: stats.runs,
    })
}

/// Current UTC time, RFC 3339, seconds precision.
fn utc_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

//! The `verify` pipeline: model description → slice → preprocessing (once per image, shared by
//! every form) → evaluation per form → latency per form, apart → report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::dataset::{sha256_bytes, Slice, SliceEntry};
use crate::engine::{self, Engine, Form, GraphIo};
use crate::latency::{self, Environment, LatencyPlan};
use crate::metrics::{self, Accuracy, ClaimStanding};
use crate::model::ModelSpec;
use crate::preprocess::{self, PreprocessSpec};
use crate::report::{
    Failure, FormReport, LatencyMethod, ModelInfo, Prediction, PreprocessingInfo, Report,
    SliceInfo, Throughput,
};

/// Everything `verify` is asked to do.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub model: PathBuf,
    pub slice: PathBuf,
    pub labels: Option<PathBuf>,
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
}

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
    top1_correct: usize,
    top5_correct: usize,
    evaluated: usize,
}

pub fn run(opts: &VerifyOptions) -> Result<Outcome> {
    if let Some(form) = opts.forms.iter().find(|f| **f != Form::F32) {
        bail!(
            "form {} is not available in this version of edgeverify (only f32 is); run with \
             --forms f32",
            form.name()
        );
    }
    let spec = ModelSpec::load(&opts.model)?;
    for a in &spec.assumptions {
        log::warn!("{a}");
    }
    crate::report::prepare_output_dir(&opts.out)?;
    let model_sha256 = spec.check_onnx_file()?;
    let proto = engine::read_proto(&spec.onnx_path)?;
    let io =
        engine::graph_io(&proto, &spec.onnx_path, spec.input.as_deref(), spec.output.as_deref())?;
    let size = spec.preprocess.crop_size as usize;
    engine::check_input_dims(&io, &spec.onnx_path, size)?;
    drop(proto);

    let mut slice = Slice::load(&opts.slice, opts.labels.as_deref(), &spec.classes)?;
    let mut notes = spec.assumptions.clone();
    if let Some(n) = opts.limit {
        if n < slice.entries.len() {
            notes.push(format!(
                "--limit {n}: only the first {n} of the slice's {} images were evaluated",
                slice.entries.len()
            ));
            slice.entries.truncate(n);
        }
    }

    let mut runs = Vec::new();
    for &form in &opts.forms {
        let engine = Engine::load_f32(&spec.onnx_path, &io, 1, size)?;
        check_classes(&engine, &spec)?;
        runs.push(FormRun { engine, top1_correct: 0, top5_correct: 0, evaluated: 0 });
        log::info!("loaded form {}", form.name());
    }

    let eval = evaluate(&slice, &spec.preprocess, &mut runs, opts.quiet)?;
    let mut env = Environment::detect(opts.threads);
    if env.emulated {
        notes.push("run under emulation (qemu): latency figures are not board figures".into());
    }
    let forms = measure_forms(&mut runs, &spec, &io, &eval, opts, &slice)?;
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
        },
        slice: SliceInfo {
            path: opts.slice.display().to_string(),
            kind: slice.kind.clone(),
            labels_source: slice.labels_source.clone(),
            images: slice.entries.len() + slice.missing.len(),
            sha256: slice.identity(&eval.content_sha256),
            hashes_checked: slice.entries.iter().all(|e| e.expected_sha256.is_some()),
        },
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
    Ok(Outcome { report, claim_not_reproduced })
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

/// What the accuracy pass produced.
struct Evaluation {
    predictions: Vec<Prediction>,
    failures: Vec<Failure>,
    /// Content sha256 of each slice entry (None where unreadable), in slice order.
    content_sha256: Vec<Option<String>>,
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
    slice: &Slice,
    spec: &PreprocessSpec,
    runs: &mut [FormRun],
    quiet: bool,
) -> Result<Evaluation> {
    let total = (slice.entries.len() * runs.len()) as u64;
    let bar = progress_bar(total, quiet);
    let mut eval = Evaluation {
        predictions: vec![],
        failures: slice
            .missing
            .iter()
            .map(|(file, reason)| Failure { file: file.clone(), reason: reason.clone() })
            .collect(),
        content_sha256: vec![],
        latency_input: None,
        preprocessing: PreprocessingInfo {
            images: 0,
            seconds: 0.0,
            images_per_second: 0.0,
            threads: rayon::current_num_threads(),
        },
    };
    for chunk in slice.entries.chunks(CHUNK) {
        let started = Instant::now();
        let prepared: Vec<_> = chunk.par_iter().map(|e| prepare_image(e, spec)).collect();
        eval.preprocessing.seconds += started.elapsed().as_secs_f64();
        eval.preprocessing.images += chunk.len();
        for (entry, (sha, tensor)) in chunk.iter().zip(prepared) {
            eval.content_sha256.push(sha);
            let tensor = match tensor {
                Ok(t) => t,
                Err(err) => {
                    let reason = format!("{err:#}");
                    bar.suspend(|| log::warn!("{}: {reason}", entry.path.display()));
                    eval.failures.push(Failure { file: entry.file.clone(), reason });
                    bar.inc(runs.len() as u64);
                    continue;
                }
            };
            for run in runs.iter_mut() {
                let logits = run
                    .engine
                    .run(&tensor)
                    .with_context(|| format!("inference failed on {}", entry.path.display()))?;
                eval.predictions.push(score(run, entry, &logits));
                bar.inc(1);
            }
            if eval.latency_input.is_none() {
                eval.latency_input = Some((entry.file.clone(), tensor));
            }
        }
    }
    bar.finish_and_clear();
    let p = &mut eval.preprocessing;
    p.images_per_second = if p.seconds > 0.0 { p.images as f64 / p.seconds } else { 0.0 };
    Ok(eval)
}

fn score(run: &mut FormRun, entry: &SliceEntry, logits: &[f32]) -> Prediction {
    let top5 = engine::top_k(logits, 5);
    run.evaluated += 1;
    if top5.first() == Some(&entry.label) {
        run.top1_correct += 1;
    }
    if top5.contains(&entry.label) {
        run.top5_correct += 1;
    }
    Prediction {
        file: entry.file.clone(),
        label: entry.label,
        form: run.engine.form.name().into(),
        top5_logits: top5.iter().map(|&i| logits[i]).collect(),
        top5,
    }
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "evaluating [{bar:40}] {pos}/{len} image-forms, {per_sec}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Accuracy figures and latency per form, latency measured now, after the accuracy pass.
fn measure_forms(
    runs: &mut [FormRun],
    spec: &ModelSpec,
    io: &GraphIo,
    eval: &Evaluation,
    opts: &VerifyOptions,
    slice: &Slice,
) -> Result<Vec<FormReport>> {
    let failed = eval.failures.len();
    let listed = slice.entries.len() + slice.missing.len();
    let mut forms = vec![];
    for run in runs.iter() {
        let top1 = Accuracy::new(run.top1_correct, run.evaluated);
        let top5 = Accuracy::new(run.top5_correct, run.evaluated);
        let verdict = match (&spec.claim, &top1) {
            (Some(c), Some(a)) => Some(metrics::verdict(c.top1, a, run.engine.form.name())),
            _ => None,
        };
        let (latency_ms, latency_note) = match &eval.latency_input {
            Some((_, input)) => {
                (Some(latency::measure(&opts.latency, || run.engine.run(input).map(drop))?), None)
            }
            None => (None, Some("no image could be preprocessed to time the model on".into())),
        };
        let throughput = match &eval.latency_input {
            Some((_, input)) => Some(throughput(run, spec, io, input, opts)?),
            None => None,
        };
        forms.push(FormReport {
            form: run.engine.form.name().into(),
            accuracy_note: top1.is_none().then(|| "no image could be evaluated".to_string()),
            top1,
            top5,
            top1_failures_as_wrong: Accuracy::new(run.top1_correct, run.evaluated + failed)
                .filter(|_| failed > 0 || listed == run.evaluated),
            top5_failures_as_wrong: Accuracy::new(run.top5_correct, run.evaluated + failed)
                .filter(|_| failed > 0 || listed == run.evaluated),
            verdict,
            latency_ms,
            latency_note,
            throughput,
            load_ms: run.engine.load_ms,
            kernels: run.engine.kernels.clone(),
            kernel_families: engine::kernel_families(&run.engine.kernels),
        });
    }
    Ok(forms)
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
        let batched = Engine::load_f32(&spec.onnx_path, io, batch, size)?;
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

//! Command-line interface: argument definitions and dispatch to the pipeline stages.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::convnext::Arch;
use crate::dataset::{self, Slice};
use crate::engine::Form;
use crate::latency::LatencyPlan;
use crate::model;
use crate::quantize::{ActType, CalibMethod, QuantizeOptions};
use crate::verify::{self, Source, VerifyOptions};

/// Exit code: the run completed, whatever the verdict.
pub const EXIT_OK: i32 = 0;
/// Exit code: an error stopped the run.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: the command line was wrong (clap uses it too).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `--require-claim` was given and the measured accuracy lies below the claim's
/// 95% interval.
pub const EXIT_CLAIM_NOT_REPRODUCED: i32 = 3;

const EXIT_CODES: &str = "Exit codes:
  0  the run completed (whatever the verdict)
  1  an error stopped the run (the message names the file and the fix)
  2  usage error (bad flags)
  3  with --require-claim: some form measured below the claim's 95% interval";

#[derive(Debug, Parser)]
#[command(
    name = "edgeverify",
    version,
    about = "Check a published image-classifier accuracy claim on this CPU with tract",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More diagnostics on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate a model on a labelled micro-slice, measure its latency, write a report.
    Verify(Box<VerifyArgs>),
    /// Draw a reproducible micro-slice from a labelled folder and write its manifest.
    Slice(SliceArgs),
    /// Quantize a model to int8 (QDQ ONNX), calibrated on images, all in Rust.
    Quantize(QuantizeArgs),
    /// Merge reports from several boards, forms and thread counts into one trade-off table
    /// and chart, with the Pareto-optimal runs marked.
    Compare(crate::compare::CompareArgs),
}

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct VerifyArgs {
    /// The model: a .toml description (see models/), a Hugging Face-style folder, or an .onnx
    /// file (ImageNet-standard preprocessing is then assumed). Default: the real ConvNeXt-T
    /// (models/convnext-tiny-224.toml) when models/convnext-tiny-224.onnx exists, else the
    /// synthetic ConvNeXt-T (as --arch convnext-tiny).
    #[arg(long, conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// The images: a folder with val.txt, an ImageFolder tree, a folder of
    /// <synset>_<name>.JPEG files, or a manifest written by `edgeverify slice`. Required with a
    /// real model; a synthetic one runs on synthetic images.
    #[arg(long)]
    pub slice: Option<PathBuf>,
    /// Measure a ConvNeXt built by edgeverify with seeded synthetic weights, on synthetic
    /// images: convnext-atto, -femto, -pico, -nano, -tiny, -small, -base or -large. Latency,
    /// throughput and memory are real; accuracy is not measurable.
    #[arg(long, value_parser = crate::convnext::arch_by_name)]
    pub arch: Option<&'static Arch>,
    /// Seed of the synthetic weights and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Synthetic images run through every form (synthetic model only).
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    pub images: usize,
    /// The images' folder for a slice manifest copied away from them (overrides its `root`).
    #[arg(long)]
    pub slice_root: Option<PathBuf>,
    /// A `<file> <class index>` label file for a folder slice (e.g. all 50,000 val labels:
    /// only the files present are evaluated).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Folder for report.json, report.md and report.html (created if needed).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Forms to evaluate, comma-separated (f32, int8, f16). Default: f32 for a described
    /// model; every form for the synthetic ConvNeXt run.
    #[arg(long, value_delimiter = ',')]
    pub forms: Option<Vec<Form>>,
    /// Inference threads (tract's multithreaded executor); default: all logical CPUs.
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Untimed runs before the latency measurement.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed batch-1 runs per form.
    #[arg(long, default_value_t = 30, value_parser = at_least_one)]
    pub runs: usize,
    /// Time budget of the timed runs per form, seconds (at least 3 runs are taken).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Batch size of the throughput measurement.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub batch: usize,
    /// Evaluate only the first N images of the slice (a quick look).
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Cap or force tract's instruction sets for this run, as tract's TRACT_CPU_ISA knob does
    /// (e.g. --cpu-isa=-avx512f,-avx512vnni to measure the AVX2 kernels on an AVX-512 host;
    /// write it with `=`, as the value starts with a dash).
    #[arg(long, value_parser = isa_edits)]
    pub cpu_isa: Option<String>,
    /// Exit with code 3 when a form measures below the claim's 95% interval.
    #[arg(long)]
    pub require_claim: bool,
    /// A quantized model from `edgeverify quantize` to use as the int8 form (instead of
    /// quantizing now with --calib).
    #[arg(long)]
    pub int8_model: Option<PathBuf>,
    /// Time the f16 form even where the CPU has no native f16 arithmetic (slow fallback).
    #[arg(long)]
    pub f16_latency: bool,
    /// Profile each form per op (tract's plan, every node timed, 10 runs) into the report.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// How to quantize (the int8 form of `verify`, and `quantize`).
#[derive(Debug, Args)]
pub struct QuantArgs {
    /// Calibration images (a folder or manifest, any slice layout; e.g. ImageNet train
    /// images). Must not overlap the evaluation slice.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration method: minmax, percentile (99.99), percentile:P, or mse.
    #[arg(long, default_value = "mse")]
    pub calib_method: CalibMethod,
    /// Activation integer type: u8 (asymmetric) or i8 (symmetric).
    #[arg(long, default_value = "u8")]
    pub act_type: ActType,
    /// SmoothQuant strength alpha for LayerNorm -> MatMul pairs (an exact rewrite moving
    /// activation outliers into the weights); 0 disables it.
    #[arg(long, default_value_t = 0.0, value_parser = unit_interval)]
    pub smooth: f32,
    /// Quantizable op names (ONNX node names) to keep in float, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub keep_float: Vec<String>,
    /// Rank the quantizable layers by what quantizing each alone costs, on the first N
    /// calibration images (0: off); the ranking goes into the recipe and the report.
    #[arg(long, default_value_t = 0)]
    pub sensitivity: usize,
    /// Keep the most sensitive layers in float until the top-1 drop on the sensitivity
    /// images is at most this many points (needs --sensitivity).
    #[arg(long, requires = "sensitivity")]
    pub max_drop: Option<f64>,
}

/// A count that must be at least 1 (a usage error, exit 2, otherwise).
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn unit_interval(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is outside [0, 1] (0 disables smoothing)")),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks a TRACT_CPU_ISA edit list (`+feature`/`-feature`, comma-separated) names only
/// instruction sets tract knows.
fn isa_edits(s: &str) -> std::result::Result<String, String> {
    for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let name = token.trim_start_matches(['+', '-']);
        if name.parse::<tract_linalg::isa::IsaSet>().is_err() {
            return Err(format!(
                "{name:?} is no instruction set tract knows (e.g. avx2, avx512f, avx512vnni, \
                 fp16, dotprod)"
            ));
        }
    }
    Ok(s.to_string())
}

impl QuantArgs {
    fn options(&self) -> Result<QuantizeOptions> {
        Ok(QuantizeOptions {
            method: self.calib_method,
            act_type: self.act_type,
            keep_float: self.keep_float.clone(),
            smooth_alpha: (self.smooth > 0.0).then_some(self.smooth),
            sensitivity_images: self.sensitivity,
            max_drop: self.max_drop,
        })
    }
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The f32 model (description, Hugging Face folder or .onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the int8 QDQ ONNX file.
    #[arg(long, required_unless_present = "list_ops")]
    pub out: Option<PathBuf>,
    /// An evaluation slice the calibration set must not overlap (checked by content hash).
    #[arg(long)]
    pub slice: Option<PathBuf>,
    /// List the quantizable ops (names for --keep-float) and exit.
    #[arg(long)]
    pub list_ops: bool,
    #[command(flatten)]
    pub quant: QuantArgs,
}

#[derive(Debug, Args)]
pub struct SliceArgs {
    /// Folder of val images (with val.txt, --labels, or a synset layout).
    #[arg(long)]
    pub from: PathBuf,
    /// Label file for --from (e.g. ILSVRC2012_val_labels.txt).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Number of images to draw.
    #[arg(long, default_value_t = 900, value_parser = at_least_one)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Manifest file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses arguments, runs the command, returns the exit code.
pub fn main_with_args() -> Result<i32> {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match cli.command {
        Command::Verify(args) => run_verify(*args, cli.quiet),
        Command::Slice(args) => run_slice(args),
        Command::Quantize(args) => run_quantize(args, cli.quiet),
        Command::Compare(args) => run_compare(args),
    }
}

fn run_compare(args: crate::compare::CompareArgs) -> Result<i32> {
    let comparison = crate::compare::run(&args)?;
    print!("{}", comparison.markdown_table());
    println!("comparison: {}", args.out.join("compare.html").display());
    Ok(EXIT_OK)
}

fn run_verify(args: VerifyArgs, quiet: bool) -> Result<i32> {
    if let Some(isa) = &args.cpu_isa {
        // tract reads this knob once, at its first kernel selection, which has not happened yet.
        std::env::set_var("TRACT_CPU_ISA", isa);
    }
    let threads = match args.threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    crate::engine::set_threads(threads);
    let source = choose_source(&args)?;
    if args.int8_model.is_some() && args.forms.as_ref().is_some_and(|f| !f.contains(&Form::Int8)) {
        bail!("--int8-model is used by the int8 form: add int8 to --forms (e.g. --forms f32,int8)");
    }
    let mut forms = match (&args.forms, &source) {
        (Some(forms), _) => forms.clone(),
        (None, Source::Synthetic { .. }) => vec![Form::F32, Form::Int8, Form::F16],
        (None, Source::Described { .. }) => vec![Form::F32],
    };
    // f32 first: the other forms are compared with it image by image.
    forms.sort();
    forms.dedup();
    let opts = VerifyOptions {
        source,
        out: args.out,
        forms,
        threads,
        latency: LatencyPlan {
            warmup_runs: args.warmup,
            runs: args.runs.max(1),
            max_seconds: args.max_seconds,
        },
        throughput_batch: args.batch,
        limit: args.limit,
        quiet,
        command: std::env::args().collect(),
        calib: args.quant.calib.clone(),
        quant: args.quant.options()?,
        int8_model: args.int8_model.clone(),
        f16_latency: args.f16_latency,
        require_claim: args.require_claim,
        profile: args.profile,
    };
    let outcome = verify::run(&opts)?;
    print!("{}", outcome.report.summary_table());
    println!("report: {}", opts.out.join("report.json").display());
    if args.require_claim && outcome.claim_not_reproduced {
        return Ok(EXIT_CLAIM_NOT_REPRODUCED);
    }
    Ok(EXIT_OK)
}

/// Where the real ConvNeXt-T is looked for when no --model is given (from the project root).
pub const REAL_CONVNEXT_ONNX: &str = "models/convnext-tiny-224.onnx";
/// Its description, the project's first claim.
pub const REAL_CONVNEXT_DESCRIPTION: &str = "models/convnext-tiny-224.toml";

/// What `verify` measures: --model, --arch, or by default the real ConvNeXt-T when its file is
/// present, else the synthetic one (said in one line on stderr).
fn choose_source(args: &VerifyArgs) -> Result<Source> {
    let arch = match (&args.model, args.arch) {
        (Some(model), _) => {
            let why = format!("--model {}", model.display());
            return described_source(model.clone(), args, &why);
        }
        (None, Some(arch)) => *arch,
        (None, None) if std::path::Path::new(REAL_CONVNEXT_ONNX).is_file() => {
            let why = format!("the real ConvNeXt-T found at {REAL_CONVNEXT_ONNX}");
            return described_source(REAL_CONVNEXT_DESCRIPTION.into(), args, &why);
        }
        (None, None) => {
            eprintln!(
                "no --model and no real ConvNeXt-T at {REAL_CONVNEXT_ONNX} (export it with \
                 models/export_convnext_onnx.py, see README): measuring the synthetic ConvNeXt-T \
                 (seed {}) on synthetic images, accuracy not measurable",
                args.seed
            );
            Arch::tiny()
        }
    };
    if let Some(slice) = &args.slice {
        bail!(
            "--slice {}: a synthetic {} runs on synthetic images (its accuracy would mean \
             nothing); drop --slice, or evaluate a real model with --model",
            slice.display(),
            arch.name
        );
    }
    if args.labels.is_some() {
        bail!("--labels goes with --slice and a real model; drop it for a synthetic run");
    }
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    Ok(Source::Synthetic { arch, seed: args.seed, images: args.images })
}

fn described_source(model: PathBuf, args: &VerifyArgs, why: &str) -> Result<Source> {
    let Some(slice) = args.slice.clone() else {
        bail!(
            "{why} needs labelled images: pass --slice (e.g. --slice \
             ../shared/data/imagenet-val-900, or a manifest from `edgeverify slice`); \
             without images, --arch convnext-tiny measures the synthetic ConvNeXt-T"
        );
    };
    Ok(Source::Described {
        model,
        slice,
        labels: args.labels.clone(),
        slice_root: args.slice_root.clone(),
    })
}

fn run_slice(args: SliceArgs) -> Result<i32> {
    let classes = model::imagenet_classes();
    let source = Slice::load(&args.from, args.labels.as_deref(), &classes)?;
    if !source.missing.is_empty() {
        bail!(
            "{}: {} listed images are absent (e.g. {}); fix the folder or its label file",
            args.from.display(),
            source.missing.len(),
            source.missing[0].0
        );
    }
    let drawn = dataset::draw_spread(&source, args.count, args.seed);
    if drawn.len() < args.count {
        log::warn!("only {} images available, all drawn", drawn.len());
    }
    let manifest = dataset::write_manifest(
        &drawn,
        &source.root,
        &args.out,
        &args.from.display().to_string(),
        args.seed,
    )
    .with_context(|| format!("writing manifest {}", args.out.display()))?;
    let classes_used: std::collections::BTreeSet<usize> =
        manifest.images.iter().map(|i| i.label).collect();
    println!(
        "wrote {} ({} images, {} classes, seed {})",
        args.out.display(),
        manifest.images.len(),
        classes_used.len(),
        args.seed
    );
    Ok(EXIT_OK)
}

fn run_quantize(args: QuantizeArgs, quiet: bool) -> Result<i32> {
    let spec = model::ModelSpec::load(&args.model)?;
    let sha = spec.check_onnx_file()?;
    let proto = crate::engine::read_proto(&spec.onnx_path)?;
    let io = crate::engine::graph_io(
        &proto,
        &spec.onnx_path,
        spec.input.as_deref(),
        spec.output.as_deref(),
    )?;
    if args.list_ops {
        let graph = proto.graph.as_ref().context("ONNX file has no graph")?;
        for t in crate::quantize::graph::find_targets(graph) {
            println!("{}\t{:?}", t.name, t.kind);
        }
        return Ok(EXIT_OK);
    }
    let (Some(calib), Some(out)) = (&args.quant.calib, &args.out) else {
        eprintln!("error: quantize needs --calib FOLDER and --out FILE (or --list-ops)");
        return Ok(EXIT_USAGE);
    };
    // Fail on an unwritable destination now, not after minutes of calibration.
    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::report::prepare_output_dir(out_dir)?;
    let slice_hashes = match &args.slice {
        Some(s) => {
            let slice = Slice::load(s, None, &spec.classes)?;
            Some(verify::content_hashes(&slice))
        }
        None => None,
    };
    let q = verify::quantize_with_calib(
        calib,
        &spec,
        &io,
        &sha,
        &args.quant.options()?,
        slice_hashes.as_ref(),
        quiet,
    )?;
    crate::report::write_atomically(out, &crate::quantize::encode(&q.proto))
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} ops quantized, {} kept in float, {} calibration on {} images)",
        out.display(),
        q.recipe.ops_quantized.len(),
        q.recipe.ops_kept_float.len(),
        q.recipe.method,
        q.recipe.calibration.images
    );
    Ok(EXIT_OK)
}

//! ARM vs x86 agreement on real images, through the whole pipeline (JPEG decoding,
//! preprocessing, tract), for each numeric form.
//!
//! On x86_64 (part of `cargo test`) this records what x86 computes, per model, in
//! `target/tmp/arm-reference/<model>.json`: each preprocessed tensor's sha256, the top-5 and
//! the logits, after checking EfficientNet-Lite0's top-5 against onnxruntime's. An ARM build
//! of the same test, run under qemu by `scripts/arm-check` (or on a board), compares with that
//! file: bit-identical tensors, the same top-5 (up to the form's near ties), logits within the
//! form's tolerance, and every matmul on the architecture's NEON kernels.
//!
//! The int8 form is quantized once, on x86 (calibrating under qemu would take far too long):
//! the recording step writes the QDQ model next to the reference, `<model>.int8.onnx`, and
//! both architectures load that same file with the int8 loader (`Engine::from_proto`, whose
//! load-time rewrite puts the quantized matmuls on tract's integer kernels). Each ARM run also
//! writes what it computed to `<model>.<arch>-<emulated CPU>.json` there, for a closer look.

mod arm;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use edgeverify::engine::{self, Engine, Form};
use edgeverify::quantize::{self, ActType, CalibMethod, CalibrationInfo, QuantizeOptions};
use serde::{Deserialize, Serialize};

/// One numeric form to check: how to load it, and how far its ARM logits may be from x86's.
struct FormCheck {
    form: Form,
    /// Largest |ARM logit - x86 logit| accepted.
    logit_tolerance: f32,
    /// Two classes may trade places in the top-5 (or the 5th and 6th swap) only where x86's
    /// logits for them are at most this far apart; 0 demands the same top-5. Each trade is
    /// printed. (If no logit moves by more than the tolerance t, the k-th largest moves by at
    /// most t too, so two classes can only trade ranks where x86 has them within 2t: a near
    /// tie of 2t says nothing the tolerance does not, it only names the trades.)
    top5_near_tie: f32,
    load: fn(&arm::Model) -> anyhow::Result<Engine>,
}

/// The forms checked. Adding a form (f16) is adding its line here.
const FORMS: &[FormCheck] = &[
    FormCheck {
        form: Form::F32,
        // The kernels differ (NEON vs AVX/FMA tiles sum in different orders), so the last bits
        // do; seen up to ~2e-5 on logits of magnitude ~10, and 1e-3 leaves room without hiding
        // a wrong kernel (which moves logits by whole units).
        logit_tolerance: 1e-3,
        top5_near_tie: 0.0,
        load: |m| Engine::load_f32(&m.onnx, &m.io, 1, 224),
    },
    FormCheck {
        form: Form::Int8,
        // The i8 × i8 → i32 accumulations are exact on every kernel: from the same i8 inputs,
        // the A72's `arm64simd_mmm_i32_8x8`, the A76's SDOT `_8x8_dot`, armv7's `_8x4` and
        // x86's VNNI kernel give the same accumulators. What can differ is the f32 between the
        // quantizers: a value within its last bits of a rounding boundary quantizes one level
        // apart, a flipped level changes a whole row of the next matmul, and the flips
        // multiply through the network (on one Lite0 image, 7 of the first quantizer's 401,408
        // values flipped; in the last blocks a third differed, by up to 13 levels).
        // - aarch64: the int8 form's f32 convs (tract's kernels, edgeverify's depthwise op)
        //   fuse multiply-adds in the same order as on x86, so only ConvNeXt-T's GELU differs,
        //   in its last bit. Bit-identical to x86 on these images (A72 and A76 alike) and on
        //   100 of 100 val images for Lite0; ConvNeXt-T on 28 of 40 val images, the others up
        //   to 0.070.
        // - armv7: tract's f32 kernels (`vmla`) and the depthwise op multiply and add
        //   separately, so flips start early: up to 0.149 on Lite0 (logits ~10) and 0.068 on
        //   ConvNeXt-T (logits ~3) here, Lite0 up to 0.212 over 100 val images (median 0.099).
        // - x86 against itself, FMA instead of AVX-512 kernels: ConvNeXt-T up to 0.069 over
        //   200 val images.
        // 0.3 is about twice the largest seen here and below the int8 form's own distance from
        // f32 on these Lite0 images (0.32-0.67): an int8 form that strayed from x86's as far
        // as int8 strays from f32 fails.
        logit_tolerance: 0.3,
        // Where the flips happen, classes x86 has a few hundredths apart trade places: on
        // ConvNeXt-T, whose synthetic logits are nearly flat (top-5 within ~0.1 of each
        // other), rank 5 on 1 of the 5 images on armv7 (0.008 apart on x86); over val
        // images, Lite0's top-5 on 22 of 100 on armv7 (its top-1 on none), ConvNeXt-T's top-5
        // on 2 of 40 on the A72, and its top-1 on 6 of 200 between x86's own two kernel sets.
        // Twice the tolerance: see `top5_near_tie`.
        top5_near_tie: 0.6,
        load: load_int8,
    },
];

/// `<target dir>/tmp/arm-reference/<model>.int8.onnx`: the int8 form both architectures run,
/// written by the x86 recording step.
fn int8_path(model: &str) -> PathBuf {
    reference_path(model).with_file_name(format!("{model}.int8.onnx"))
}

/// The int8 form as `verify` loads a quantized file: the QDQ model through the int8 rewrite.
fn load_int8(model: &arm::Model) -> anyhow::Result<Engine> {
    let path = int8_path(model.name);
    let proto = engine::read_proto(&path).with_context(|| {
        "the x86 recording step writes it: run `cargo test --test arm_agreement` on the x86_64 \
         host first (scripts/arm-check does)"
    })?;
    let io = engine::graph_io(&proto, &path, None, None)?;
    Engine::from_proto(Form::Int8, &proto, &io, &path, 1, 224, std::time::Instant::now())
}

/// x86_64: quantizes `model` as `edgeverify quantize` does by default (MSE calibration, u8
/// activations, per-channel int8 weights, no smoothing) on [`arm::int8_calib_files`], into
/// [`int8_path`].
fn write_int8_model(model: &arm::Model, shared: &Path) {
    let started = std::time::Instant::now();
    let files = arm::int8_calib_files(shared);
    let tensors: Vec<Vec<f32>> = files
        .iter()
        .map(|f| {
            edgeverify::preprocess::load_tensor(f, &model.preprocess)
                .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()))
        })
        .collect();
    let hashes: Vec<String> =
        files.iter().map(|f| edgeverify::dataset::sha256_file(f).unwrap()).collect();
    let calibration = CalibrationInfo {
        source: format!(
            "the first {} images of imagenet-train-calib-300 (tests/arm_agreement.rs)",
            files.len()
        ),
        images: files.len(),
        failed: vec![],
        sha256: edgeverify::dataset::sha256_bytes(hashes.join("\n").as_bytes()),
        image_sha256: hashes,
    };
    let options = QuantizeOptions {
        method: CalibMethod::Mse,
        act_type: ActType::U8,
        keep_float: vec![],
        smooth_alpha: None,
        sensitivity_images: 0,
        max_drop: None,
    };
    let proto = engine::read_proto(&model.onnx).unwrap();
    let source_sha256 = edgeverify::dataset::sha256_file(&model.onnx).unwrap();
    let q = quantize::quantize(
        &proto,
        &model.io,
        &model.onnx,
        224,
        &source_sha256,
        &tensors,
        None,
        calibration,
        &options,
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{}: quantizing failed: {e:#}", model.name));
    let path = int8_path(model.name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, quantize::encode(&q.proto)).unwrap();
    eprintln!(
        "{}: quantized on {} images in {:.1} s into {}",
        model.name,
        files.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
}

/// What one architecture computed for one model.
#[derive(Debug, Serialize, Deserialize)]
struct Recording {
    arch: String,
    isa: String,
    /// Size of the ONNX file, to catch a reference recorded with another model.
    onnx_bytes: u64,
    /// sha256 of the int8 form's file ([`int8_path`]), to catch a reference and a quantized
    /// file from different recordings.
    int8_sha256: String,
    /// Per form: the matmul kernels tract picked.
    kernels: BTreeMap<String, BTreeMap<String, usize>>,
    outputs: Vec<Output>,
}

/// One image through one form.
#[derive(Debug, Serialize, Deserialize)]
struct Output {
    form: String,
    image: String,
    tensor_sha256: String,
    top5: Vec<usize>,
    /// `[1000]` f32 logits.
    logits: Vec<f32>,
}

/// `<target dir>/tmp/arm-reference/<model>.json`. A cross build's `CARGO_TARGET_TMPDIR` is
/// `<target dir>/<triple>/tmp`, so the ARM build climbs to the host's.
fn reference_path(model: &str) -> PathBuf {
    let mut tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if !cfg!(target_arch = "x86_64") {
        let target_dir = tmp.parent().and_then(Path::parent).expect("<target>/<triple>/tmp");
        tmp = target_dir.join("tmp");
    }
    tmp.join("arm-reference").join(format!("{model}.json"))
}

/// Runs every form of `model` on every image of the check.
fn compute(model: &arm::Model, shared: &Path) -> Recording {
    let tensors = arm::tensors(shared, &model.preprocess);
    let mut recording = Recording {
        arch: std::env::consts::ARCH.into(),
        isa: engine::detected_isa(),
        onnx_bytes: std::fs::metadata(&model.onnx).unwrap().len(),
        int8_sha256: edgeverify::dataset::sha256_file(&int8_path(model.name)).unwrap(),
        kernels: BTreeMap::new(),
        outputs: vec![],
    };
    for check in FORMS {
        let form = check.form.name();
        let what = format!("{} {form}", model.name);
        let started = std::time::Instant::now();
        let engine = (check.load)(model).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let loaded = started.elapsed().as_secs_f64();
        arm::check_kernels_and_isa(&engine, &what);
        if check.form == Form::Int8 {
            arm::check_int8_kernels(&engine, &what);
        }
        recording.kernels.insert(form.into(), engine.kernels.clone());
        for (image, tensor) in &tensors {
            let logits = arm::logits(&engine, tensor, &format!("{what} {image}"));
            recording.outputs.push(Output {
                form: form.into(),
                image: image.to_string(),
                tensor_sha256: arm::tensor_sha256(tensor),
                top5: engine::top_k(&logits, 5),
                logits,
            });
        }
        eprintln!(
            "{what}: loaded in {loaded:.1} s, {} images in {:.1} s",
            tensors.len(),
            started.elapsed().as_secs_f64() - loaded
        );
    }
    recording
}

/// x86_64: checks EfficientNet-Lite0 against onnxruntime's predictions where the shared
/// references have them, then writes the reference the ARM run compares with.
fn record(model: &arm::Model, shared: &Path) {
    write_int8_model(model, shared);
    let recording = compute(model, shared);
    if model.name == "efficientnet-lite0" {
        let refs = shared.join("data/reference");
        let mut onnxruntime =
            common::reference_tsv(&refs.join("efficientnet-lite0.imagenet-val-900.tsv"));
        onnxruntime.extend(common::reference_tsv(
            &refs.join("efficientnet-lite0.imagenet-train-calib-300.tsv"),
        ));
        for out in recording.outputs.iter().filter(|o| o.form == "f32") {
            let file = out.image.rsplit('/').next().unwrap();
            let (_, _, top5) = &onnxruntime[file];
            assert_eq!(&out.top5, top5, "{file}: tract's f32 top-5 differs from onnxruntime's");
        }
    }
    let path = reference_path(model.name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec(&recording).unwrap()).unwrap();
    eprintln!(
        "{}: recorded {} outputs on {} ({}) in {}",
        model.name,
        recording.outputs.len(),
        recording.arch,
        recording.isa,
        path.display()
    );
}

/// ARM: compares with the x86 reference.
fn compare(model: &arm::Model, shared: &Path) {
    let path = reference_path(model.name);
    let missing = |path: &Path, e: std::io::Error| -> ! {
        panic!(
            "{}: {e}; the x86 reference is missing: run `cargo test --test arm_agreement` on \
             the x86_64 host first (scripts/arm-check does)",
            path.display()
        )
    };
    let text = std::fs::read(&path).unwrap_or_else(|e| missing(&path, e));
    if let Err(e) = std::fs::metadata(int8_path(model.name)) {
        missing(&int8_path(model.name), e);
    }
    let x86: Recording = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{}: {e}; re-run the x86 test to rewrite it", path.display()));
    let ours = compute(model, shared);
    assert_eq!(
        ours.onnx_bytes,
        x86.onnx_bytes,
        "{}: the x86 reference {} was recorded with another model file",
        model.name,
        path.display()
    );
    assert_eq!(
        ours.int8_sha256,
        x86.int8_sha256,
        "{}: {} is not the int8 model the x86 reference {} was recorded with",
        model.name,
        int8_path(model.name).display(),
        path.display()
    );

    for check in FORMS {
        let form = check.form.name();
        let mut worst = 0f32;
        let mut near_ties = vec![];
        let mut identical = 0;
        for out in ours.outputs.iter().filter(|o| o.form == form) {
            let what = format!("{} {form} {}", model.name, out.image);
            let want =
                x86.outputs.iter().find(|o| o.form == form && o.image == out.image).unwrap_or_else(
                    || panic!("{what}: not in the x86 reference {}", path.display()),
                );
            assert_eq!(
                out.tensor_sha256, want.tensor_sha256,
                "{what}: the preprocessed tensor differs from x86's (decoding or resizing is not \
                 bit-identical on {})",
                ours.arch
            );
            near_ties.extend(check_top5(&what, out, want, check.top5_near_tie));
            identical += usize::from(out.logits == want.logits);
            worst = worst.max(common::assert_close(
                &what,
                &out.logits,
                &want.logits,
                check.logit_tolerance,
            ));
        }
        if check.form == Form::Int8 {
            // Both load the same file through the same rewrite: as many matmuls on integer
            // kernels here as on x86, none left on a float or reference path.
            let x86_kernels = &x86.kernels[form];
            assert_eq!(
                arm::integer_matmuls(&ours.kernels[form]),
                arm::integer_matmuls(x86_kernels),
                "{} int8: integer matmuls here {:?}, on x86 {x86_kernels:?}",
                model.name,
                ours.kernels[form]
            );
        }
        eprintln!(
            "{} {form} on {} (ISA {}): {} images, same tensors and {} top-5 as x86, max |logit \
             diff| {worst:e} (tolerance {:e}), logits bit-identical on {identical}; kernels {:?} \
             (x86: {:?})",
            model.name,
            ours.arch,
            ours.isa,
            arm::IMAGES.len(),
            if near_ties.is_empty() { "the same" } else { "near-tie-equal" },
            check.logit_tolerance,
            ours.kernels[form],
            x86.kernels.get(form)
        );
        for tie in &near_ties {
            eprintln!("  top-5 near tie: {tie}");
        }
    }
    let mine = path.with_file_name(format!("{}.{}.json", model.name, run_name()));
    std::fs::write(&mine, serde_json::to_vec(&ours).unwrap()).unwrap();
    eprintln!("{}: this run's outputs are in {}", model.name, mine.display());
}

/// This run's architecture, and the emulated CPU under qemu: `aarch64-cortex-a72`.
fn run_name() -> String {
    match std::env::var("QEMU_CPU") {
        Ok(cpu) => format!("{}-{cpu}", std::env::consts::ARCH),
        Err(_) => std::env::consts::ARCH.to_string(),
    }
}

/// Checks this run's top-5 against x86's: equal, except that at a rank where the classes
/// differ, x86's logits for the two classes may be at most `near_tie` apart
/// ([`FormCheck::top5_near_tie`]). Returns each such difference, described.
fn check_top5(what: &str, got: &Output, want: &Output, near_tie: f32) -> Vec<String> {
    let mut ties = vec![];
    for (rank, (&here, &x86)) in got.top5.iter().zip(&want.top5).enumerate() {
        if here == x86 {
            continue;
        }
        let gap = (want.logits[here] - want.logits[x86]).abs();
        assert!(
            gap <= near_tie,
            "{what}: top-5 differs from x86's at rank {} (class {here} here, {x86} on x86; x86's \
             logits for them {gap} apart, more than the near-tie {near_tie}): top-5 here {:?} \
             (logits {:?}), on x86 {:?} (logits {:?})",
            rank + 1,
            got.top5,
            got.top5.iter().map(|&i| got.logits[i]).collect::<Vec<_>>(),
            want.top5,
            want.top5.iter().map(|&i| want.logits[i]).collect::<Vec<_>>()
        );
        ties.push(format!(
            "{what}: rank {}: class {here} here, {x86} on x86; their logits here {:.4} and \
             {:.4}, on x86 {:.4} and {:.4} ({gap:.4} apart)",
            rank + 1,
            got.logits[here],
            got.logits[x86],
            want.logits[here],
            want.logits[x86]
        ));
    }
    ties
}

fn check(model: &arm::Model, shared: &Path) {
    if cfg!(target_arch = "x86_64") {
        record(model, shared);
    } else {
        compare(model, shared);
    }
}

#[test]
fn efficientnet_lite0_agrees_with_x86() {
    let Some(shared) = common::shared_dir() else { return };
    check(&arm::efficientnet_lite0(), &shared);
}

#[test]
fn convnext_tiny_op17_agrees_with_x86() {
    let Some(shared) = common::shared_dir() else { return };
    check(&arm::convnext_tiny_op17(&shared), &shared);
}

/// `verify` itself on this architecture, a short run: the report names the kernel families
/// that ran and, under qemu, says the run was emulated and records no board figures.
#[test]
fn verify_report_names_kernels_and_emulation() {
    use edgeverify::latency::LatencyPlan;
    use edgeverify::verify::{self, VerifyOptions};

    let Some(shared) = common::shared_dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let opts = VerifyOptions {
        source: verify::Source::Described {
            model: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml"),
            slice: shared.join("data/imagenet-val-900"),
            labels: None,
            slice_root: None,
        },
        out: out.path().to_path_buf(),
        forms: vec![Form::F32],
        threads: 1,
        latency: LatencyPlan { warmup_runs: 1, runs: 3, max_seconds: 5.0 },
        throughput_batch: 1,
        limit: Some(2),
        quiet: true,
        command: vec!["arm_agreement".into()],
        calib: None,
        quant: edgeverify::quantize::QuantizeOptions {
            method: edgeverify::quantize::CalibMethod::Mse,
            act_type: edgeverify::quantize::ActType::U8,
            keep_float: vec![],
            smooth_alpha: None,
            sensitivity_images: 0,
            max_drop: None,
        },
        int8_model: None,
        f16_latency: false,
        require_claim: false,
        profile: false,
    };
    let report = verify::run(&opts).unwrap().report;
    let env = &report.environment;
    let families = &report.forms[0].kernel_families;
    eprintln!(
        "verify on {} ({}): kernel families {families:?}, emulated {} ({:?}), knobs {:?}",
        env.arch, env.cpu_model, env.emulated, env.emulated_cpu, env.tract_knobs
    );

    assert!(!families.is_empty(), "report.json names no kernel family");
    if let Some(prefix) = arm::expected_kernel_prefix() {
        assert!(families.iter().all(|f| f.starts_with(prefix)), "{families:?} not all {prefix}");
    }
    let under_qemu = std::env::var("QEMU_CPU").is_ok() && !cfg!(target_arch = "x86_64");
    assert_eq!(env.emulated, under_qemu, "emulation detection ({})", env.cpu_model);
    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    if under_qemu {
        assert_eq!(env.emulated_cpu, std::env::var("QEMU_CPU").ok());
        assert!(report.notes.iter().any(|n| n.contains("emulation")), "{:?}", report.notes);
        assert!(env.board_before_latency.cpu_mhz.is_empty(), "host clocks recorded as the board's");
        assert!(env.board_before_latency.unavailable[0].contains("emulated"));
        assert!(markdown.contains("**Emulated** (qemu)"), "{markdown}");
        assert!(report.summary_table().contains("not board figures"));
    } else {
        assert!(env.emulated_cpu.is_none());
        assert!(env.board_after_latency.is_some(), "no board state after the latency runs");
    }
    assert!(markdown.contains("kernel families: f32: "), "{markdown}");
}

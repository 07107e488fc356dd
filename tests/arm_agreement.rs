//! ARM vs x86 agreement on real images, through the whole pipeline (JPEG decoding,
//! preprocessing, tract), for each numeric form.
//!
//! On x86_64 (part of `cargo test`) this records what x86 computes, per model, in
//! `target/tmp/arm-reference/<model>.json`: each preprocessed tensor's sha256, the top-5 and
//! the logits, after checking EfficientNet-Lite0's top-5 against onnxruntime's. An ARM build
//! of the same test, run under qemu by `scripts/arm-check` (or on a board), compares with that
//! file: bit-identical tensors, the same top-5, logits within the form's tolerance, and every
//! matmul on the architecture's NEON kernels.

mod arm;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeverify::engine::{self, Engine, Form};
use serde::{Deserialize, Serialize};

/// One numeric form to check: how to load it, and how far its ARM logits may be from x86's.
struct FormCheck {
    form: Form,
    /// Largest |ARM logit - x86 logit| accepted. f32: the kernels differ (NEON vs AVX/FMA
    /// tiles sum in different orders), so the last bits do; seen up to ~2e-5 on logits of
    /// magnitude ~10, and 1e-3 leaves room without hiding a wrong kernel (which moves logits
    /// by whole units).
    logit_tolerance: f32,
    load: fn(&arm::Model) -> anyhow::Result<Engine>,
}

/// The forms checked. Adding a form (int8, f16) is adding its line here.
const FORMS: &[FormCheck] = &[FormCheck {
    form: Form::F32,
    logit_tolerance: 1e-3,
    load: |m| Engine::load_f32(&m.onnx, &m.io, 1, 224),
}];

/// What one architecture computed for one model.
#[derive(Debug, Serialize, Deserialize)]
struct Recording {
    arch: String,
    isa: String,
    /// Size of the ONNX file, to catch a reference recorded with another model.
    onnx_bytes: u64,
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
        kernels: BTreeMap::new(),
        outputs: vec![],
    };
    for check in FORMS {
        let form = check.form.name();
        let what = format!("{} {form}", model.name);
        let engine = (check.load)(model).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        arm::check_kernels_and_isa(&engine, &what);
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
    }
    recording
}

/// x86_64: checks EfficientNet-Lite0 against onnxruntime's predictions where the shared
/// references have them, then writes the reference the ARM run compares with.
fn record(model: &arm::Model, shared: &Path) {
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
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the x86 reference is missing: run `cargo test --test arm_agreement` on \
             the x86_64 host first (scripts/arm-check does)",
            path.display()
        )
    });
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

    for check in FORMS {
        let form = check.form.name();
        let mut worst = 0f32;
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
            assert_eq!(
                out.top5,
                want.top5,
                "{what}: top-5 differs from x86's (logits here {:?}, on x86 {:?})",
                out.top5.iter().map(|&i| out.logits[i]).collect::<Vec<_>>(),
                want.top5.iter().map(|&i| want.logits[i]).collect::<Vec<_>>()
            );
            worst = worst.max(common::assert_close(
                &what,
                &out.logits,
                &want.logits,
                check.logit_tolerance,
            ));
        }
        eprintln!(
            "{} {form} on {} (ISA {}): {} images, same tensors and top-5 as x86, max |logit \
             diff| {worst:e} (tolerance {:e}); kernels {:?} (x86: {:?})",
            model.name,
            ours.arch,
            ours.isa,
            arm::IMAGES.len(),
            check.logit_tolerance,
            ours.kernels[form],
            x86.kernels.get(form)
        );
    }
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

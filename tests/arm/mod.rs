//! What the ARM checks share: the few real images and the two models they run, the whole
//! pipeline from JPEG file to logits, and what the kernels and instruction sets must be on
//! each architecture. Used by `arm_agreement.rs` (ARM vs x86) and `arm_f16.rs` (f16 vs f32).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use edgeverify::engine::{self, Engine, GraphIo};
use edgeverify::model::ModelSpec;
use edgeverify::preprocess::{self, PreprocessSpec};

/// The images checked: three ImageNet val images (227×227, upscaled by preprocessing), a
/// grayscale training image (500×330) and a wide one (1200×477), so decoding and resizing
/// take their different paths. Paths relative to `../shared/data`.
pub const IMAGES: &[&str] = &[
    "imagenet-val-900/ILSVRC2012_val_00000347.JPEG",
    "imagenet-val-900/ILSVRC2012_val_00000355.JPEG",
    "imagenet-val-900/ILSVRC2012_val_00000556.JPEG",
    "imagenet-train-calib-300/n02096051_Airedale.JPEG",
    "imagenet-train-calib-300/n03781244_monastery.JPEG",
];

/// One model of the check: its ONNX file and its preprocessing.
pub struct Model {
    /// Short name, used in file names and messages.
    pub name: &'static str,
    pub onnx: PathBuf,
    pub io: GraphIo,
    pub preprocess: PreprocessSpec,
}

/// EfficientNet-Lite0 (real weights), as its description in `models/` describes it.
pub fn efficientnet_lite0() -> Model {
    let description = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml");
    let spec = ModelSpec::load(&description).unwrap();
    model("efficientnet-lite0", spec.onnx_path, spec.preprocess)
}

/// The opset-17 ConvNeXt-T graph with synthetic weights, with ConvNeXt-T's preprocessing
/// (256 → 224 bicubic, ImageNet mean and std).
pub fn convnext_tiny_op17(shared: &Path) -> Model {
    let onnx = crate::common::unpacked_model(shared, "convnext-tiny-224-synthetic-op17");
    model("convnext-tiny-op17", onnx, PreprocessSpec::imagenet_standard())
}

fn model(name: &'static str, onnx: PathBuf, preprocess: PreprocessSpec) -> Model {
    let proto = engine::read_proto(&onnx).unwrap();
    let io = engine::graph_io(&proto, &onnx, None, None).unwrap();
    Model { name, onnx, io, preprocess }
}

/// The preprocessed tensors of [`IMAGES`], each `[3, 224, 224]` NCHW f32, with their names.
pub fn tensors(shared: &Path, spec: &PreprocessSpec) -> Vec<(&'static str, Vec<f32>)> {
    IMAGES
        .iter()
        .map(|rel| {
            let path = shared.join("data").join(rel);
            let tensor = preprocess::load_tensor(&path, spec)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            (*rel, tensor)
        })
        .collect()
}

/// Runs one image through an engine: logits `[1000]` f32.
pub fn logits(engine: &Engine, tensor: &[f32], what: &str) -> Vec<f32> {
    engine.run(tensor).unwrap_or_else(|e| panic!("{what}: inference failed: {e:#}"))
}

/// sha256 of a tensor's little-endian bytes: equal hashes mean bit-identical inputs.
pub fn tensor_sha256(tensor: &[f32]) -> String {
    let bytes: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
    edgeverify::dataset::sha256_bytes(&bytes)
}

/// The kernel family every matmul must use on this architecture: NEON on both ARM targets
/// (`armvfpv2` on armv7 would mean tract missed NEON, e.g. an emulated run without
/// `TRACT_CPU_ARM32_NEON=true`). `None` on other architectures.
pub fn expected_kernel_prefix() -> Option<&'static str> {
    if cfg!(target_arch = "aarch64") {
        Some("arm64")
    } else if cfg!(target_arch = "arm") {
        Some("armv7neon")
    } else {
        None
    }
}

/// The calibration images of the int8 form the ARM check quantizes once on x86: the first
/// [`INT8_CALIB_IMAGES`] of `imagenet-train-calib-300` in name order (training images, none of
/// them among [`IMAGES`]).
pub const INT8_CALIB_IMAGES: usize = 8;

/// The files of [`INT8_CALIB_IMAGES`], in name order.
pub fn int8_calib_files(shared: &Path) -> Vec<PathBuf> {
    let dir = shared.join("data/imagenet-train-calib-300");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpeg")))
        .collect();
    files.sort();
    files.truncate(INT8_CALIB_IMAGES);
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(!IMAGES.iter().any(|i| i.ends_with(name)), "{name} is also a checked image");
    }
    files
}

/// The kernel families an int8 form's matmuls may use on this architecture: the integer one
/// (i8 × i8 → i32) for the matmuls the int8 load-time rewrite moved to integers, the f32 one
/// for those left in float. `None` where the check names no family (x86: the integer kernel
/// depends on the CPU, `avx512vnni` here).
pub fn expected_int8_kernel_prefixes() -> Option<(&'static str, &'static str)> {
    if cfg!(target_arch = "aarch64") {
        Some(("arm64simd_mmm_i32_", "arm64simd_mmm_f32_"))
    } else if cfg!(target_arch = "arm") {
        Some(("armv7neon_mmm_i32_", "armv7neon_mmm_f32_"))
    } else {
        None
    }
}

/// Ops on integer (`_mmm_i32_`) kernels among an engine's kernels.
pub fn integer_matmuls(kernels: &std::collections::BTreeMap<String, usize>) -> usize {
    kernels.iter().filter(|(name, _)| name.contains("_mmm_i32_")).map(|(_, n)| n).sum()
}

/// Checks an int8 form's kernels: some integer matmuls everywhere; on ARM every matmul on
/// [`expected_int8_kernel_prefixes`], integer or f32 NEON kernels.
pub fn check_int8_kernels(engine: &Engine, what: &str) {
    assert!(
        integer_matmuls(&engine.kernels) > 0,
        "{what}: no matmul on an integer kernel ({:?}): the int8 rewrite did not apply",
        engine.kernels
    );
    if let Some((int, float)) = expected_int8_kernel_prefixes() {
        for name in engine.kernels.keys() {
            assert!(
                name.starts_with(int) || name.starts_with(float),
                "{what}: int8 form matmul on {name}, neither {int}* nor {float}* (all: {:?};                  ISA {})",
                engine.kernels,
                engine::detected_isa()
            );
        }
    }
}

/// Checks the kernels an engine picked against [`expected_kernel_prefix`], and tract's ISA
/// against `EDGEVERIFY_EXPECT_ISA` (comma-separated features, set by scripts/arm-check for
/// each emulated CPU, e.g. `fp16,dotprod` on a Cortex-A76).
pub fn check_kernels_and_isa(engine: &Engine, what: &str) {
    let isa = engine::detected_isa();
    if let Some(prefix) = expected_kernel_prefix() {
        assert!(!engine.kernels.is_empty(), "{what}: tract reports no matmul kernel");
        for name in engine.kernels.keys() {
            assert!(
                name.starts_with(prefix),
                "{what}: kernel {name} is not a {prefix} kernel (all: {:?}; ISA {isa}); under \
                 qemu, run through scripts/qemu-run, which sets tract's CPU knobs",
                engine.kernels
            );
        }
    }
    if let Ok(wanted) = std::env::var("EDGEVERIFY_EXPECT_ISA") {
        let have: Vec<&str> = isa.split(|c: char| !c.is_ascii_alphanumeric()).collect();
        for feature in wanted.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            assert!(
                have.contains(&feature),
                "{what}: tract's ISA {isa} lacks {feature}, which EDGEVERIFY_EXPECT_ISA expects \
                 of this CPU (check the qemu -cpu and TRACT_CPU_ISA)"
            );
        }
    }
}

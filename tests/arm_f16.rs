//! tract's f16 path on real images: the model converted by tract's own f32 → f16 transform
//! (`FloatPrecisionTranslator`), against its f32 form, in the same process.
//!
//! On aarch64 with FP16 arithmetic (Cortex-A55/A76 and up: a Pi 5, not a Pi 4; under qemu,
//! `-cpu cortex-a76` with `TRACT_CPU_ISA=+fp16`, which scripts/qemu-run sets) every f16 matmul
//! must run on tract's native `arm64fp16` kernels. Elsewhere tract runs f16 on its portable
//! kernels (or, for most matmuls, its f32 ones: without FP16 arithmetic tract computes them
//! in f32); there only EfficientNet-Lite0 is checked, which covers the transform itself.

mod arm;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use edgeverify::engine::{self, Engine};
use tract_core::floats::FloatPrecisionTranslator;
use tract_core::transform::ModelTransform;
use tract_onnx::prelude::*;

/// The f16 form of a model, built with tract's transform: input `[1, 3, 224, 224]` f16,
/// output `[1, 1000]` f16.
struct F16Form {
    plan: Arc<TypedRunnableModel>,
    kernels: BTreeMap<String, usize>,
}

impl F16Form {
    fn load(model: &arm::Model) -> F16Form {
        let proto = engine::read_proto(&model.onnx).unwrap();
        let typed = engine::typed_model(&proto, &model.io, &model.onnx, 1, 224).unwrap();
        let f16 = FloatPrecisionTranslator::new(f32::datum_type(), f16::datum_type())
            .transform_into(typed)
            .unwrap_or_else(|e| {
                panic!("{}: tract's f32 → f16 transform failed: {e:?}", model.name)
            });
        let optimized = f16.into_optimized().unwrap();
        let kernels = engine::kernels_of(&optimized);
        F16Form { plan: optimized.into_runnable().unwrap(), kernels }
    }

    /// `tensor` is `[3, 224, 224]` f32, rounded to f16 here; returns `[1000]` logits as f32.
    fn run(&self, tensor: &[f32]) -> Vec<f32> {
        let input = Tensor::from_shape(&[1, 3, 224, 224], tensor).unwrap();
        let input = input.cast_to::<f16>().unwrap().into_owned();
        let out = self.plan.run(tvec!(input.into_tvalue())).unwrap();
        let logits = out[0].cast_to::<f32>().unwrap();
        logits.to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }
}

/// Whether tract may run native f16 arithmetic here (aarch64 with `fp16` detected or forced).
fn native_fp16() -> bool {
    cfg!(target_arch = "aarch64")
        && engine::detected_isa().split(|c: char| !c.is_ascii_alphanumeric()).any(|t| t == "fp16")
}

/// f16 against f32 on the first `images` of the check's images: the same top-1, four of five
/// top-5 classes shared, and logits within `tolerance` (f16 keeps ~3 decimal digits, and a
/// deep network compounds the rounding: seen up to 0.13 on Lite0, 0.03 on ConvNeXt-T).
fn check(model: &arm::Model, shared: &Path, tolerance: f32, images: usize) {
    let f32_form = Engine::load_f32(&model.onnx, &model.io, 1, 224).unwrap();
    let f16_form = F16Form::load(model);
    let isa = engine::detected_isa();
    if native_fp16() {
        for name in f16_form.kernels.keys() {
            assert!(
                name.starts_with("arm64fp16"),
                "{}: f16 matmul on {name}, not a native arm64fp16 kernel (all {:?}; ISA {isa})",
                model.name,
                f16_form.kernels
            );
        }
    }
    let mut worst = 0f32;
    let tensors = arm::tensors(shared, &model.preprocess);
    for (image, tensor) in tensors.iter().take(images) {
        let what = format!("{} f16 {image}", model.name);
        let want = arm::logits(&f32_form, tensor, &what);
        let got = f16_form.run(tensor);
        let (top5_f32, top5_f16) = (engine::top_k(&want, 5), engine::top_k(&got, 5));
        let shared_classes = top5_f16.iter().filter(|c| top5_f32.contains(c)).count();
        assert!(
            top5_f16[0] == top5_f32[0] && shared_classes >= 4,
            "{what}: f16 top-5 {top5_f16:?} vs f32 {top5_f32:?} (f16 logits {:?}, f32 {:?})",
            top5_f16.iter().map(|&i| got[i]).collect::<Vec<_>>(),
            top5_f32.iter().map(|&i| want[i]).collect::<Vec<_>>()
        );
        worst = worst.max(common::assert_close(&what, &got, &want, tolerance));
    }
    eprintln!(
        "{} f16 vs f32 on {} (ISA {isa}): {} images, same top-1, max |logit diff| {worst:e} \
         (tolerance {tolerance:e}); f16 kernels {:?}",
        model.name,
        std::env::consts::ARCH,
        images.min(tensors.len()),
        f16_form.kernels
    );
}

#[test]
fn efficientnet_lite0_f16_agrees_with_f32() {
    let Some(shared) = common::shared_dir() else { return };
    if cfg!(target_arch = "arm") {
        eprintln!("SKIPPED: armv7 has no f16 arithmetic; edgeverify offers f16 on aarch64 only");
        return;
    }
    check(&arm::efficientnet_lite0(), &shared, 0.5, arm::IMAGES.len());
}

#[test]
fn convnext_tiny_op17_f16_agrees_with_f32() {
    let Some(shared) = common::shared_dir() else { return };
    if !native_fp16() {
        eprintln!(
            "SKIPPED: no native fp16 here (ISA {}); ConvNeXt-T's f16 check runs on aarch64 with \
             fp16 (scripts/arm-check's Cortex-A76 run)",
            engine::detected_isa()
        );
        return;
    }
    // Two images: qemu emulates fp16 arithmetic in software, ~2.5 minutes per image here.
    check(&arm::convnext_tiny_op17(&shared), &shared, 0.5, 2);
}

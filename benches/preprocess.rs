//! Preprocessing speed: JPEG decode, Pillow-exact resize (edgeverify's) against
//! fast_image_resize, and the whole image-to-tensor step, on real shared images.
//!
//! Before timing, it prints how far fast_image_resize lands from Pillow's arithmetic on the
//! same decoded pixels (max level difference, share of samples that differ): the reason
//! edgeverify resizes with its own Pillow implementation.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeverify::preprocess::{self, resize, Filter, PreprocessSpec, Rgb8};
use fast_image_resize as fr;

fn shared_images() -> Option<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/imagenet-train-calib-300");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).ok()?.map(|e| e.unwrap().path()).collect();
    files.sort();
    Some(files.into_iter().step_by(10).collect())
}

fn fir_resize(img: &Rgb8, w: usize, h: usize) -> Vec<u8> {
    let src = fr::images::Image::from_vec_u8(
        img.width as u32,
        img.height as u32,
        img.data.clone(),
        fr::PixelType::U8x3,
    )
    .unwrap();
    let mut dst = fr::images::Image::new(w as u32, h as u32, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new().resize(&src, &mut dst, &options).unwrap();
    dst.into_vec()
}

fn bench(c: &mut Criterion) {
    let Some(files) = shared_images() else {
        eprintln!("SKIPPED: ../shared is absent");
        return;
    };
    let decoded: Vec<Rgb8> = files
        .iter()
        .map(|f| preprocess::decode_rgb8(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    let targets: Vec<(usize, usize)> =
        decoded.iter().map(|d| preprocess::shortest_edge_size(d.width, d.height, 256)).collect();

    let (mut worst, mut differing, mut total) = (0u8, 0usize, 0usize);
    for (img, &(w, h)) in decoded.iter().zip(&targets) {
        let pillow = resize::resize_rgb8(img, w, h, Filter::Bicubic);
        let fir = fir_resize(img, w, h);
        for (a, b) in pillow.data.iter().zip(&fir) {
            worst = worst.max(a.abs_diff(*b));
            differing += usize::from(a != b);
        }
        total += fir.len();
    }
    eprintln!(
        "fast_image_resize vs Pillow's arithmetic on {} images: max difference {worst} levels, {:.1}% of samples differ",
        decoded.len(),
        100.0 * differing as f64 / total as f64
    );

    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let spec = PreprocessSpec::imagenet_standard();
    let mut group = c.benchmark_group("preprocess (30 calib images)");
    group.sample_size(10);
    group.bench_function("decode (mozjpeg)", |b| {
        b.iter(|| bytes.iter().map(|x| preprocess::decode_rgb8(x).unwrap().width).sum::<usize>())
    });
    group.bench_function("resize (Pillow-exact)", |b| {
        b.iter(|| {
            decoded
                .iter()
                .zip(&targets)
                .map(|(d, &(w, h))| resize::resize_rgb8(d, w, h, Filter::Bicubic).data.len())
                .sum::<usize>()
        })
    });
    group.bench_function("resize (fast_image_resize)", |b| {
        b.iter(|| {
            decoded
                .iter()
                .zip(&targets)
                .map(|(d, &(w, h))| fir_resize(d, w, h).len())
                .sum::<usize>()
        })
    });
    group.bench_function("whole image to tensor", |b| {
        b.iter(|| {
            decoded.iter().map(|d| preprocess::to_tensor(d, &spec).unwrap().len()).sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

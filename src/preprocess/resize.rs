//! Pillow's 8-bit two-pass convolution resize (`Image.resize`, `reducing_gap=None`), bit-exact.
//!
//! Pillow resamples horizontally first, rounds and clips to 8 bits, then resamples
//! vertically. Its kernel coefficients are normalised per output pixel and stored as 22-bit
//! fixed point, and the kernel's support widens with the downscaling factor (antialiasing).
//! Reproducing exactly that arithmetic is what keeps edgeverify's predictions identical to a
//! Pillow-based reference on near-tied images; `fast_image_resize` was measured against it
//! and rejected (see the module docs of `preprocess`).

/// Fixed-point precision of Pillow's 8-bit coefficients (`PRECISION_BITS` in `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The resampling filters edgeverify supports, as Pillow defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Pillow `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// Pillow `Image.BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// The Pillow resample code this filter has in a `preprocessor_config.json` (`resample`).
    pub fn from_pil_code(code: i64) -> Option<Filter> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }
}

/// Per-output-pixel source window and fixed-point weights along one axis.
struct AxisCoeffs {
    /// For each output pixel: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel, 22-bit fixed point.
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to `out_size`.
fn axis_coeffs(in_size: usize, out_size: usize, filter: Filter) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;

    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut taps = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let inv_filterscale = 1.0 / filterscale;
        // Pillow truncates toward zero after adding 0.5 (a C int cast).
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax - xmin;

        let mut total = 0.0;
        for (x, tap) in taps.iter_mut().enumerate().take(count) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * inv_filterscale);
            *tap = w;
            total += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, tap) in taps.iter().enumerate().take(count) {
            let normalised = if total != 0.0 { tap / total } else { *tap };
            row[x] = to_fixed_point(normalised);
        }
        bounds.push((xmin, count));
    }
    AxisCoeffs { bounds, weights, ksize }
}

fn to_fixed_point(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// An 8-bit RGB image, row-major, interleaved `[h, w, 3]` u8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Resizes `img` to `out_width × out_height` exactly as Pillow 13 does for an RGB image.
///
/// An axis whose size does not change is copied, as Pillow skips that pass.
pub fn resize_rgb8(img: &Rgb8, out_width: usize, out_height: usize, filter: Filter) -> Rgb8 {
    let horizontal = img.width != out_width;
    let vertical = img.height != out_height;
    let vcoeffs = axis_coeffs(img.height, out_height, filter);

    let mut current = img.clone();
    let mut vbounds = vcoeffs.bounds.clone();
    if horizontal {
        // Only the source rows the vertical pass will read are resampled horizontally.
        let first = vcoeffs.bounds.first().map(|b| b.0).unwrap_or(0);
        let last = vcoeffs.bounds.last().map(|b| b.0 + b.1).unwrap_or(img.height);
        let rows = if vertical { first..last } else { 0..img.height };
        if vertical {
            for b in &mut vbounds {
                b.0 -= first;
            }
        }
        current = resample_horizontal(img, rows, out_width, filter);
    }
    if vertical {
        current = resample_vertical(&current, &vbounds, &vcoeffs, out_height);
    }
    current
}

fn resample_horizontal(
    img: &Rgb8,
    rows: std::ops::Range<usize>,
    out_width: usize,
    filter: Filter,
) -> Rgb8 {
    let c = axis_coeffs(img.width, out_width, filter);
    let out_height = rows.len();
    let mut data = vec![0u8; out_width * out_height * 3];
    for (oy, y) in rows.enumerate() {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        let dst = &mut data[oy * out_width * 3..(oy + 1) * out_width * 3];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + count];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &w) in k.iter().enumerate() {
                let p = &src[(xmin + i) * 3..(xmin + i) * 3 + 3];
                acc[0] += i32::from(p[0]) * w;
                acc[1] += i32::from(p[1]) * w;
                acc[2] += i32::from(p[2]) * w;
            }
            dst[xx * 3] = clip8(acc[0]);
            dst[xx * 3 + 1] = clip8(acc[1]);
            dst[xx * 3 + 2] = clip8(acc[2]);
        }
    }
    Rgb8 { width: out_width, height: out_height, data }
}

fn resample_vertical(
    img: &Rgb8,
    bounds: &[(usize, usize)],
    c: &AxisCoeffs,
    out_height: usize,
) -> Rgb8 {
    let row_len = img.width * 3;
    let mut data = vec![0u8; row_len * out_height];
    let mut acc = vec![0i32; row_len];
    for (yy, &(ymin, count)) in bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + count];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (i, &w) in k.iter().enumerate() {
            let src = &img.data[(ymin + i) * row_len..(ymin + i + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(src) {
                *a += i32::from(p) * w;
            }
        }
        for (d, &a) in data[yy * row_len..(yy + 1) * row_len].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    Rgb8 { width: img.width, height: out_height, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Rgb8 {
        let data = (0..w * h * 3).map(|i| ((i * 37) % 256) as u8).collect();
        Rgb8 { width: w, height: h, data }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (inp, out) in [(227, 256), (1280, 256), (100, 256), (256, 224)] {
            let c = axis_coeffs(inp, out, Filter::Bicubic);
            for (i, &(_, count)) in c.bounds.iter().enumerate() {
                let sum: i32 = c.weights[i * c.ksize..i * c.ksize + count].iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= count as i32, "{inp}->{out} #{i}");
            }
        }
    }

    #[test]
    fn downscaling_widens_the_support() {
        let up = axis_coeffs(100, 200, Filter::Bicubic);
        let down = axis_coeffs(1000, 250, Filter::Bicubic);
        assert_eq!(up.ksize, 5);
        assert_eq!(down.ksize, 17);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Rgb8 { width: 31, height: 17, data: vec![200; 31 * 17 * 3] };
        for (w, h) in [(64, 40), (7, 5), (31, 60)] {
            let out = resize_rgb8(&img, w, h, Filter::Bicubic);
            assert!(out.data.iter().all(|&v| v == 200), "{w}x{h}");
        }
    }

    #[test]
    fn unchanged_size_is_a_copy() {
        let img = gradient(13, 9);
        assert_eq!(resize_rgb8(&img, 13, 9, Filter::Bicubic), img);
    }

    /// Reference values printed by Pillow 13.0:
    /// `Image.frombytes("RGB", (4, 2), bytes(range(24))).resize((6, 3), Image.BICUBIC)`.
    #[test]
    fn matches_pillow_upscaling() {
        let img = Rgb8 { width: 4, height: 2, data: (0u8..24).collect() };
        let out = resize_rgb8(&img, 6, 3, Filter::Bicubic);
        let pillow: [u8; 54] = [
            0, 0, 1, 0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 6, 7, 8, 7, 8, 9, 10, 11, 12,
            11, 12, 13, 14, 15, 16, 15, 16, 17, 13, 14, 15, 14, 15, 16, 17, 18, 19, 18, 19, 20, 21,
            22, 23, 22, 23, 24,
        ];
        assert_eq!(out.data, pillow);
    }

    /// Reference values printed by Pillow 13.0 for `gradient(9, 5)` (bytes `(i * 37) % 256`)
    /// `.resize((4, 3), Image.BICUBIC)`: a downscale, where the support widens.
    #[test]
    fn matches_pillow_downscaling() {
        let out = resize_rgb8(&gradient(9, 5), 4, 3, Filter::Bicubic);
        let pillow: [u8; 36] = [
            120, 82, 101, 139, 134, 98, 98, 136, 140, 115, 101, 146, 143, 156, 121, 91, 134, 160,
            157, 98, 132, 142, 153, 95, 96, 138, 177, 120, 90, 127, 145, 130, 95, 96, 138, 125,
        ];
        assert_eq!(out.data, pillow);
    }
}

//! Image preprocessing, Pillow-faithful: decode → RGB → shortest-edge resize → center crop →
//! rescale and normalise into an NCHW f32 tensor.
//!
//! Why this stack (measured, `../shared/notes/pillow-parity.md`): the `image` crate's JPEG
//! decoder (zune-jpeg) differs from libjpeg-turbo, which Pillow uses, by up to 7 levels per
//! sample, and `fast_image_resize` runs the vertical pass first with 16-bit coefficients (up
//! to 20 levels off near edges). Both moved predictions on near-tied images. So JPEGs are
//! decoded with the `mozjpeg` crate (libjpeg-turbo's decoder, built from source, bit-exact
//! with Pillow on the shared images), and the resize is Pillow's own algorithm
//! ([`resize`]), bit-exact. PNGs are decoded by the `image` crate (PNG decoding is lossless,
//! so every decoder agrees).

pub mod resize;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use resize::{Filter, Rgb8};

/// How a model wants its input prepared; a pure description, serialised into reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    /// The shortest edge is resized to this many pixels, the other edge keeping the aspect
    /// ratio as `int(size * long / short)`.
    pub resize_shortest_edge: u32,
    /// Side of the square center crop taken after resizing.
    pub crop_size: u32,
    pub filter: Filter,
    /// Factor applied to 8-bit samples before normalisation (1/255 for inputs in [0, 1]).
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PreprocessSpec {
    /// torchvision / timm ImageNet defaults: 256 → 224 bicubic crop, ImageNet mean and std.
    pub fn imagenet_standard() -> PreprocessSpec {
        PreprocessSpec {
            resize_shortest_edge: 256,
            crop_size: 224,
            filter: Filter::Bicubic,
            rescale_factor: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Number of f32 values of one preprocessed image: `3 * crop * crop`.
    pub fn tensor_len(&self) -> usize {
        3 * (self.crop_size as usize).pow(2)
    }

    /// Checks the values make sense, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.crop_size == 0 || self.resize_shortest_edge < self.crop_size {
            bail!(
                "preprocessing: resize_shortest_edge ({}) must be at least crop_size ({}), and \
                 crop_size above 0",
                self.resize_shortest_edge,
                self.crop_size
            );
        }
        if self.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            bail!("preprocessing: every std value must be positive, got {:?}", self.std);
        }
        Ok(())
    }
}

/// Decodes an image file's bytes into 8-bit RGB the way Pillow's `Image.open(..).convert("RGB")`
/// does: grayscale is replicated, CMYK converted with Pillow's formula, alpha dropped.
pub fn decode_rgb8(bytes: &[u8]) -> Result<Rgb8> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::decode(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .context("corrupt or truncated PNG")?;
        let rgb = img.to_rgb8();
        Ok(Rgb8 {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            data: rgb.into_raw(),
        })
    } else if bytes.is_empty() {
        bail!("the file is empty")
    } else {
        bail!("not a JPEG or PNG file (its first bytes are neither signature)")
    }
}

/// Size after resizing the shortest edge to `target`, as Python computes
/// `int(target * long / short)` in f64 (the reference implementations' formula).
pub fn shortest_edge_size(width: usize, height: usize, target: usize) -> (usize, usize) {
    let long_edge = |long: usize, short: usize| ((target * long) as f64 / short as f64) as usize;
    if width <= height {
        (target, long_edge(height, width))
    } else {
        (long_edge(width, height), target)
    }
}

/// Preprocesses decoded RGB into one NCHW image: `[3, crop, crop]` f32, channel-planar.
pub fn to_tensor(img: &Rgb8, spec: &PreprocessSpec) -> Result<Vec<f32>> {
    if img.width == 0 || img.height == 0 {
        bail!("the image has no pixels ({}x{})", img.width, img.height);
    }
    let target = spec.resize_shortest_edge as usize;
    let (w, h) = shortest_edge_size(img.width, img.height, target);
    let resized = resize::resize_rgb8(img, w, h, spec.filter);

    let crop = spec.crop_size as usize;
    let left = (w - crop) / 2;
    let top = (h - crop) / 2;
    let mut out = vec![0f32; 3 * crop * crop];
    let (planes_r, rest) = out.split_at_mut(crop * crop);
    let (planes_g, planes_b) = rest.split_at_mut(crop * crop);
    let planes = [planes_r, planes_g, planes_b];
    let lut = normalisation_tables(spec);
    for y in 0..crop {
        let row = &resized.data[((top + y) * w + left) * 3..((top + y) * w + left + crop) * 3];
        for x in 0..crop {
            for c in 0..3 {
                planes[c][y * crop + x] = lut[c][row[x * 3 + c] as usize];
            }
        }
    }
    Ok(out)
}

/// The normalised value of each 8-bit sample per channel: `(v * rescale - mean) / std` in f32.
fn normalisation_tables(spec: &PreprocessSpec) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let scaled = (v as f64 * spec.rescale_factor) as f32;
            *out = (scaled - spec.mean[c]) / spec.std[c];
        }
    }
    lut
}

/// Reads, decodes and preprocesses one file: `[3, crop, crop]` f32 NCHW.
pub fn load_tensor(path: &Path, spec: &PreprocessSpec) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).context("cannot read the file")?;
    let rgb = decode_rgb8(&bytes)?;
    to_tensor(&rgb, spec)
}

mod jpeg {
    //! libjpeg-turbo decoding through `mozjpeg`, with Pillow's behaviour on the edge cases.

    use super::Rgb8;
    use anyhow::{anyhow, Result};
    use mozjpeg::{ColorSpace, Decompress, Marker};
    use mozjpeg_sys as ffi;

    /// libjpeg reports a truncated stream only as a warning and pads the image with grey;
    /// Pillow refuses such a file ("image file is truncated"), so edgeverify does too.
    extern "C-unwind" fn warn_on_truncation(cinfo: &mut ffi::jpeg_common_struct, level: i32) {
        // SAFETY: libjpeg always calls this with its own valid error manager installed.
        let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code) };
        if level < 0 && code == Some(ffi::JWRN_JPEG_EOF) {
            std::panic::resume_unwind(Box::new(
                "truncated JPEG: the data ends before the image does".to_string(),
            ));
        }
    }

    fn error_manager() -> ffi::jpeg_error_mgr {
        // SAFETY: jpeg_std_error fills every field of a zeroed error manager.
        let mut err: ffi::jpeg_error_mgr = unsafe { std::mem::zeroed() };
        unsafe { ffi::jpeg_std_error(&mut err) };
        err.emit_message = Some(warn_on_truncation);
        err.error_exit = Some(fatal);
        err
    }

    extern "C-unwind" fn fatal(cinfo: &mut ffi::jpeg_common_struct) {
        // libjpeg's JMSG_LENGTH_MAX is 200; the binding types the buffer as 80 bytes, so a
        // larger cell is lent through a cast. C writes into it: hence the UnsafeCell.
        let buffer = std::cell::UnsafeCell::new([0u8; 256]);
        // SAFETY: format_message writes at most JMSG_LENGTH_MAX bytes, NUL-terminated, into
        // the cell, which is only read after the call returns.
        let msg = unsafe {
            if let Some(format) = cinfo.err.as_ref().and_then(|e| e.format_message) {
                format(cinfo, &*buffer.get().cast::<[u8; 80]>());
            }
            let bytes = &*buffer.get();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        std::panic::resume_unwind(Box::new(format!("corrupt JPEG: {msg}")));
    }

    pub fn decode(bytes: &[u8]) -> Result<Rgb8> {
        let result = std::panic::catch_unwind(|| decode_unchecked(bytes));
        match result {
            Ok(r) => r,
            Err(payload) => Err(anyhow!(payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "corrupt JPEG".to_string()))),
        }
    }

    fn decode_unchecked(bytes: &[u8]) -> Result<Rgb8> {
        let markers = [Marker::APP(14)];
        let dec = Decompress::builder()
            .with_err(error_manager())
            .with_markers(&markers)
            .from_mem(bytes)?;
        let (width, height) = dec.size();
        match dec.color_space() {
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                let adobe = dec.markers().any(|m| m.data.starts_with(b"Adobe"));
                let mut started = dec.to_colorspace(ColorSpace::JCS_CMYK)?;
                let cmyk: Vec<[u8; 4]> = started.read_scanlines()?;
                started.finish()?;
                let data = cmyk.iter().flat_map(|p| cmyk_to_rgb(*p, adobe)).collect();
                Ok(Rgb8 { width, height, data })
            }
            _ => {
                let mut started = dec.rgb()?;
                let rgb: Vec<[u8; 3]> = started.read_scanlines()?;
                started.finish()?;
                Ok(Rgb8 { width, height, data: rgb.into_flattened() })
            }
        }
    }

    /// Pillow's `cmyk2rgb`, after its `CMYK;I` unpacking of Adobe (inverted) CMYK JPEGs.
    fn cmyk_to_rgb(p: [u8; 4], adobe_inverted: bool) -> [u8; 3] {
        let [c, m, y, k] = if adobe_inverted { p.map(|v| 255 - v) } else { p };
        let nk = 255 - i32::from(k);
        let mul_div_255 = |a: i32, b: i32| {
            let t = a * b + 128;
            ((t >> 8) + t) >> 8
        };
        [c, m, y].map(|v| (nk - mul_div_255(i32::from(v), nk)).clamp(0, 255) as u8)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cmyk_white_and_black() {
            assert_eq!(cmyk_to_rgb([0, 0, 0, 0], false), [255, 255, 255]);
            assert_eq!(cmyk_to_rgb([0, 0, 0, 255], false), [0, 0, 0]);
            assert_eq!(cmyk_to_rgb([255, 255, 255, 255], true), [255, 255, 255]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_matches_python_int_division() {
        assert_eq!(shortest_edge_size(227, 227, 256), (256, 256));
        assert_eq!(shortest_edge_size(1280, 960, 256), (341, 256));
        assert_eq!(shortest_edge_size(135, 97, 256), (356, 256));
        assert_eq!(shortest_edge_size(97, 135, 256), (256, 356));
    }

    #[test]
    fn tensor_is_channel_planar_and_normalised() {
        let img = Rgb8 { width: 8, height: 8, data: [255u8, 0, 51].repeat(64) };
        let spec = PreprocessSpec {
            resize_shortest_edge: 8,
            crop_size: 4,
            filter: Filter::Bicubic,
            rescale_factor: 1.0 / 255.0,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.25, 0.5],
        };
        let t = to_tensor(&img, &spec).unwrap();
        assert_eq!(t.len(), 3 * 16);
        assert!(t[..16].iter().all(|v| (*v - 1.0).abs() < 1e-6));
        assert!(t[16..32].iter().all(|v| (*v + 2.0).abs() < 1e-6));
        assert!(t[32..].iter().all(|v| (*v + 0.6).abs() < 1e-6));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = decode_rgb8(b"hello").unwrap_err();
        assert!(err.to_string().contains("not a JPEG or PNG"));
        let err = decode_rgb8(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]).unwrap_err();
        assert!(err.to_string().contains("JPEG"), "{err:#}");
    }
}

//! Seeded synthetic images for runs without a dataset: 8-bit RGB pictures with what natural
//! photographs have and noise lacks (smooth colour gradients, sharp-edged shapes, fine grain),
//! generated from [`SplitMix64`] with integer arithmetic, so one seed gives the same pixels on
//! every platform. They carry no label: nothing can be scored on them, only run and timed.

use crate::dataset::SplitMix64;
use crate::preprocess::Rgb8;

/// Width and height of every synthetic image: not square, so the shortest-edge resize and
/// the center crop of the real preprocessing both do work.
pub const WIDTH: usize = 320;
pub const HEIGHT: usize = 256;

/// Mixed into the seed so images and synthetic weights of the same seed are unrelated draws.
const IMAGE_STREAM: u64 = 0x1A6E_5EED_0F00_D5E7;

/// Control points per side of the smooth colour field.
const GRID: usize = 5;

/// `count` images drawn from `seed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticImages {
    pub seed: u64,
    pub count: usize,
}

impl SyntheticImages {
    /// The name image `index` has in reports.
    pub fn name(&self, index: usize) -> String {
        format!("synthetic-seed{}-{index:04}", self.seed)
    }

    /// Image `index`: `[HEIGHT, WIDTH, 3]` u8, interleaved RGB.
    pub fn image(&self, index: usize) -> Rgb8 {
        let mut rng = image_rng(self.seed, index);
        let mut data = smooth_field(&mut rng);
        for _ in 0..3 {
            paint_rectangle(&mut data, &mut rng);
        }
        for sample in data.iter_mut() {
            let noise = rng.below(17) as i32 - 8;
            *sample = (*sample as i32 + noise).clamp(0, 255) as u8;
        }
        Rgb8 { width: WIDTH, height: HEIGHT, data }
    }
}

/// An independent generator per image: seeded by the `index`-th output of the images' stream.
fn image_rng(seed: u64, index: usize) -> SplitMix64 {
    let mut stream = SplitMix64(seed ^ IMAGE_STREAM);
    let mut image_seed = stream.next_u64();
    for _ in 0..index {
        image_seed = stream.next_u64();
    }
    SplitMix64(image_seed)
}

/// Bilinear interpolation of a `GRID x GRID` lattice of random colours, in 8.8 fixed point.
fn smooth_field(rng: &mut SplitMix64) -> Vec<u8> {
    let lattice: Vec<[u32; 3]> = (0..GRID * GRID)
        .map(|_| [rng.below(256) as u32, rng.below(256) as u32, rng.below(256) as u32])
        .collect();
    let position = |p: usize, size: usize| {
        let fixed = p * (GRID - 1) * 256 / (size - 1);
        let cell = (fixed >> 8).min(GRID - 2);
        (cell, (fixed - cell * 256) as u32)
    };
    let mut data = vec![0u8; WIDTH * HEIGHT * 3];
    for y in 0..HEIGHT {
        let (gy, fy) = position(y, HEIGHT);
        for x in 0..WIDTH {
            let (gx, fx) = position(x, WIDTH);
            let at = |dy: usize, dx: usize| lattice[(gy + dy) * GRID + gx + dx];
            for c in 0..3 {
                let top = at(0, 0)[c] * (256 - fx) + at(0, 1)[c] * fx;
                let bottom = at(1, 0)[c] * (256 - fx) + at(1, 1)[c] * fx;
                let value = (top * (256 - fy) + bottom * fy) >> 16;
                data[(y * WIDTH + x) * 3 + c] = value as u8;
            }
        }
    }
    data
}

/// A flat-coloured rectangle at a random place, between an eighth and a half of each side.
fn paint_rectangle(data: &mut [u8], rng: &mut SplitMix64) {
    let w = WIDTH / 8 + rng.below((WIDTH * 3 / 8) as u64) as usize;
    let h = HEIGHT / 8 + rng.below((HEIGHT * 3 / 8) as u64) as usize;
    let left = rng.below((WIDTH - w) as u64) as usize;
    let top = rng.below((HEIGHT - h) as u64) as usize;
    let colour = [rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8];
    for y in top..top + h {
        for x in left..left + w {
            data[(y * WIDTH + x) * 3..][..3].copy_from_slice(&colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_pixels_different_seed_or_index_different() {
        let a = SyntheticImages { seed: 1, count: 2 };
        let b = SyntheticImages { seed: 2, count: 2 };
        assert_eq!(a.image(0), a.image(0));
        assert_ne!(a.image(0), a.image(1));
        assert_ne!(a.image(0), b.image(0));
    }

    #[test]
    fn images_use_the_whole_range_with_structure() {
        let img = SyntheticImages { seed: 0, count: 1 }.image(0);
        assert_eq!(img.data.len(), WIDTH * HEIGHT * 3);
        let distinct: std::collections::BTreeSet<u8> = img.data.iter().copied().collect();
        assert!(distinct.len() > 100, "only {} distinct sample values", distinct.len());
        // Neighbouring pixels are close far more often than random ones would be.
        let red = |x: usize, y: usize| img.data[(y * WIDTH + x) * 3] as i32;
        let close = (0..HEIGHT)
            .flat_map(|y| (1..WIDTH).map(move |x| (x, y)))
            .filter(|&(x, y)| (red(x, y) - red(x - 1, y)).abs() <= 16)
            .count();
        assert!(close * 10 > (WIDTH - 1) * HEIGHT * 9, "{close} smooth neighbours");
    }
}

//! Random image augmentation in the spirit of Keras' `ImageDataGenerator`:
//! rotation, shifts, shear, zoom, flips and brightness. Every draw comes from
//! a stream keyed by `(seed, epoch, example index)`, so an augmented epoch is
//! reproducible and independent of batch order or thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tessera_core::AugmentConfig;

use crate::dataset::ImageDataset;
use crate::error::{Result, VisionError};

/// A validated configuration plus the seed of its random streams.
#[derive(Clone, Debug, PartialEq)]
pub struct Augmenter {
    config: AugmentConfig,
    seed: u64,
}

impl Augmenter {
    /// Checks `config`'s ranges (e.g. rotation at most 180 degrees, zoom at
    /// most 0.99). `seed` keys every draw: the same seed, epoch and example
    /// index always give the same image.
    pub fn new(config: AugmentConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, seed })
    }

    pub(crate) fn config(&self) -> &AugmentConfig {
        &self.config
    }

    fn stream(&self, epoch: u64, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.set_stream(index);
        rng
    }

    /// One augmented copy of `image` (`c x h x w`, values in `[0, 1]`).
    pub(crate) fn augment(
        &self,
        image: &[f32],
        shape: (usize, usize, usize),
        epoch: u64,
        index: u64,
    ) -> Result<Vec<f32>> {
        let (c, h, w) = shape;
        if image.len() != c * h * w || h == 0 || w == 0 {
            return Err(VisionError::InvalidConfig(format!("image buffer does not hold {c}x{h}x{w} values")));
        }
        let cfg = &self.config;
        let mut rng = self.stream(epoch, index);
        // Draw every value unconditionally, in a fixed order, so that turning
        // one transform on or off does not change the draws of the others.
        let mut sym = |r: f32| r * (2.0 * rng.r#gen::<f32>() - 1.0);
        let theta = sym(cfg.rotation_degrees).to_radians();
        let shear = sym(cfg.shear_degrees).to_radians();
        let tx = sym(cfg.width_shift) * w as f32;
        let ty = sym(cfg.height_shift) * h as f32;
        let zx = 1.0 + sym(cfg.zoom);
        let zy = 1.0 + sym(cfg.zoom);
        let bright = 1.0 + sym(cfg.brightness);
        let flip_h = cfg.horizontal_flip && rng.r#gen::<bool>();
        let flip_v = cfg.vertical_flip && rng.r#gen::<bool>();

        // Output -> source mapping about the image centre: rotation, shear, zoom, shift.
        let (s, co) = theta.sin_cos();
        let (ss, sc) = shear.sin_cos();
        let m = [[co * zx, (-s * sc - co * ss) * zy], [s * zx, (co * sc - s * ss) * zy]];
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let mut out = Vec::with_capacity(image.len());
        for plane in image.chunks_exact(h * w) {
            for y in 0..h {
                for x in 0..w {
                    let ox = (if flip_h { w - 1 - x } else { x }) as f32 - cx;
                    let oy = (if flip_v { h - 1 - y } else { y }) as f32 - cy;
                    let sx = m[0][0] * ox + m[0][1] * oy + cx - tx;
                    let sy = m[1][0] * ox + m[1][1] * oy + cy - ty;
                    let v = sample_bilinear(plane, h, w, sx, sy, cfg.fill);
                    out.push((v * bright).clamp(0.0, 1.0));
                }
            }
        }
        Ok(out)
    }

    /// The whole data set augmented for one epoch (labels unchanged).
    pub(crate) fn augment_dataset(&self, data: &ImageDataset, epoch: u64) -> Result<ImageDataset> {
        let shape = data.image_shape();
        let mut pixels = Vec::with_capacity(data.len() * shape.0 * shape.1 * shape.2);
        for i in 0..data.len() {
            let img = data.image(i).ok_or(VisionError::EmptyDataset)?;
            pixels.extend(self.augment(img, shape, epoch, i as u64)?);
        }
        ImageDataset::new(shape.0, shape.1, shape.2, pixels, data.labels().to_vec(), data.class_names().to_vec())
    }
}

fn sample_bilinear(plane: &[f32], h: usize, w: usize, x: f32, y: f32, fill: f32) -> f32 {
    if !(x > -1.0 && y > -1.0 && x < w as f32 && y < h as f32) {
        return fill;
    }
    let (x0, y0) = (x.floor(), y.floor());
    let (tx, ty) = (x - x0, y - y0);
    let at = |xi: f32, yi: f32| {
        if xi < 0.0 || yi < 0.0 || xi >= w as f32 || yi >= h as f32 {
            fill
        } else {
            plane[yi as usize * w + xi as usize]
        }
    };
    let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1.0, y0) * tx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - tx) + at(x0 + 1.0, y0 + 1.0) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// Writes images (`c x h x w`, `c` 1 or 3, values in `[0, 1]`) as one PNG
/// grid with `columns` tiles per row and a 1-pixel gap. Only the tests
/// look at augmented images this way.
#[cfg(test)]
fn write_png_grid(
    path: &std::path::Path,
    images: &[Vec<f32>],
    shape: (usize, usize, usize),
    columns: usize,
) -> Result<()> {
    let (c, h, w) = shape;
    if images.is_empty() {
        return Err(VisionError::EmptyDataset);
    }
    if columns == 0 || !matches!(c, 1 | 3) || images.iter().any(|im| im.len() != c * h * w) {
        return Err(VisionError::InvalidConfig(
            "grid needs columns > 0 and 1- or 3-channel images of one shape".into(),
        ));
    }
    let rows = images.len().div_ceil(columns);
    let (gw, gh) = (columns * (w + 1) - 1, rows * (h + 1) - 1);
    let mut grid = image::RgbImage::new(gw as u32, gh as u32);
    for (k, img) in images.iter().enumerate() {
        let (ox, oy) = ((k % columns) * (w + 1), (k / columns) * (h + 1));
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    (img[(if c == 1 { 0 } else { ch }) * h * w + y * w + x].clamp(0.0, 1.0) * 255.0).round() as u8
                };
                grid.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb([px(0), px(1), px(2)]));
            }
        }
    }
    grid.save(path).map_err(|e| VisionError::Write { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x8x8 image with a bright off-centre square.
    fn square() -> Vec<f32> {
        (0..64).map(|i| if (1..4).contains(&(i / 8)) && (1..4).contains(&(i % 8)) { 0.8 } else { 0.1 }).collect()
    }

    #[test]
    fn identity_config_returns_the_image() {
        let a = Augmenter::new(AugmentConfig::none(), 1).unwrap();
        let img = square();
        let out = a.augment(&img, (1, 8, 8), 0, 0).unwrap();
        assert!(img.iter().zip(&out).all(|(x, y)| (x - y).abs() < 1e-6));
    }

    #[test]
    fn flips_mirror_exactly() {
        let cfg = AugmentConfig { horizontal_flip: true, ..AugmentConfig::none() };
        let a = Augmenter::new(cfg, 3).unwrap();
        let img = square();
        let mirrored: Vec<f32> = (0..64).map(|i| img[(i / 8) * 8 + 7 - i % 8]).collect();
        let outs: Vec<Vec<f32>> = (0..16).map(|i| a.augment(&img, (1, 8, 8), 0, i).unwrap()).collect();
        let flipped = outs.iter().filter(|o| o.iter().zip(&mirrored).all(|(x, y)| (x - y).abs() < 1e-6)).count();
        let kept = outs.iter().filter(|o| o.iter().zip(&img).all(|(x, y)| (x - y).abs() < 1e-6)).count();
        assert_eq!(flipped + kept, 16, "a flip-only augmenter either mirrors or keeps");
        assert!(flipped > 0 && kept > 0);
    }

    #[test]
    fn deterministic_per_seed_epoch_and_index() {
        let a = Augmenter::new(AugmentConfig::light(), 9).unwrap();
        let img = square();
        let x = a.augment(&img, (1, 8, 8), 2, 5).unwrap();
        assert_eq!(x, a.augment(&img, (1, 8, 8), 2, 5).unwrap());
        assert_ne!(x, a.augment(&img, (1, 8, 8), 3, 5).unwrap());
        assert_ne!(x, a.augment(&img, (1, 8, 8), 2, 6).unwrap());
        let b = Augmenter::new(AugmentConfig::light(), 10).unwrap();
        assert_ne!(x, b.augment(&img, (1, 8, 8), 2, 5).unwrap());
    }

    #[test]
    fn invalid_settings_are_rejected() {
        for cfg in [
            AugmentConfig { zoom: 1.5, ..AugmentConfig::none() },
            AugmentConfig { rotation_degrees: f32::NAN, ..AugmentConfig::none() },
            AugmentConfig { brightness: -0.1, ..AugmentConfig::none() },
        ] {
            assert!(matches!(
                Augmenter::new(cfg, 0),
                Err(VisionError::Model(tessera_core::ModelConfigError::AugmentRange { .. }))
            ));
        }
        let a = Augmenter::new(AugmentConfig::light(), 0).unwrap();
        assert!(a.augment(&[0.0; 5], (1, 2, 2), 0, 0).is_err());
    }

    #[test]
    fn png_grid_of_augmented_images() {
        let dir = tempfile::tempdir().unwrap();
        let a = Augmenter::new(AugmentConfig::light(), 4).unwrap();
        let img: Vec<f32> = (0..3 * 16 * 16).map(|i| ((i % 16) as f32 / 15.0) * 0.9).collect();
        let outs: Vec<Vec<f32>> = (0..12).map(|i| a.augment(&img, (3, 16, 16), 0, i).unwrap()).collect();
        for o in &outs {
            assert_eq!(o.len(), img.len());
            assert!(o.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        assert!(outs.windows(2).all(|p| p[0] != p[1]), "every example gets its own draw");
        let path = dir.path().join("grid.png");
        write_png_grid(&path, &outs, (3, 16, 16), 4).unwrap();
        let back = image::open(&path).unwrap();
        assert_eq!((back.width(), back.height()), (4 * 17 - 1, 3 * 17 - 1));
        assert!(write_png_grid(&path, &[], (3, 16, 16), 4).is_err());
    }
}

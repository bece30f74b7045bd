//! Image-folder data sets: `root/<class>/<image>.{png,jpg,jpeg}`, classes in
//! sorted directory order. Images are decoded with the `image` crate, resized
//! to a common size and stored in `[0, 1]`.

use std::path::{Path, PathBuf};

use crate::dataset::{ImageDataset, resize_bilinear};
use crate::error::{Result, VisionError};

/// How files on disk become stored images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// Stored `(height, width)`.
    pub size: (usize, usize),
    /// 1 (luma) or 3 (RGB).
    pub channels: usize,
    /// When true an image of another size is an error instead of being resized.
    pub require_exact_size: bool,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| VisionError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| VisionError::io(dir, err)))
        .collect::<Result<_>>()?;
    out.sort();
    Ok(out)
}

/// Decodes one file into `channels x h x w` values in `[0, 1]`.
pub fn load_image(path: &Path, opts: &FolderOptions) -> Result<Vec<f32>> {
    let (h, w) = opts.size;
    if h == 0 || w == 0 || !matches!(opts.channels, 1 | 3) {
        return Err(VisionError::InvalidConfig("folder images need a positive size and 1 or 3 channels".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| VisionError::io(path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| VisionError::BadImage { path: path.to_path_buf(), reason: e.to_string() })?;
    let (iw, ih) = (img.width(), img.height());
    if opts.require_exact_size && (iw as usize, ih as usize) != (w, h) {
        return Err(VisionError::WrongImageSize {
            path: path.to_path_buf(),
            expected: (w as u32, h as u32),
            actual: (iw, ih),
        });
    }
    let (iw, ih) = (iw as usize, ih as usize);
    let planes: Vec<Vec<f32>> = if opts.channels == 1 {
        vec![img.to_luma8().into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect()]
    } else {
        let rgb = img.to_rgb8().into_raw();
        (0..3).map(|c| rgb.iter().skip(c).step_by(3).map(|&v| f32::from(v) / 255.0).collect()).collect()
    };
    Ok(planes.iter().flat_map(|p| resize_bilinear(p, ih, iw, h, w)).collect())
}

/// Loads every image below `root`, one subdirectory per class. A class
/// directory without images is an [`VisionError::EmptyClass`] error; files
/// that are not png/jpeg are ignored.
pub fn load_image_folder(root: &Path, opts: &FolderOptions) -> Result<ImageDataset> {
    let classes: Vec<PathBuf> = sorted_entries(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(VisionError::EmptyDataset);
    }
    let mut names = Vec::with_capacity(classes.len());
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (label, dir) in classes.iter().enumerate() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
        if files.is_empty() {
            return Err(VisionError::EmptyClass { class: name });
        }
        for file in files {
            pixels.extend(load_image(&file, opts)?);
            labels.push(label);
        }
        names.push(name);
    }
    ImageDataset::new(opts.channels, opts.size.0, opts.size.1, pixels, labels, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn write_png(path: &Path, w: u32, h: u32, color: [u8; 3]) {
        RgbImage::from_pixel(w, h, Rgb(color)).save(path).unwrap();
    }

    #[test]
    fn loads_classes_in_sorted_order_and_resizes() {
        let dir = tempfile::tempdir().unwrap();
        for (class, color) in [("cat", [255, 0, 0]), ("ant", [0, 0, 255])] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            write_png(&dir.path().join(class).join("a.png"), 6, 4, color);
            write_png(&dir.path().join(class).join("b.PNG"), 8, 8, color);
            std::fs::write(dir.path().join(class).join("notes.txt"), "ignored").unwrap();
        }
        let opts = FolderOptions { size: (5, 5), channels: 3, require_exact_size: false };
        let ds = load_image_folder(dir.path(), &opts).unwrap();
        assert_eq!(ds.class_names(), ["ant", "cat"]);
        assert_eq!(ds.labels(), [0, 0, 1, 1]);
        assert_eq!(ds.image_shape(), (3, 5, 5));
        let cat = ds.image(2).unwrap();
        assert!(cat[..25].iter().all(|&v| (v - 1.0).abs() < 1e-6), "red plane of a red image");
        assert!(cat[25..].iter().all(|&v| v.abs() < 1e-6));
        let gray = load_image_folder(dir.path(), &FolderOptions { channels: 1, ..opts }).unwrap();
        assert_eq!(gray.image_shape(), (1, 5, 5));
    }

    #[test]
    fn bad_folders_give_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FolderOptions { size: (4, 6), channels: 3, require_exact_size: true };
        assert!(matches!(load_image_folder(dir.path(), &opts), Err(VisionError::EmptyDataset)));
        assert!(matches!(load_image_folder(&dir.path().join("nope"), &opts), Err(VisionError::Io { .. })));
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        write_png(&dir.path().join("a").join("x.png"), 6, 4, [1, 2, 3]);
        match load_image_folder(dir.path(), &opts) {
            Err(VisionError::EmptyClass { class }) => assert_eq!(class, "b"),
            other => panic!("expected EmptyClass, got {other:?}"),
        }
        write_png(&dir.path().join("b").join("y.png"), 5, 5, [1, 2, 3]);
        assert!(matches!(load_image_folder(dir.path(), &opts), Err(VisionError::WrongImageSize { .. })));
        std::fs::write(dir.path().join("b").join("y.png"), b"\x89PNG truncated").unwrap();
        assert!(matches!(load_image_folder(dir.path(), &opts), Err(VisionError::BadImage { .. })));
    }
}

//! In-memory labelled images, stratified splits, batching and the
//! preprocessing that turns stored pixels into a model's input tensor.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, VisionError};

/// Images stored channel-first (`c x h x w`) with values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDataset {
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<f32>,
    labels: Vec<usize>,
    class_names: Vec<String>,
}

impl ImageDataset {
    /// Checks that the pixel buffer holds `labels.len()` images of the given
    /// shape, that every label names a class and that no class is empty.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<f32>,
        labels: Vec<usize>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        if labels.is_empty() {
            return Err(VisionError::EmptyDataset);
        }
        if channels == 0 || height == 0 || width == 0 {
            return Err(VisionError::InvalidConfig("image dimensions must be positive".into()));
        }
        let per_image = channels * height * width;
        if pixels.len() != per_image * labels.len() {
            return Err(VisionError::LabelCountMismatch { images: pixels.len() / per_image, labels: labels.len() });
        }
        let num_classes = class_names.len();
        if let Some(&label) = labels.iter().find(|&&l| l >= num_classes) {
            return Err(VisionError::LabelOutOfRange { label, num_classes });
        }
        let ds = Self { channels, height, width, pixels, labels, class_names };
        if let Some(c) = ds.class_counts().iter().position(|&n| n == 0) {
            return Err(VisionError::EmptyClass { class: ds.class_names[c].clone() });
        }
        Ok(ds)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Never true for a data set built by [`Self::new`], which rejects empty ones.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `(channels, height, width)` of every stored image.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Number of classes (every one has at least one example).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Class names in label order: label `i` is `class_names()[i]`.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The label of every example, in `0..num_classes()`.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Pixels of image `index` (`c x h x w`); `None` past the end.
    pub fn image(&self, index: usize) -> Option<&[f32]> {
        let n = self.channels * self.height * self.width;
        self.pixels.get(index * n..(index + 1) * n)
    }

    pub(crate) fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// The examples at `indices`, in that order (out-of-range indices are an error).
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let n = self.channels * self.height * self.width;
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let img = self
                .image(i)
                .ok_or_else(|| VisionError::InvalidConfig(format!("index {i} past the end ({})", self.len())))?;
            pixels.extend_from_slice(img);
            labels.push(self.labels[i]);
        }
        Self::new(self.channels, self.height, self.width, pixels, labels, self.class_names.clone())
    }

    /// Per-class shuffled index lists (deterministic under `seed`).
    fn shuffled_by_class(&self, seed: u64) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); self.num_classes()];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l].push(i);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for list in &mut by_class {
            list.shuffle(&mut rng);
        }
        by_class
    }

    /// Splits into `(train, test)` keeping class proportions: each class puts
    /// `round(test_fraction * n)` examples in test, but at least one on each side.
    pub fn stratified_split(&self, test_fraction: f64, seed: u64) -> Result<(Self, Self)> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(VisionError::InvalidConfig("test_fraction must lie in (0, 1)".into()));
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (class, list) in self.shuffled_by_class(seed).into_iter().enumerate() {
            if list.len() < 2 {
                return Err(VisionError::InvalidConfig(format!(
                    "class `{}` needs at least two examples to split",
                    self.class_names[class]
                )));
            }
            let k = ((list.len() as f64 * test_fraction).round() as usize).clamp(1, list.len() - 1);
            test.extend_from_slice(&list[..k]);
            train.extend_from_slice(&list[k..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        Ok((self.select(&train)?, self.select(&test)?))
    }

    /// A class-balanced sample of `per_class` examples from each class.
    pub fn stratified_sample(&self, per_class: usize, seed: u64) -> Result<Self> {
        let mut keep = Vec::new();
        for (class, list) in self.shuffled_by_class(seed).into_iter().enumerate() {
            if list.len() < per_class {
                return Err(VisionError::InvalidConfig(format!(
                    "class `{}` has {} examples, {per_class} requested",
                    self.class_names[class],
                    list.len()
                )));
            }
            keep.extend_from_slice(&list[..per_class]);
        }
        keep.sort_unstable();
        self.select(&keep)
    }

    /// Index batches covering the data set once; shuffled when `seed` is given.
    pub(crate) fn batches(&self, batch_size: usize, seed: Option<u64>) -> Result<Vec<Vec<usize>>> {
        if batch_size == 0 {
            return Err(VisionError::InvalidConfig("batch_size must be positive".into()));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(seed) = seed {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
    }
}

/// Per-channel normalisation applied after resizing: `(x - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Subtracted per output channel (a one-channel output uses the first value).
    pub mean: [f32; 3],
    /// Divides per channel after the mean is subtracted.
    pub std: [f32; 3],
}

impl Normalization {
    /// What the TensorFlow EfficientNet-Lite checkpoints were trained with:
    /// `(255 x - 127) / 128`.
    pub const LITE: Self = Self { mean: [127.0 / 255.0; 3], std: [128.0 / 255.0; 3] };
    /// The identity: values stay in `[0, 1]`.
    pub const NONE: Self = Self { mean: [0.0; 3], std: [1.0; 3] };
}

/// How stored images become model input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Output `(height, width)`; bilinear resampling when it differs.
    pub size: (usize, usize),
    /// Output channels: 1 or 3. Grayscale is replicated to 3 for ImageNet backbones.
    pub channels: usize,
    /// Applied after resizing; EfficientNet-Lite0 expects [`Normalization::LITE`].
    pub normalization: Normalization,
}

impl Preprocess {
    /// Resize to `size` (height, width), map to `channels`, then normalise.
    pub fn new(size: (usize, usize), channels: usize, normalization: Normalization) -> Self {
        Self { size, channels, normalization }
    }

    /// One image `c x h x w` in `[0, 1]` to the model's layout, appended to `out`.
    pub(crate) fn apply_into(&self, image: &[f32], shape: (usize, usize, usize), out: &mut Vec<f32>) -> Result<()> {
        let (c, h, w) = shape;
        if image.len() != c * h * w || h == 0 || w == 0 {
            return Err(VisionError::InvalidConfig(format!("image buffer does not hold {c}x{h}x{w} values")));
        }
        let (oh, ow) = self.size;
        if oh == 0 || ow == 0 {
            return Err(VisionError::InvalidConfig("output size must be positive".into()));
        }
        for oc in 0..self.channels {
            let src_c = match (c, self.channels) {
                (1, _) => 0,
                (3, 3) => oc,
                (3, 1) => usize::MAX, // luminance, below
                _ => {
                    return Err(VisionError::InvalidConfig(format!("cannot map {c} channels to {}", self.channels)));
                }
            };
            let plane: Vec<f32> = if src_c == usize::MAX {
                (0..h * w).map(|i| 0.299 * image[i] + 0.587 * image[h * w + i] + 0.114 * image[2 * h * w + i]).collect()
            } else {
                image[src_c * h * w..(src_c + 1) * h * w].to_vec()
            };
            let (m, s) = (self.normalization.mean[oc.min(2)], self.normalization.std[oc.min(2)]);
            let resized = resize_bilinear(&plane, h, w, oh, ow);
            out.extend(resized.into_iter().map(|v| (v - m) / s));
        }
        Ok(())
    }

    /// The examples at `indices` as one `[n, c, h, w]` tensor.
    pub fn batch(&self, data: &ImageDataset, indices: &[usize], device: &Device) -> Result<Tensor<4>> {
        let images: Vec<&[f32]> = indices
            .iter()
            .map(|&i| data.image(i).ok_or_else(|| VisionError::InvalidConfig(format!("index {i} past the end"))))
            .collect::<Result<_>>()?;
        self.batch_from(&images, data.image_shape(), device)
    }

    /// Raw images (all of `shape`) as one `[n, c, h, w]` tensor.
    pub(crate) fn batch_from(
        &self,
        images: &[&[f32]],
        shape: (usize, usize, usize),
        device: &Device,
    ) -> Result<Tensor<4>> {
        if images.is_empty() {
            return Err(VisionError::EmptyDataset);
        }
        let (oh, ow) = self.size;
        let mut buf = Vec::with_capacity(images.len() * self.channels * oh * ow);
        for img in images {
            self.apply_into(img, shape, &mut buf)?;
        }
        Ok(Tensor::from_data(TensorData::new(buf, [images.len(), self.channels, oh, ow]), device))
    }
}

/// Bilinear resampling of one plane with pixel centres aligned
/// (`align_corners = false`), edges clamped.
pub(crate) fn resize_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    if h == 0 || w == 0 || src.len() < h * w {
        return vec![0.0; oh * ow];
    }
    let (sy, sx) = (h as f32 / oh as f32, w as f32 / ow as f32);
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..ow {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bottom = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n_per_class: usize, classes: usize) -> ImageDataset {
        let n = n_per_class * classes;
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let pixels: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32 / 7.0).collect();
        ImageDataset::new(1, 2, 2, pixels, labels, (0..classes).map(|c| format!("c{c}")).collect()).unwrap()
    }

    #[test]
    fn construction_rejects_bad_input() {
        let names = vec!["a".to_string(), "b".to_string()];
        assert!(matches!(ImageDataset::new(1, 2, 2, vec![], vec![], names.clone()), Err(VisionError::EmptyDataset)));
        assert!(matches!(
            ImageDataset::new(1, 2, 2, vec![0.0; 7], vec![0, 1], names.clone()),
            Err(VisionError::LabelCountMismatch { .. })
        ));
        assert!(matches!(
            ImageDataset::new(1, 2, 2, vec![0.0; 8], vec![0, 2], names.clone()),
            Err(VisionError::LabelOutOfRange { label: 2, num_classes: 2 })
        ));
        match ImageDataset::new(1, 2, 2, vec![0.0; 8], vec![0, 0], names) {
            Err(VisionError::EmptyClass { class }) => assert_eq!(class, "b"),
            other => panic!("expected EmptyClass, got {other:?}"),
        }
    }

    #[test]
    fn stratified_split_keeps_proportions_and_is_deterministic() {
        let ds = toy(10, 3);
        let (train, test) = ds.stratified_split(0.3, 7).unwrap();
        assert_eq!(train.class_counts(), vec![7, 7, 7]);
        assert_eq!(test.class_counts(), vec![3, 3, 3]);
        let (train2, _) = ds.stratified_split(0.3, 7).unwrap();
        assert_eq!(train, train2);
        let (train3, _) = ds.stratified_split(0.3, 8).unwrap();
        assert_ne!(train.labels().len(), 0);
        assert_ne!(train.pixels, train3.pixels, "another seed picks other examples");
        assert!(ds.stratified_split(1.0, 0).is_err());
        let sample = ds.stratified_sample(4, 1).unwrap();
        assert_eq!(sample.class_counts(), vec![4, 4, 4]);
        assert!(ds.stratified_sample(11, 1).is_err());
    }

    #[test]
    fn batches_cover_every_example_once() {
        let ds = toy(5, 2);
        let batches = ds.batches(3, Some(1)).unwrap();
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let mut all: Vec<usize> = batches.concat();
        assert_ne!(all, (0..10).collect::<Vec<_>>(), "shuffled");
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(ds.batches(0, None).is_err());
    }

    #[test]
    fn preprocess_replicates_gray_resizes_and_normalizes() {
        let ds = toy(1, 2);
        let pre = Preprocess::new((4, 4), 3, Normalization::LITE);
        let t = pre.batch(&ds, &[0, 1], &Device::flex()).unwrap();
        assert_eq!(t.dims(), [2, 3, 4, 4]);
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v[..16], v[16..32], "gray replicated to every channel");
        assert!(v.iter().all(|x| (-1.0..=1.01).contains(x)));
        // A constant plane stays constant under resizing.
        assert!(resize_bilinear(&[0.25; 9], 3, 3, 5, 7).iter().all(|&x| (x - 0.25).abs() < 1e-6));
        assert_eq!(resize_bilinear(&[0.0, 1.0], 1, 2, 1, 2), vec![0.0, 1.0]);
    }
}

//! A member's images as its `[data]` section describes them. The `[model]`
//! section for images is `tessera_core::VisionModelConfig` (shared with the
//! aggregator); the network it describes is built by `tessera_vision`, and
//! the model is `tessera_vision::VisionModel`.

use tessera_vision::{FolderOptions, ImageDataset, VisionError, load_idx_dataset, load_image_folder};

use crate::config::{ImageDataKind, ImageDataSection};

/// Loads a member's images as `[data]` describes them and splits them
/// (stratified, by `split_seed`) into its own train and test sets.
pub(crate) fn load_member_images(d: &ImageDataSection) -> Result<(ImageDataset, ImageDataset), VisionError> {
    let data = match d.kind {
        ImageDataKind::Idx => {
            let labels = d
                .labels
                .as_ref()
                .ok_or_else(|| VisionError::InvalidConfig("idx data needs `labels`, the IDX label file".into()))?;
            let names: Vec<&str> = d.classes.iter().map(String::as_str).collect();
            load_idx_dataset(&d.path, labels, &names)?
        }
        ImageDataKind::ImageFolder => {
            let [h, w] = d.image_size.ok_or_else(|| {
                VisionError::InvalidConfig("image_folder data needs `image_size = [height, width]`".into())
            })?;
            let opts = FolderOptions { size: (h, w), channels: d.channels, require_exact_size: false };
            let data = load_image_folder(&d.path, &opts)?;
            if data.class_names() != d.classes.as_slice() {
                return Err(VisionError::InvalidConfig(format!(
                    "class folders {:?} differ from the configured classes {:?}",
                    data.class_names(),
                    d.classes
                )));
            }
            data
        }
    };
    let data = match d.per_class {
        Some(k) => data.stratified_sample(k, d.split_seed)?,
        None => data,
    };
    data.stratified_split(d.test, d.split_seed)
}

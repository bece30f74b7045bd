//! The member's data loaders: CSV tables, IDX files, image files.

use super::*;

/// The tabular CSV loader and the preprocessing that follows it. The first
/// byte picks the table spec (bit 5: a declared schema instead of fitting).
pub fn csv_loader(data: &[u8]) {
    use tessera_tabular::{SplitConfig, TabularSpec, load_csv};
    let Some((&head, body)) = data.split_first() else { return };
    let spec = TabularSpec {
        label: if head & 1 == 0 { "label".into() } else { "y".into() },
        features: None,
        ignore: if head & 2 == 0 { vec![] } else { vec!["id".into()] },
        categorical: if head & 4 == 0 { vec![] } else { vec!["c".into()] },
        classes: if head & 8 == 0 { None } else { Some(vec!["a".into(), "b".into()]) },
        missing_indicators: head & 16 == 0,
        schema: if head & 32 == 0 {
            tessera_core::SchemaSource::FitLocally
        } else {
            tessera_core::SchemaSource::Declared(tessera_core::FeatureSchema {
                features: vec![
                    tessera_core::FeatureDecl::Numeric {
                        name: "x".into(),
                        min: -1.0,
                        max: 1.0,
                        center: 0.0,
                        scale: 1.0,
                        missing_indicator: head & 64 == 0,
                    },
                    tessera_core::FeatureDecl::Categorical {
                        name: "c".into(),
                        categories: vec!["p".into(), "q".into()],
                    },
                ],
            })
        },
    };
    let file = scratch_file("data.csv", body);
    if let Ok(table) = load_csv(file.path(), &spec) {
        let split = SplitConfig { validation: 0.2, test: 0.2, seed: u64::from(head) };
        let _ = tessera_tabular::TabularData::from_table(&table, &spec, &split);
    }
}

/// The IDX decoder (MNIST / Fashion-MNIST files), plain and gzip-wrapped.
pub fn idx_loader(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else { return };
    let _ = tessera_vision::parse_idx(body, Path::new("fuzz.idx"));
    if head & 1 == 1 {
        let f = scratch_file("fuzz-idx.gz", body);
        let _ = tessera_vision::read_idx(f.path());
    }
}

/// The image-folder decoder for one file (PNG or JPEG by extension, the
/// content decides), at a size and channel count the first byte picks.
pub fn image_loader(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else { return };
    let name = if head & 1 == 0 { "image.png" } else { "image.jpg" };
    let opts = tessera_vision::FolderOptions {
        size: (usize::from(head >> 4) + 1, usize::from(head >> 4) + 2),
        channels: if head & 2 == 0 { 1 } else { 3 },
        require_exact_size: head & 4 != 0,
    };
    let f = scratch_file(name, body);
    let _ = tessera_vision::load_image(f.path(), &opts);
}

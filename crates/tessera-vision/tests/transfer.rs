//! Freezing, trainable-parameter exchange and the two training paths, on a
//! randomly initialised backbone and tiny synthetic images (no weights needed).

use burn::tensor::Device;
use tessera_core::{AugmentConfig, ModelParams};
use tessera_vision::NUM_BLOCKS;
use tessera_vision::{
    Augmenter, EfficientNetLite0, FeatureCache, ImageDataset, Normalization, Preprocess, SmallCnn, TrainConfig,
    TransferModel, VisionError, evaluate_head, fit_transfer, train_head,
};

/// Two classes that differ in where a bright bar sits: 16 images of 1x16x16.
fn bars(n_per_class: usize) -> ImageDataset {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..2 * n_per_class {
        let class = i % 2;
        let offset = (i / 2) % 3;
        for y in 0..16 {
            for x in 0..16 {
                let on = if class == 0 {
                    (4 + offset..7 + offset).contains(&y)
                } else {
                    (4 + offset..7 + offset).contains(&x)
                };
                pixels.push(if on { 0.9 } else { 0.1 });
            }
        }
        labels.push(class);
    }
    ImageDataset::new(1, 16, 16, pixels, labels, vec!["horizontal".into(), "vertical".into()]).unwrap()
}

fn pre() -> Preprocess {
    Preprocess::new((32, 32), 3, Normalization::LITE)
}

#[test]
fn head_training_leaves_every_frozen_tensor_bit_identical() {
    let device = Device::flex();
    let model = TransferModel::new(EfficientNetLite0::random(&device, 3), 2, 0, 5, &device).unwrap();
    let frozen_before = model.frozen_params().unwrap();
    let head_before = model.trainable_params().unwrap();
    assert_eq!(
        head_before.layout().entries,
        vec![("head.weight".to_string(), vec![1280, 2]), ("head.bias".to_string(), vec![2])]
    );
    let data = bars(8);
    let cfg = TrainConfig { epochs: 30, batch_size: 8, learning_rate: 1e-2, seed: 1 };
    let (model, curve) = fit_transfer(model, &data, &pre(), None, &cfg, &device).unwrap();
    assert!(curve.last().unwrap() < &curve[0], "loss went down: {curve:?}");
    assert_eq!(model.frozen_params().unwrap(), frozen_before, "backbone untouched, bit for bit");
    assert_ne!(model.trainable_params().unwrap(), head_before);
}

#[test]
fn trainable_params_roundtrip_and_reject_bad_updates() {
    let device = Device::flex();
    let model = TransferModel::new(EfficientNetLite0::random(&device, 1), 3, 2, 9, &device).unwrap();
    let params = model.trainable_params().unwrap();
    let names: Vec<&str> = params.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"backbone.blocks.14.depthwise_conv.weight"));
    assert!(names.contains(&"backbone.blocks.15.bn2.gamma"));
    assert!(names.contains(&"backbone.conv_head.weight"));
    assert!(!names.iter().any(|n| n.contains("blocks.13.") || n.contains("running_")));
    assert_eq!(names.last(), Some(&"head.bias"));

    let mut changed = params.clone();
    changed.scale(0.5);
    let model = model.with_trainable_params(&changed).unwrap();
    assert_eq!(model.trainable_params().unwrap(), changed);

    let mut wrong_shape = changed.clone();
    wrong_shape.tensors[0].shape = vec![wrong_shape.tensors[0].data.len()];
    assert!(matches!(model.clone().with_trainable_params(&wrong_shape), Err(VisionError::ParamShape { .. })));
    let mut missing = changed.clone();
    missing.tensors.pop();
    assert!(matches!(model.clone().with_trainable_params(&missing), Err(VisionError::MissingParam { .. })));
    let mut frozen = changed.clone();
    frozen.tensors[0].name = "backbone.conv_stem.weight".into();
    assert!(matches!(model.clone().with_trainable_params(&frozen), Err(VisionError::UnknownParam { .. })));
    assert!(TransferModel::new(EfficientNetLite0::random(&device, 1), 3, NUM_BLOCKS + 1, 9, &device).is_err());
}

#[test]
fn unfrozen_blocks_train_on_augmented_images_and_the_rest_stays_frozen() {
    let device = Device::flex();
    let model = TransferModel::new(EfficientNetLite0::random(&device, 2), 2, 1, 4, &device).unwrap();
    let frozen_before = model.frozen_params().unwrap();
    let trainable_before = model.trainable_params().unwrap();
    let data = bars(4);
    let aug = Augmenter::new(AugmentConfig::light(), 7).unwrap();
    let cfg = TrainConfig { epochs: 1, batch_size: 8, learning_rate: 1e-3, seed: 0 };
    let (model, _) = fit_transfer(model, &data, &pre(), Some(&aug), &cfg, &device).unwrap();
    assert_eq!(model.frozen_params().unwrap(), frozen_before, "frozen blocks and all BN statistics unchanged");
    let after = model.trainable_params().unwrap();
    for (a, b) in after.tensors.iter().zip(&trainable_before.tensors) {
        assert_ne!(a.data, b.data, "`{}` was trained", a.name);
    }
}

#[test]
fn cached_head_learns_separable_features() {
    let device = Device::flex();
    let backbone = EfficientNetLite0::random(&device, 11);
    let data = bars(12);
    let cache = FeatureCache::extract(&backbone, &data, &pre(), 8, &device).unwrap();
    assert_eq!(cache.len(), 24);
    let head = tessera_vision::seeded_head(2, 3, &device).unwrap();
    let before = evaluate_head(&head, &cache, &device).unwrap();
    let cfg = TrainConfig { epochs: 60, batch_size: 8, learning_rate: 1e-2, seed: 2 };
    let (head, curve) = train_head(head, &cache, &cfg, &device).unwrap();
    let after = evaluate_head(&head, &cache, &device).unwrap();
    assert!(after.loss < before.loss, "{} -> {}", before.loss, after.loss);
    assert!(curve.last().unwrap() < &curve[0]);
    assert_eq!(after.num_examples, 24);
    assert_eq!(after.confusion.iter().flatten().sum::<u64>(), 24);
    assert!(after.accuracy >= 0.9, "training accuracy {}", after.accuracy);
}

#[test]
fn small_cnn_learns_and_exchanges_params() {
    let device = Device::flex();
    let data = bars(16);
    let pre = Preprocess::new((16, 16), 1, Normalization::NONE);
    let cnn = SmallCnn::new(1, 2, 42, &device).unwrap();
    let params: ModelParams = cnn.params().unwrap();
    assert_eq!(params.tensors[0].name, "conv1.weight");
    assert_eq!(params.tensors[0].shape, vec![16, 1, 3, 3]);
    let same = SmallCnn::new(1, 2, 42, &device).unwrap();
    assert_eq!(same.params().unwrap(), params, "seeded init is deterministic");
    let cfg = TrainConfig { epochs: 15, batch_size: 8, learning_rate: 5e-3, seed: 0 };
    let (trained, curve) = cnn.fit(&data, &pre, &cfg, &device).unwrap();
    assert!(curve.last().unwrap() < &curve[0], "{curve:?}");
    let m = trained.evaluate(&data, &pre, &device).unwrap();
    assert!(m.accuracy >= 0.9, "accuracy {}", m.accuracy);
    // Moving the trained parameters into a fresh model reproduces its predictions.
    let copy = SmallCnn::new(1, 2, 0, &device).unwrap().with_params(&trained.params().unwrap()).unwrap();
    assert_eq!(copy.evaluate(&data, &pre, &device).unwrap(), m);
}

#[test]
fn augmentation_bypasses_the_feature_cache() {
    let device = Device::flex();
    let data = bars(4);
    let cfg = TrainConfig { epochs: 2, batch_size: 8, learning_rate: 1e-2, seed: 3 };
    let fit = |aug: Option<&Augmenter>| {
        let model = TransferModel::new(EfficientNetLite0::random(&device, 5), 2, 0, 6, &device).unwrap();
        fit_transfer(model, &data, &pre(), aug, &cfg, &device).unwrap().0.trainable_params().unwrap()
    };
    let cached = fit(None);
    let identity = Augmenter::new(AugmentConfig::none(), 1).unwrap();
    assert_eq!(fit(Some(&identity)), cached, "an identity augmenter keeps the cached path");
    let light = Augmenter::new(AugmentConfig::light(), 1).unwrap();
    assert_ne!(fit(Some(&light)), cached, "real augmentation trains on fresh views, not on cached features");
}

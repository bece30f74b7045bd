//! Transfer learning on the committed Fashion-MNIST subset (3,000 train /
//! 1,000 test): the pretrained EfficientNet-Lite0 backbone with a trained
//! head must reach 80% test accuracy and beat the same recipe on a randomly
//! initialised backbone by a wide margin. Features are cached once per
//! backbone. Needs the weights from scripts/fetch-weights.sh.
//!
//! Slow on two CPU cores (the backbone runs over 8,000 images), hence ignored
//! by default: `cargo test -p tessera-vision --release --test fashion_transfer -- --ignored --nocapture`.

use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;
use tessera_vision::{
    EfficientNetLite0, FeatureCache, Normalization, Preprocess, TrainConfig, TransferModel, default_weights_path,
    evaluate_head, load_fashion_mnist, train_head,
};

const SIZE: usize = 64;

#[test]
#[ignore = "slow: runs the backbone over 8,000 images; needs scripts/fetch-weights.sh"]
fn pretrained_backbone_beats_random_backbone_on_fashion_mnist() {
    let weights = default_weights_path();
    if !weights.is_file() {
        eprintln!("SKIPPED: {} not found; run scripts/fetch-weights.sh", weights.display());
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist");
    let train = load_fashion_mnist(&dir, "train").unwrap();
    let test = load_fashion_mnist(&dir, "t10k").unwrap();
    assert_eq!((train.len(), test.len()), (3000, 1000));
    let device = Device::flex();
    let pre = Preprocess::new((SIZE, SIZE), 3, Normalization::LITE);
    let cfg = TrainConfig { epochs: 40, batch_size: 64, learning_rate: 1e-3, seed: 7 };

    let mut accuracy = Vec::new();
    for (name, model) in [
        ("pretrained", TransferModel::from_pretrained(&weights, 10, 0, 1, &device).unwrap()),
        ("random", TransferModel::new(EfficientNetLite0::random(&device, 1), 10, 0, 1, &device).unwrap()),
    ] {
        let frozen = model.frozen_params().unwrap();
        let t0 = Instant::now();
        let train_cache = FeatureCache::extract(&model.backbone, &train, &pre, 50, &device).unwrap();
        let test_cache = FeatureCache::extract(&model.backbone, &test, &pre, 50, &device).unwrap();
        let t_features = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let (head, curve) = train_head(model.head.clone(), &train_cache, &cfg, &device).unwrap();
        let t_head = t1.elapsed().as_secs_f64();
        let metrics = evaluate_head(&head, &test_cache, &device).unwrap();
        eprintln!(
            "{name}: test accuracy {:.3}, balanced {:.3}, macro F1 {:.3}, AUC {:.3}, loss {:.3}; \
             features {t_features:.1}s ({:.0} img/s), head {t_head:.1}s, train loss {:.3} -> {:.3}",
            metrics.accuracy,
            metrics.balanced_accuracy,
            metrics.f1,
            metrics.auc,
            metrics.loss,
            4000.0 / t_features,
            curve[0],
            curve.last().unwrap()
        );
        assert_eq!(model.frozen_params().unwrap(), frozen);
        accuracy.push(metrics.accuracy);
    }
    assert!(accuracy[0] >= 0.80, "pretrained accuracy {}", accuracy[0]);
    assert!(accuracy[0] - accuracy[1] >= 0.10, "pretrained {} vs random {}", accuracy[0], accuracy[1]);
}

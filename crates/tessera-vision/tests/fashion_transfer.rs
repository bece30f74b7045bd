//! Transfer learning on the committed Fashion-MNIST subset (3,000 train /
//! 1,000 test): the pretrained EfficientNet-Lite0 backbone with a trained
//! head must reach 80% test accuracy and beat the same recipe on a randomly
//! initialised backbone by a wide margin. Features are cached once per
//! backbone. Needs the weights from scripts/fetch-weights.sh.
//!
//! The second test fine-tunes the last two blocks and the head convolution
//! as well, end to end on images (on a CPU: `tessera_vision::tune`).
//!
//! Each takes about 15 s on two cores; without the weights they say
//! SKIPPED and pass.

use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;
use tessera_vision::{
    EfficientNetLite0, FeatureCache, ImageDataset, Normalization, Preprocess, TrainConfig, TransferModel,
    default_weights_path, evaluate_head, evaluate_transfer, load_fashion_mnist, train_head, train_on_images,
};

const SIZE: usize = 64;

/// The committed subset (train, test), or `None` (with a SKIPPED line) without the weights.
fn fashion() -> Option<(ImageDataset, ImageDataset)> {
    let weights = default_weights_path();
    if !weights.is_file() {
        eprintln!("SKIPPED: {} not found; run scripts/fetch-weights.sh", weights.display());
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist");
    let train = load_fashion_mnist(&dir, "train").unwrap();
    let test = load_fashion_mnist(&dir, "t10k").unwrap();
    assert_eq!((train.len(), test.len()), (3000, 1000));
    Some((train, test))
}

#[test]
fn pretrained_backbone_beats_random_backbone_on_fashion_mnist() {
    let Some((train, test)) = fashion() else { return };
    let weights = default_weights_path();
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

/// Fine-tuning the last two blocks (and the head convolution) with the new
/// head, end to end on images: the exchanged tensors are exactly those, they
/// move, everything else stays bit-identical, and the model reaches the
/// head-only recipe's bar in a few epochs.
#[test]
fn fine_tuning_the_last_blocks_learns_fashion_mnist() {
    let Some((train, test)) = fashion() else { return };
    let device = Device::flex();
    let pre = Preprocess::new((SIZE, SIZE), 3, Normalization::LITE);
    let model = TransferModel::from_pretrained(&default_weights_path(), 10, 2, 1, &device).unwrap();
    let frozen = model.frozen_params().unwrap();
    let before = model.trainable_params().unwrap();
    assert!(before.tensors.iter().all(|t| t.name.starts_with("head.")
        || t.name.starts_with("backbone.blocks.14.")
        || t.name.starts_with("backbone.blocks.15.")
        || t.name.starts_with("backbone.conv_head.")
        || t.name.starts_with("backbone.bn1.")));
    let cfg = TrainConfig { epochs: 3, batch_size: 32, learning_rate: 1e-3, seed: 7 };
    let t0 = Instant::now();
    let (model, curve) = train_on_images(model, &train, &pre, None, &cfg, &device).unwrap();
    let t_train = t0.elapsed().as_secs_f64();
    let metrics = evaluate_transfer(&model, &test, &pre, 50, &device).unwrap();
    eprintln!(
        "last 2 blocks: test accuracy {:.3}, balanced {:.3}, AUC {:.3}, loss {:.3}; training {t_train:.1}s \
         ({:.0} img/s), train loss {curve:?}",
        metrics.accuracy,
        metrics.balanced_accuracy,
        metrics.auc,
        metrics.loss,
        (cfg.epochs * train.len()) as f64 / t_train,
    );
    assert_eq!(model.frozen_params().unwrap(), frozen, "frozen tensors bit-identical");
    let after = model.trainable_params().unwrap();
    assert_eq!(after.layout(), before.layout());
    for (a, b) in after.tensors.iter().zip(&before.tensors) {
        assert_ne!(a, b, "{} trained", a.name);
    }
    assert!(curve.last().unwrap() < &curve[0], "loss went down: {curve:?}");
    assert!(metrics.accuracy >= 0.80, "fine-tuned accuracy {}", metrics.accuracy);
}

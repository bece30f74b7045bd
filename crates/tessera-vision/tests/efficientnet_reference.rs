//! EfficientNet-Lite0 against the PyTorch port: logits for a fixed input must
//! match the committed reference (scripts/reference_logits.py) to 1e-4.
//! Needs the weights from scripts/fetch-weights.sh; skips (with a message) without them.

use burn::tensor::{Device, Tensor, TensorData};
use std::path::{Path, PathBuf};
use tessera_vision::{
    FEATURE_DIM, FrozenEfficientNet, ImagenetClassifier, TransferModel, VisionError, default_weights_path,
};

const SIZE: usize = 96;

fn weights() -> Option<PathBuf> {
    let path = default_weights_path();
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} not found; run scripts/fetch-weights.sh to enable this test", path.display());
        None
    }
}

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/efficientnet_lite0_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The same formula as the Python script; exact in f32.
fn input(device: &Device) -> Tensor<4> {
    let n = 3 * SIZE * SIZE;
    let x: Vec<f32> = (0..n).map(|i| (((i * 7919) % 1000) as f64 / 500.0 - 1.0) as f32).collect();
    Tensor::from_data(TensorData::new(x, [1, 3, SIZE, SIZE]), device)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_match_pytorch_reference() {
    let Some(path) = weights() else { return };
    let device = Device::flex();
    let model = ImagenetClassifier::load_pretrained(&path, &device).unwrap();
    let reference = reference();

    let features = model.backbone.features(input(&device)).into_data().try_into_vec::<f32>().unwrap();
    let feat_diff = max_abs_diff(&features[..32], &floats(&reference["features_first_32"]));
    assert!(feat_diff < 1e-4, "pooled features differ by {feat_diff}");

    let logits = model.forward(input(&device)).into_data().try_into_vec::<f32>().unwrap();
    let diff = max_abs_diff(&logits, &floats(&reference["logits"]));
    eprintln!("max |logit - reference| = {diff:e}");
    assert!(diff < 1e-4, "logits differ from PyTorch by {diff}");
}

/// The channels-last trunk that feature extraction runs on a CPU, with the
/// checkpoint's ImageNet layer on top, against the same PyTorch reference.
#[test]
fn channels_last_trunk_matches_pytorch_reference() {
    let Some(path) = weights() else { return };
    let device = Device::flex();
    let model = ImagenetClassifier::load_pretrained(&path, &device).unwrap();
    let reference = reference();
    let frozen = FrozenEfficientNet::new(&model.backbone).unwrap();
    let features = frozen.features(input(&device)).unwrap();
    let feat_diff = max_abs_diff(&features[..32], &floats(&reference["features_first_32"]));
    assert!(feat_diff < 1e-4, "pooled features differ by {feat_diff}");

    let pooled = Tensor::<2>::from_data(TensorData::new(features, [1, FEATURE_DIM]), &device);
    let logits = model.fc.forward(pooled).into_data().try_into_vec::<f32>().unwrap();
    let diff = max_abs_diff(&logits, &floats(&reference["logits"]));
    eprintln!("channels-last: max |logit - reference| = {diff:e}");
    assert!(diff < 1e-4, "logits differ from PyTorch by {diff}");
}

#[test]
fn transfer_model_loads_the_backbone_and_ignores_imagenet_fc() {
    let Some(path) = weights() else { return };
    let device = Device::flex();
    let full = ImagenetClassifier::load_pretrained(&path, &device).unwrap();
    let transfer = TransferModel::from_pretrained(&path, 10, 0, 1, &device).unwrap();
    let a = full.backbone.features(input(&device)).into_data().try_into_vec::<f32>().unwrap();
    let b = transfer.backbone.features(input(&device)).into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(a, b, "same backbone weights, same features");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/weights").join(name)
}

#[test]
fn loader_names_missing_and_misshaped_tensors() {
    let device = Device::flex();
    match ImagenetClassifier::load_pretrained(&fixture("lite0-missing-tensors.pth"), &device) {
        Err(VisionError::MissingTensor { name }) => assert!(name.starts_with("backbone."), "{name}"),
        other => panic!("expected MissingTensor, got {:?}", other.map(|_| ())),
    }
    match ImagenetClassifier::load_pretrained(&fixture("lite0-misshaped-stem.pth"), &device) {
        Err(VisionError::TensorMismatch { name, reason }) => {
            assert!(name.contains("conv_stem") || reason.contains("conv_stem"), "{name}: {reason}")
        }
        other => panic!("expected TensorMismatch, got {:?}", other.map(|_| ())),
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    assert!(matches!(ImagenetClassifier::load_pretrained(&junk, &device), Err(VisionError::WeightsUnreadable { .. })));
    assert!(matches!(
        ImagenetClassifier::load_pretrained(&dir.path().join("absent.pth"), &device),
        Err(VisionError::WeightsMissing { .. })
    ));
}

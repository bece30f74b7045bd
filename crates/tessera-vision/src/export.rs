//! The trained part of an image network as PyTorch stores it, for
//! `tessera-aggregator export` and a member's personalized model.
//!
//! burn keeps a linear layer's weight as `[in_features, out_features]`;
//! `torch.nn.Linear` keeps `[out_features, in_features]`. Convolutions agree
//! already (`[out, in / groups, kh, kw]` in both), and so do 1-d tensors.
//! So every 2-d tensor is transposed and nothing else is touched. With LoRA
//! the adapters are merged first (`W + (alpha / rank) B A`), and the file
//! holds the merged convolution weights under their plain names: a plain
//! EfficientNet-Lite0, whose remaining tensors are the pretrained checkpoint's.

use burn::tensor::Device;
use tessera_core::{ModelParams, ParamTensor, VisionArchitecture, VisionModelConfig};

use crate::efficientnet::{BN_EPS, FEATURE_DIM, STAGES};
use crate::error::{Result, VisionError};
use crate::lora::adapted_convs;
use crate::params::collect_params;
use crate::spec::VisionNet;

/// The tensors of `trained` (the run's exchanged part) as PyTorch lays them
/// out, with a one-line description of what the file holds. With LoRA this
/// builds the network (the checkpoint must be there) to merge the adapters.
pub fn pytorch_tensors(
    cfg: &VisionModelConfig,
    trained: &ModelParams,
    device: &Device,
) -> Result<(ModelParams, String)> {
    let (tensors, what) = match (cfg.kind, cfg.lora) {
        (VisionArchitecture::EfficientnetLite0, Some(lora)) => {
            let net = VisionNet::build(cfg, device)?.with_trainable_params(trained)?;
            let VisionNet::Transfer(model) = net else {
                return Err(VisionError::InvalidConfig("LoRA applies to EfficientNet-Lite0 only".into()));
            };
            let convs: Vec<String> = adapted_convs(&model.backbone).into_iter().map(|(conv, _)| conv).collect();
            let merged = model.merged();
            let keep = |p: &str| p.starts_with("head.") || convs.iter().any(|c| p.strip_suffix(".weight") == Some(c));
            let what = format!(
                "EfficientNet-Lite0, {} classes: the head and the {} 1x1 convolutions of the last {} blocks and \
                 conv_head with their LoRA adapters (rank {}, alpha {}) merged; every other tensor is the \
                 backbone's (the pretrained checkpoint, or the seeded random one)",
                cfg.num_classes,
                convs.len(),
                cfg.trainable_blocks,
                lora.rank,
                lora.alpha
            );
            (collect_params(&merged, &keep)?, what)
        }
        (VisionArchitecture::EfficientnetLite0, None) => {
            let what = format!(
                "EfficientNet-Lite0, {} classes: the trained part (head and the last {} blocks); every other tensor \
                 is the backbone's (the pretrained checkpoint, or the seeded random one)",
                cfg.num_classes, cfg.trainable_blocks
            );
            (trained.clone(), what)
        }
        (VisionArchitecture::SmallCnn, _) => (trained.clone(), format!("SmallCnn, {} classes", cfg.num_classes)),
    };
    Ok((ModelParams::new(tensors.tensors.into_iter().map(to_pytorch).collect()), what))
}

/// The whole network in PyTorch's layout, so the file alone is the model:
/// for EfficientNet-Lite0 every tensor (the backbone's, batch-norm running
/// statistics included, with the trained part and merged LoRA adapters in
/// place, and the head), under module paths (`backbone.blocks.3.bn1.gamma`,
/// `head.weight`), with the network's description for
/// [`network_metadata`]; the small CNN's trained part is already all of it.
/// Builds the network (the backbone file must be there when the run used
/// a pretrained one), as every member does.
pub fn pytorch_model(cfg: &VisionModelConfig, trained: &ModelParams, device: &Device) -> Result<(ModelParams, String)> {
    match cfg.kind {
        VisionArchitecture::EfficientnetLite0 => {
            let net = VisionNet::build(cfg, device)?.with_trainable_params(trained)?;
            let VisionNet::Transfer(model) = net else {
                return Err(VisionError::InvalidConfig("EfficientNet-Lite0 builds a transfer model".into()));
            };
            let merged = model.merged();
            let all = collect_params(&merged, &|_| true)?;
            let adapters = match cfg.lora {
                Some(l) => {
                    format!(" (LoRA adapters, rank {} alpha {}, merged into their convolutions)", l.rank, l.alpha)
                }
                None => String::new(),
            };
            let what = format!(
                "EfficientNet-Lite0, {} classes, the whole network: the trained part (head and the last {} \
                 blocks{adapters}) and the backbone's other tensors (the pretrained checkpoint, or the seeded \
                 random one)",
                cfg.num_classes, cfg.trainable_blocks
            );
            Ok((ModelParams::new(all.tensors.into_iter().map(to_pytorch).collect()), what))
        }
        VisionArchitecture::SmallCnn => pytorch_tensors(cfg, trained, device),
    }
}

/// What a reader needs to run the exported network without Tessera, as
/// JSON for the file's metadata (`scripts/export_forward.py` builds the
/// forward pass from it): for EfficientNet-Lite0 the stages (repeats,
/// kernel, first stride, expansion, channels in and out), batch norm's
/// epsilon, ReLU6, TensorFlow-style SAME padding (the extra row and column
/// at the bottom and right), global mean pooling and the linear head.
/// For the small CNN: two 3×3 convolutions (stride 1, padding 1, with
/// bias) each followed by ReLU and 2×2 max pooling, adaptive average
/// pooling to 4×4 (PyTorch's bins), flattening channel-major, then
/// `Linear(512, 64)`, ReLU and `Linear(64, classes)`.
pub fn network_metadata(cfg: &VisionModelConfig) -> Option<String> {
    match cfg.kind {
        VisionArchitecture::EfficientnetLite0 => {
            let stages: Vec<String> =
                STAGES.iter().map(|s| format!("[{},{},{},{},{},{}]", s.0, s.1, s.2, s.3, s.4, s.5)).collect();
            Some(format!(
                "{{\"kind\":\"efficientnet_lite0\",\"stem\":[3,32,3,2],\"stages\":[{}],\"head_conv\":[320,{FEATURE_DIM}],\
                 \"bn_eps\":{BN_EPS},\"activation\":\"relu6\",\"padding\":\"tf_same\",\"pool\":\"mean\",\
                 \"num_classes\":{},\"input\":\"[n, 3, {}, {}], preprocessed as the run's [model] section says\"}}",
                stages.join(","),
                cfg.num_classes,
                cfg.image_size,
                cfg.image_size
            ))
        }
        VisionArchitecture::SmallCnn => Some(format!(
            "{{\"kind\":\"small_cnn\",\"convs\":[[{},16],[16,32]],\"kernel\":3,\"padding\":1,\"activation\":\"relu\",\
             \"pool\":\"max2\",\"adaptive_avg\":[4,4],\"fc\":[512,64,{}],\
             \"input\":\"[n, {}, {}, {}], preprocessed as the run's [model] section says\"}}",
            cfg.input_channels, cfg.num_classes, cfg.input_channels, cfg.image_size, cfg.image_size
        )),
    }
}

/// A burn `[in, out]` linear weight becomes `[out, in]`; other ranks are
/// already PyTorch's.
fn to_pytorch(t: ParamTensor) -> ParamTensor {
    let [rows, cols] = t.shape[..] else {
        return t;
    };
    let mut data = vec![0.0; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    ParamTensor { name: t.name, shape: vec![cols, rows], data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_weights_are_transposed_and_others_kept() {
        let w = ParamTensor { name: "head.weight".into(), shape: vec![3, 2], data: vec![1., 2., 3., 4., 5., 6.] };
        let t = to_pytorch(w);
        assert_eq!((t.shape.clone(), t.data.clone()), (vec![2, 3], vec![1., 3., 5., 2., 4., 6.]));
        let conv = ParamTensor { name: "c.weight".into(), shape: vec![2, 1, 1, 1], data: vec![1., 2.] };
        assert_eq!(to_pytorch(conv.clone()), conv);
    }
}

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

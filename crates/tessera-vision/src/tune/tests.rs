//! The fine-tuner's gradients against burn autodiff's on the same model,
//! images and labels: every trainable trunk tensor, for a few numbers of
//! trainable blocks (with and without the expand-less first block, stride-2
//! and residual blocks), on odd image sizes (asymmetric "same" padding).

use burn::module::{Module, ParamId, RunningState};
use burn::nn::BatchNorm;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::efficientnet::EfficientNetLite0;

fn uniform(rng: &mut ChaCha8Rng, dims: Vec<usize>, lo: f32, hi: f32) -> TensorData {
    let n = dims.iter().product();
    TensorData::new((0..n).map(|_| rng.gen_range(lo..hi)).collect::<Vec<f32>>(), dims)
}

/// Batch norms with non-trivial statistics and affine parameters, so that
/// every term of their gradients matters.
fn jitter(bn: &mut BatchNorm, rng: &mut ChaCha8Rng) {
    let device = bn.gamma.val().device();
    let c = bn.gamma.dims()[0];
    let mut draw = |lo, hi| Tensor::<1>::from_data(uniform(rng, vec![c], lo, hi), &device);
    let (gamma, beta) = (draw(0.5, 1.5), draw(-0.3, 0.3));
    let (mean, var) = (draw(-0.2, 0.2), draw(0.5, 2.0));
    bn.gamma = bn.gamma.clone().map(|_| gamma);
    bn.beta = bn.beta.clone().map(|_| beta);
    bn.running_mean = RunningState::new(mean);
    bn.running_var = RunningState::new(var);
}

fn random_net(device: &Device, seed: u64) -> EfficientNetLite0 {
    let mut net = EfficientNetLite0::random(device, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    jitter(&mut net.bn0, &mut rng);
    for b in &mut net.blocks {
        if let Some(bn) = &mut b.bn0 {
            jitter(bn, &mut rng);
        }
        jitter(&mut b.bn1, &mut rng);
        jitter(&mut b.bn2, &mut rng);
    }
    jitter(&mut net.bn1, &mut rng);
    net
}

/// (weight, gamma, beta) ids of every trainable convolution of `model`.
fn trainable_ids(model: &TransferModel) -> Vec<(String, ParamId, usize)> {
    let bb = &model.backbone;
    let mut ids = Vec::new();
    let mut add = |name: String, conv: &Conv2d, bn: &BatchNorm| {
        ids.push((format!("{name}.weight"), conv.weight.id, 4));
        ids.push((format!("{name}.gamma"), bn.gamma.id, 1));
        ids.push((format!("{name}.beta"), bn.beta.id, 1));
    };
    for (i, b) in bb.blocks.iter().enumerate().skip(NUM_BLOCKS - model.trainable_blocks) {
        if let (Some(conv), Some(bn)) = (&b.expand_conv, &b.bn0) {
            add(format!("blocks.{i}.expand"), conv, bn);
        }
        add(format!("blocks.{i}.depthwise"), &b.depthwise_conv, &b.bn1);
        add(format!("blocks.{i}.project"), &b.project_conv, &b.bn2);
    }
    add("conv_head".into(), &bb.conv_head, &bb.bn1);
    ids
}

fn grad_values(grads: &GradientsParams, id: ParamId, rank: usize) -> Vec<f32> {
    let t = match rank {
        4 => grads.get::<4>(id).map(|t| t.into_data()),
        2 => grads.get::<2>(id).map(|t| t.into_data()),
        _ => grads.get::<1>(id).map(|t| t.into_data()),
    };
    t.expect("burn has a gradient for every trainable tensor").try_to_vec::<f32>().unwrap()
}

fn assert_close(name: &str, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "{name}: burn's gradient vanished, the test would prove nothing");
    assert!(worst <= 1e-4 * scale, "{name}: max |host - burn| {worst} at gradient scale {scale}");
}

#[test]
fn gradients_match_burn_autodiff() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let dims = [3, 3, 37, 45];
    let images = uniform(&mut rng, dims.to_vec(), -1.0, 1.0);
    let labels = || Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3, 1], [3]), &ad);
    for trainable in [1, 4, NUM_BLOCKS] {
        let model = TransferModel::new(random_net(&device, 21), 4, trainable, 2, &device).unwrap();

        // burn: the whole graph through autodiff.
        let burn_model = model.clone().fork(&ad).train();
        let x = Tensor::<4>::from_data(images.clone(), &ad);
        let loss = loss_fn.forward(burn_model.forward(x), labels());
        let want_loss = loss.clone().into_scalar::<f32>();
        let want = GradientsParams::from_grads(loss.backward(), &burn_model);

        // The fine-tuner for the trunk, burn for the head and the loss.
        let tuner = HostFineTuner::new(&model).unwrap();
        let mut tape = Tape::default();
        let features = tuner.forward(&images.try_to_vec::<f32>().unwrap(), dims, &mut tape).unwrap();
        let head = model.head.clone().fork(&ad).train();
        let f = Tensor::<2>::from_data(TensorData::new(features, [3, FEATURE_DIM]), &ad).require_grad();
        let loss = loss_fn.forward(head.forward(f.clone()), labels());
        let got_loss = loss.clone().into_scalar::<f32>();
        let grads = loss.backward();
        let df = f.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let got = tuner.backward(&tape, &df).unwrap();

        assert!((want_loss - got_loss).abs() <= 1e-4 * want_loss.abs().max(1.0), "loss {want_loss} vs {got_loss}");
        let ids = trainable_ids(&model);
        assert_eq!(got.len(), ids.len(), "one gradient per trainable trunk tensor");
        for (name, id, rank) in ids {
            assert_close(&format!("{trainable} blocks, {name}"), &grad_values(&want, id, rank), got.get(id).unwrap());
        }
        let head_grad = head.weight.val().grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert_close("head.weight", &grad_values(&want, model.head.weight.id, 2), &head_grad);
    }
}

#[test]
fn a_frozen_trunk_has_no_gradients_and_bad_calls_are_errors() {
    let device = Device::flex();
    let model = TransferModel::new(random_net(&device, 3), 2, 0, 1, &device).unwrap();
    let tuner = HostFineTuner::new(&model).unwrap();
    let mut tape = Tape::default();
    let features = tuner.forward(&[0.5; 2 * 3 * 16 * 16], [2, 3, 16, 16], &mut tape).unwrap();
    assert_eq!(features.len(), 2 * FEATURE_DIM);
    assert!(tuner.backward(&tape, &[0.0; 2 * FEATURE_DIM]).unwrap().is_empty());

    let model = TransferModel::new(random_net(&device, 3), 2, 2, 1, &device).unwrap();
    let tuner = HostFineTuner::new(&model).unwrap();
    let mut tape = Tape::default();
    assert!(tuner.backward(&tape, &[0.0; FEATURE_DIM]).is_err(), "backward before forward");
    assert!(tuner.forward(&[0.5; 10], [1, 3, 16, 16], &mut tape).is_err(), "wrong input length");
    tuner.forward(&[0.5; 3 * 16 * 16], [1, 3, 16, 16], &mut tape).unwrap();
    assert!(tuner.backward(&tape, &[0.0; 2 * FEATURE_DIM]).is_err(), "gradient for two images, forward had one");
    let mut other = HostFineTuner::new(&model).unwrap();
    let three = TransferModel::new(random_net(&device, 3), 2, 3, 1, &device).unwrap();
    assert!(other.refresh(&three).is_err(), "a model with other trainable blocks");
}

/// One example's flat gradient (trunk by hand, head in closed form) equals
/// burn autodiff's on a batch of that one image, tensor by tensor, in the
/// order of `trainable_params`.
#[test]
fn example_gradient_matches_burn_autodiff_in_trainable_order() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let image = uniform(&mut rng, vec![1, 3, 33, 29], -1.0, 1.0);
    let model = TransferModel::new(random_net(&device, 4), 5, 3, 6, &device).unwrap();
    let burn_model = model.clone().fork(&ad).train();
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64], [1]), &ad);
    let loss = loss_fn.forward(burn_model.forward(Tensor::<4>::from_data(image.clone(), &ad)), y);
    let want = GradientsParams::from_grads(loss.backward(), &burn_model);

    // Prepared among other images: the gradient of the second of three is that image's alone.
    let mut grads = ExampleGradients::new(&model).unwrap();
    let other = uniform(&mut rng, vec![3 * 33 * 29], -1.0, 1.0).try_to_vec::<f32>().unwrap();
    let batch: Vec<f32> = [&other[..], &image.try_to_vec::<f32>().unwrap()[..], &other[..]].concat();
    grads.prepare(&batch, [3, 3, 33, 29]).unwrap();
    let flat = grads.gradient(1, 2).unwrap();
    let layout = model.trainable_layout().unwrap();
    assert_eq!(flat.len(), grads.len());
    let ids = crate::params::param_ids(&model, &|p| model.is_trainable(p));
    let mut offset = 0;
    for ((name, shape), (_, id)) in layout.entries.iter().zip(&ids) {
        let n: usize = shape.iter().product();
        assert_close(name, &grad_values(&want, *id, shape.len()), &flat[offset..offset + n]);
        offset += n;
    }
    assert_eq!(offset, flat.len());
    // Into a reused buffer (what DP-SGD passes), dirty from another example:
    // every value is overwritten, bit for bit the same gradient.
    let mut reused = vec![f32::NAN; grads.len()];
    grads.gradient_into(0, 4, &mut reused).unwrap();
    assert!(reused.iter().all(|v| v.is_finite()), "a value of the buffer was left unwritten");
    grads.gradient_into(1, 2, &mut reused).unwrap();
    assert_eq!(reused, flat);
    assert!(grads.gradient_into(1, 2, &mut vec![0.0; grads.len() - 1]).is_err(), "a buffer of the wrong size");
    assert!(grads.gradient(0, 5).is_err(), "label outside the classes");
    assert!(grads.gradient(3, 0).is_err(), "only three images prepared");
    let head_only = TransferModel::new(random_net(&device, 4), 5, 0, 6, &device).unwrap();
    assert!(ExampleGradients::new(&head_only).is_err(), "a head-only model has a closed form");
}

/// DP-SGD's batched clipping (ghost norms, one backward pass for the whole
/// group) gives what clipping each image's own gradient gives (a backward
/// pass per image, `gradient`): the same norms handed to the clip, and the
/// same clipped sum within f32 tolerance, tensor by tensor, with the clip
/// between the images' norms (some clipped, some not); an image whose
/// gradient is not finite adds nothing in either.
#[test]
fn batched_clipping_sums_what_per_example_clipping_sums() {
    use tessera_core::{DpSettings, NoisePlacement, PrivacyUnit, TrainSettings};
    use tessera_learn::DpNoise;

    // The clip DP-SGD uses: the round's, with CLIP_SAFETY's margin.
    let clip_at = |clip_norm: f64, dim: usize| {
        let dp = DpSettings {
            unit: PrivacyUnit::Record,
            noise: NoisePlacement::Local,
            clip_norm,
            noise_multiplier: 1.0,
            sampling_rate: 1.0,
            min_contributors: 1,
            delta: 1e-5,
            adaptive: None,
        };
        let train = TrainSettings {
            local_epochs: 1,
            batch_size: 6,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            seed: 1,
            example_weight_cap: 0,
        };
        DpNoise::seeded(1).round_for(&dp, &train, dim).unwrap()
    };
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let labels = [0, 4, 2, 1, 3, 2];
    let n = labels.len();
    // 32 px: the last block sees one pixel per image (‖x‖‖g‖). 37×45: pixel
    // pairs in the last blocks and, with every block trainable, 1×1
    // gradients formed per image where an image has many pixels.
    for (trainable, h, w) in [(1, 32, 32), (2, 37, 45), (NUM_BLOCKS, 37, 45)] {
        let model = TransferModel::new(random_net(&device, 6), 5, trainable, 7, &device).unwrap();
        let mut images = uniform(&mut rng, vec![n * 3 * h * w], -1.0, 1.0).try_to_vec::<f32>().unwrap();
        images[3 * 3 * h * w + 7] = f32::NAN;
        let mut grads = ExampleGradients::new(&model).unwrap();
        grads.prepare(&images, [n, 3, h, w]).unwrap();

        let each: Vec<Vec<f32>> = labels.iter().enumerate().map(|(j, &l)| grads.gradient(j, l).unwrap()).collect();
        let norms: Vec<f64> =
            each.iter().map(|g| g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()).collect();
        let mut finite: Vec<f64> = norms.iter().copied().filter(|v| v.is_finite()).collect();
        assert_eq!(finite.len(), n - 1, "only the image with a NaN pixel has a non-finite gradient");
        finite.sort_by(f64::total_cmp);
        let clip_norm = (finite[1] + finite[2]) / 2.0;
        let mut round = clip_at(clip_norm, grads.len());
        let mut want = vec![0.0f32; grads.len()];
        for (g, &norm) in each.iter().zip(&norms) {
            if let Some(c) = round.example_clip(norm) {
                want.iter_mut().zip(g).for_each(|(a, v)| *a += c * v);
            }
        }
        assert_eq!(round.zeroed_gradients(), 1);

        let (mut got, mut scratch) = (vec![0.0f32; grads.len()], vec![f32::NAN; grads.len()]);
        let mut seen = Vec::new();
        let mut round = clip_at(clip_norm, grads.len());
        let mut clip = |norm: f64| {
            seen.push(norm);
            round.example_clip(norm)
        };
        grads.add_clipped(&labels, &mut clip, &mut scratch, &mut got).unwrap();
        assert_eq!(seen.len(), n, "one norm per image");
        for (j, (want, got)) in norms.iter().zip(&seen).enumerate() {
            match want.is_finite() {
                true => {
                    assert!((want - got).abs() <= 1e-5 * want, "{trainable} blocks, image {j}: norm {got} vs {want}")
                }
                false => assert!(!got.is_finite(), "image {j}: a finite norm for a non-finite gradient"),
            }
        }
        let mut offset = 0;
        for (name, shape) in model.trainable_layout().unwrap().entries {
            let len: usize = shape.iter().product();
            let what = format!("{trainable} blocks at {h}x{w}, {name}");
            assert_close(&what, &want[offset..offset + len], &got[offset..offset + len]);
            offset += len;
        }
        assert_eq!(offset, got.len());
    }
}

//! EfficientNet-Lite0 forward throughput (inference, batch 32, 96x96) on the
//! burn-flex and burn-ndarray CPU backends, and through the channels-last
//! frozen trunk that feature extraction runs on a CPU (`FrozenEfficientNet`).
//!
//!     cargo run --release -p tessera-vision --example throughput [-- ITERATIONS]

use burn::tensor::{Device, Tensor, TensorData};
use std::time::Instant;
use tessera_vision::{EfficientNetLite0, FrozenEfficientNet, TransferModel, default_weights_path};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let (batch, size) = (32, 96);
    // burn 0.22 deprecates NdArray in favour of Flex; it is measured here on purpose.
    #[allow(deprecated)]
    let devices = [("flex", Device::flex()), ("ndarray", Device::ndarray())];
    for (name, device) in devices {
        let weights = default_weights_path();
        let backbone = if weights.is_file() {
            TransferModel::from_pretrained(&weights, 10, 0, 0, &device)?.backbone
        } else {
            EfficientNetLite0::random(&device, 0)
        };
        let x: Vec<f32> = (0..batch * 3 * size * size).map(|i| ((i % 255) as f32) / 255.0).collect();
        let input = Tensor::<4>::from_data(TensorData::new(x, [batch, 3, size, size]), &device);
        // Warm-up (allocations, kernel selection).
        let _ = backbone.features(input.clone()).into_data();
        let start = Instant::now();
        for _ in 0..iterations {
            let _ = backbone.features(input.clone()).into_data();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {:.1} img/s ({iterations} x batch {batch} at {size}px in {secs:.2}s)",
            (iterations * batch) as f64 / secs
        );
        if name == "flex" {
            let frozen = FrozenEfficientNet::new(&backbone)?;
            let _ = frozen.features(input.clone())?;
            let start = Instant::now();
            for _ in 0..iterations {
                let _ = frozen.features(input.clone())?;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "frozen channels-last: {:.1} img/s ({iterations} x batch {batch} at {size}px in {secs:.2}s)",
                (iterations * batch) as f64 / secs
            );
        }
    }
    Ok(())
}

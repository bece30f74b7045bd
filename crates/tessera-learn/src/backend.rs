//! Compute backend selection. burn 0.22 dispatches backends at run time
//! through its `Device`, so the choice is a value, not a type parameter.

use burn::tensor::Device;

/// A burn execution backend, always wrapped with autodiff for training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeBackend {
    /// burn-flex: burn's portable CPU backend.
    Flex,
    /// burn-ndarray.
    NdArray,
    /// wgpu (GPU); only with the `wgpu` feature.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

/// The CPU default, chosen by measurement: `cargo run -p tessera-tabular
/// --example backend_bench` (WDBC, MLP 30-64-32-2, batch 32, shared 2-core
/// machine) gave flex 176-258k examples/s vs ndarray 97-109k examples/s.
pub const DEFAULT_BACKEND: ComputeBackend = ComputeBackend::Flex;

impl ComputeBackend {
    /// An autodiff-enabled device of this backend.
    pub fn training_device(self) -> Device {
        self.device().autodiff()
    }

    /// A plain (inference) device of this backend.
    pub fn device(self) -> Device {
        match self {
            ComputeBackend::Flex => Device::flex(),
            // Deprecated upstream in favour of flex; kept for the measured comparison.
            #[allow(deprecated)]
            ComputeBackend::NdArray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            ComputeBackend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::default()),
        }
    }

    /// The name the `backend` setting uses.
    pub fn name(self) -> &'static str {
        match self {
            ComputeBackend::Flex => "flex",
            ComputeBackend::NdArray => "ndarray",
            #[cfg(feature = "wgpu")]
            ComputeBackend::Wgpu => "wgpu",
        }
    }
}

impl Default for ComputeBackend {
    fn default() -> Self {
        DEFAULT_BACKEND
    }
}

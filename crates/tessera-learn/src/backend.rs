//! Compute backend selection. burn 0.22 dispatches backends at run time
//! through its `Device`, so the choice is a value, not a type parameter.
//!
//! The GPU backend (`wgpu`: Vulkan, Metal or DX12 through wgpu) is compiled
//! only with this crate's `wgpu` feature: it adds a large dependency tree
//! that a CPU-only member does not need. Asking for it in a build without
//! the feature is an error that names the feature ([`BackendUnavailable`]),
//! never a silent fall back to the CPU: an operator who configured a GPU
//! must learn that the binary cannot use one.

use burn::tensor::Device;

/// The cargo feature that compiles the GPU backend, as a flag of a
/// workspace build.
pub const WGPU_FEATURE: &str = "tessera-learn/wgpu";

/// Whether this build has the GPU backend (the `wgpu` feature).
pub const WGPU_BUILT: bool = cfg!(feature = "wgpu");

/// A burn execution backend, always wrapped with autodiff for training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeBackend {
    /// burn-flex: burn's portable CPU backend.
    Flex,
    /// burn-ndarray.
    NdArray,
    /// wgpu (GPU, or a software Vulkan device such as lavapipe); only with
    /// the `wgpu` feature.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

/// The CPU default, chosen by measurement: `cargo run -p tessera-tabular
/// --example backend_bench` (WDBC, MLP 30-64-32-2, batch 32, shared 2-core
/// machine) gave flex 176-258k examples/s vs ndarray 97-109k examples/s.
pub const DEFAULT_BACKEND: ComputeBackend = ComputeBackend::Flex;

/// Why a configured backend cannot be used by this process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendUnavailable {
    /// The binary was built without the backend's cargo feature.
    #[error(
        "backend \"{name}\" is not compiled into this binary: rebuild with the `{feature}` feature \
         (cargo build --release --features {feature}), or choose \"flex\""
    )]
    NotBuilt {
        /// The backend's name in the configuration.
        name: &'static str,
        /// The cargo feature that compiles it.
        feature: &'static str,
    },
    /// The backend is compiled in, but no device of it could be created
    /// (no GPU, no Vulkan driver).
    #[error("backend \"{name}\": no device could be created: {reason}")]
    NoDevice {
        /// The backend's name in the configuration.
        name: &'static str,
        /// What the runtime reported.
        reason: String,
    },
}

impl ComputeBackend {
    /// The GPU backend, or why this build has none.
    pub fn wgpu() -> Result<Self, BackendUnavailable> {
        wgpu_backend()
    }

    /// Create this backend's device once, so that a missing GPU is an error
    /// at start-up rather than a panic at the first tensor. The CPU
    /// backends always succeed; the GPU backend's device is created once
    /// per process and reused by [`device`](Self::device).
    pub fn check(self) -> Result<Self, BackendUnavailable> {
        match self {
            ComputeBackend::Flex | ComputeBackend::NdArray => Ok(self),
            #[cfg(feature = "wgpu")]
            ComputeBackend::Wgpu => wgpu_device().map(|_| self),
        }
    }

    /// An autodiff-enabled device of this backend.
    pub fn training_device(self) -> Device {
        self.device().autodiff()
    }

    /// A plain (inference) device of this backend.
    ///
    /// # Panics
    /// For the GPU backend, when no device can be created; call
    /// [`check`](Self::check) first to get that as an error.
    pub fn device(self) -> Device {
        match self {
            ComputeBackend::Flex => Device::flex(),
            // Deprecated upstream in favour of flex; kept for the measured comparison.
            #[allow(deprecated)]
            ComputeBackend::NdArray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            ComputeBackend::Wgpu => match wgpu_device() {
                Ok(d) => d,
                Err(e) => panic!("{e}"),
            },
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

#[cfg(feature = "wgpu")]
fn wgpu_backend() -> Result<ComputeBackend, BackendUnavailable> {
    Ok(ComputeBackend::Wgpu)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_backend() -> Result<ComputeBackend, BackendUnavailable> {
    Err(BackendUnavailable::NotBuilt { name: "wgpu", feature: WGPU_FEATURE })
}

/// The process's one wgpu device: burn's runtime for a device selector can
/// be initialised once, so the first call decides and later calls share it
/// (or its error). wgpu picks the best adapter (a discrete GPU first; a
/// software device such as lavapipe when that is all there is);
/// `CUBECL_WGPU_DEFAULT_DEVICE` overrides the choice.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, BackendUnavailable> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            // Adapter enumeration panics in some drivers instead of failing.
            std::panic::catch_unwind(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
                .unwrap_or_else(|_| Err("the wgpu runtime panicked while looking for an adapter".into()))
        })
        .clone()
        .map_err(|reason| BackendUnavailable::NoDevice { name: "wgpu", reason })
}

impl Default for ComputeBackend {
    fn default() -> Self {
        DEFAULT_BACKEND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgpu_is_an_error_naming_the_feature_exactly_when_it_is_not_built() {
        assert_eq!(ComputeBackend::wgpu().is_ok(), WGPU_BUILT);
        let e = BackendUnavailable::NotBuilt { name: "wgpu", feature: WGPU_FEATURE }.to_string();
        assert!(e.contains("--features tessera-learn/wgpu"), "{e}");
        if let Err(e) = ComputeBackend::wgpu() {
            assert_eq!(e, BackendUnavailable::NotBuilt { name: "wgpu", feature: WGPU_FEATURE });
        }
    }

    #[test]
    fn cpu_backends_always_check() {
        for b in [ComputeBackend::Flex, ComputeBackend::NdArray] {
            assert_eq!(b.check(), Ok(b));
        }
    }
}

//! Named parameter tensors: the *trainable* part of a model, the only thing
//! that crosses the wire. Frozen backbone weights never appear here.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One named tensor of f32 values in row-major order.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamTensor {
    /// Dotted path of the tensor in the model; layouts match by it.
    pub name: String,
    /// Dimensions; their product is `data.len()`.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

impl ParamTensor {
    /// A tensor, refused when `data` does not hold exactly the values
    /// `shape` describes.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ParamsError> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ParamsError::ShapeMismatch { name, expected, actual: data.len() });
        }
        Ok(Self { name, shape, data })
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// The ordered names and shapes of a parameter set, without values. Both
/// sides agree on it before any values move, so that chunks carry only
/// offsets into the flat vector.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    /// Name and shape of each tensor, in parameter-set order.
    pub entries: Vec<(String, Vec<usize>)>,
}

impl ParamLayout {
    /// Total number of values; panics on overflow in debug builds, so use
    /// [`Self::checked_numel`] on a layout a peer sent.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// [`Self::numel`], or `None` when it overflows: a layout from a peer
    /// may announce any shape, so check before sizing anything by it.
    pub fn checked_numel(&self) -> Option<usize> {
        self.entries.iter().try_fold(0usize, |total, (_, shape)| {
            total.checked_add(shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))?)
        })
    }

    /// Short digest used to check that two parties talk about the same model.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (name, shape) in &self.entries {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((shape.len() as u64).to_le_bytes());
            for d in shape {
                h.update((*d as u64).to_le_bytes());
            }
        }
        h.finalize().into()
    }
}

/// A full set of trainable parameters, in a fixed order.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelParams {
    /// The tensors, in the order the layout and the flat vector use.
    pub tensors: Vec<ParamTensor>,
}

/// Why parameters could not be built or combined. Names a tensor at most,
/// never a value.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ParamsError {
    /// A tensor's shape and value count disagree.
    #[error("tensor `{name}`: shape holds {expected} values but {actual} were given")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// Values the shape describes.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// A flat vector or flat range does not fit the layout.
    #[error("flat vector has {actual} values, layout needs {expected}")]
    FlatLength {
        /// Values the layout holds.
        expected: usize,
        /// Values given (or the end of the range asked for).
        actual: usize,
    },
    /// Two parameter sets differ in tensor names, shapes or order.
    #[error("parameter layouts differ")]
    LayoutMismatch,
    /// A tensor holds a NaN or an infinity.
    #[error("tensor `{name}` holds a non-finite value")]
    NonFinite {
        /// The first such tensor.
        name: String,
    },
}

impl ModelParams {
    /// A parameter set of `tensors`, in that order.
    pub fn new(tensors: Vec<ParamTensor>) -> Self {
        Self { tensors }
    }

    /// Names and shapes, without values.
    pub fn layout(&self) -> ParamLayout {
        ParamLayout { entries: self.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect() }
    }

    /// Total number of values across all tensors.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// Bytes the values occupy as f32; what "update size" means in reports.
    pub fn byte_len(&self) -> usize {
        self.numel() * 4
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&ParamTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A zero-valued parameter set with this layout.
    pub fn zeros(layout: &ParamLayout) -> Self {
        Self {
            tensors: layout
                .entries
                .iter()
                .map(|(n, s)| ParamTensor { name: n.clone(), shape: s.clone(), data: vec![0.0; s.iter().product()] })
                .collect(),
        }
    }

    /// Iterate over all values in layout order.
    pub fn values(&self) -> impl Iterator<Item = &f32> {
        self.tensors.iter().flat_map(|t| t.data.iter())
    }

    /// Iterate mutably over all values in layout order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut f32> {
        self.tensors.iter_mut().flat_map(|t| t.data.iter_mut())
    }

    /// All values in layout order, as one vector (a full copy).
    pub fn to_flat(&self) -> Vec<f32> {
        self.values().copied().collect()
    }

    /// Split a flat vector into tensors as `layout` says; its length must
    /// match the layout exactly.
    pub fn from_flat(layout: &ParamLayout, flat: &[f32]) -> Result<Self, ParamsError> {
        let expected = layout.numel();
        if flat.len() != expected {
            return Err(ParamsError::FlatLength { expected, actual: flat.len() });
        }
        let mut offset = 0;
        let mut tensors = Vec::with_capacity(layout.entries.len());
        for (name, shape) in &layout.entries {
            let n: usize = shape.iter().product();
            tensors.push(ParamTensor {
                name: name.clone(),
                shape: shape.clone(),
                data: flat[offset..offset + n].to_vec(),
            });
            offset += n;
        }
        Ok(Self { tensors })
    }

    /// Write `src` into the flat range starting at `offset`; used to rebuild
    /// a parameter set from streamed chunks without a second full copy.
    pub fn write_flat(&mut self, offset: usize, src: &[f32]) -> Result<(), ParamsError> {
        let total = self.numel();
        if offset.checked_add(src.len()).is_none_or(|end| end > total) {
            return Err(ParamsError::FlatLength { expected: total, actual: offset.saturating_add(src.len()) });
        }
        let mut pos = 0usize;
        let mut remaining = src;
        let mut cursor = offset;
        for t in &mut self.tensors {
            let n = t.data.len();
            if cursor >= pos + n {
                pos += n;
                continue;
            }
            let start = cursor - pos;
            let take = (n - start).min(remaining.len());
            t.data[start..start + take].copy_from_slice(&remaining[..take]);
            remaining = &remaining[take..];
            cursor += take;
            pos += n;
            if remaining.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Copy the flat range `[offset, offset + out.len())` into `out`.
    pub fn read_flat(&self, offset: usize, out: &mut [f32]) -> Result<(), ParamsError> {
        let total = self.numel();
        if offset.checked_add(out.len()).is_none_or(|end| end > total) {
            return Err(ParamsError::FlatLength { expected: total, actual: offset.saturating_add(out.len()) });
        }
        for (dst, src) in out.iter_mut().zip(self.values().skip(offset)) {
            *dst = *src;
        }
        Ok(())
    }

    fn check_same_layout(&self, other: &Self) -> Result<(), ParamsError> {
        if self.tensors.len() != other.tensors.len()
            || self.tensors.iter().zip(&other.tensors).any(|(a, b)| a.name != b.name || a.shape != b.shape)
        {
            return Err(ParamsError::LayoutMismatch);
        }
        Ok(())
    }

    /// `self += alpha * other`.
    pub fn add_scaled(&mut self, other: &Self, alpha: f32) -> Result<(), ParamsError> {
        self.check_same_layout(other)?;
        for (a, b) in self.values_mut().zip(other.values()) {
            *a += alpha * *b;
        }
        Ok(())
    }

    /// `self - other`, the update a client reports.
    pub fn delta_from(&self, base: &Self) -> Result<Self, ParamsError> {
        self.check_same_layout(base)?;
        let mut out = self.clone();
        for (a, b) in out.values_mut().zip(base.values()) {
            *a -= *b;
        }
        Ok(out)
    }

    /// `self *= alpha`.
    pub fn scale(&mut self, alpha: f32) {
        for v in self.values_mut() {
            *v *= alpha;
        }
    }

    /// L2 norm over all values, accumulated in f64.
    pub fn l2_norm(&self) -> f64 {
        self.values().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt()
    }

    /// Refuse a parameter set holding a NaN or an infinity.
    pub fn check_finite(&self) -> Result<(), ParamsError> {
        for t in &self.tensors {
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(ParamsError::NonFinite { name: t.name.clone() });
            }
        }
        Ok(())
    }

    /// SHA-256 over layout and little-endian values: the model hash recorded
    /// in audit entries.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.layout().fingerprint());
        for t in &self.tensors {
            for v in &t.data {
                h.update(v.to_le_bytes());
            }
        }
        h.finalize().into()
    }

    /// [`Self::digest`] as lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModelParams {
        ModelParams::new(vec![
            ParamTensor::new("a.weight", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
            ParamTensor::new("a.bias", vec![2], vec![7.0, 8.0]).unwrap(),
        ])
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        assert!(matches!(ParamTensor::new("x", vec![2, 2], vec![0.0; 3]), Err(ParamsError::ShapeMismatch { .. })));
    }

    #[test]
    fn flat_roundtrip_and_chunked_writes() {
        let p = sample();
        let flat = p.to_flat();
        assert_eq!(ModelParams::from_flat(&p.layout(), &flat).unwrap(), p);
        let mut z = ModelParams::zeros(&p.layout());
        z.write_flat(0, &flat[..4]).unwrap();
        z.write_flat(4, &flat[4..7]).unwrap();
        z.write_flat(7, &flat[7..]).unwrap();
        assert_eq!(z, p);
        let mut out = [0.0; 3];
        p.read_flat(5, &mut out).unwrap();
        assert_eq!(out, [6.0, 7.0, 8.0]);
        assert!(z.write_flat(7, &[0.0; 2]).is_err());
        assert!(p.read_flat(usize::MAX, &mut out).is_err());
    }

    #[test]
    fn arithmetic_and_digest() {
        let p = sample();
        let mut q = p.clone();
        q.scale(2.0);
        let d = q.delta_from(&p).unwrap();
        assert_eq!(d, p);
        assert_ne!(p.digest(), q.digest());
        let mut bad = p.clone();
        bad.tensors[1].data[0] = f32::NAN;
        assert_eq!(bad.check_finite(), Err(ParamsError::NonFinite { name: "a.bias".into() }));
        let other = ModelParams::new(vec![p.tensors[0].clone()]);
        assert_eq!(q.add_scaled(&other, 1.0), Err(ParamsError::LayoutMismatch));
    }
}

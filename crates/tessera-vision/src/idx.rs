//! Reader for the IDX format of MNIST and Fashion-MNIST (optionally
//! gzip-compressed): a big-endian header `0 0 type rank`, `rank` u32
//! dimensions, then the values. Only unsigned bytes (type 0x08) are used by
//! these data sets, and only those are accepted.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

use crate::dataset::ImageDataset;
use crate::error::{Result, VisionError};

/// Class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The header's dimensions, outermost first (e.g. `[n, rows, cols]`).
    pub dims: Vec<usize>,
    /// The values, row-major; exactly the product of `dims` of them.
    pub data: Vec<u8>,
}

/// Reads a file, gunzipping when its name ends in `.gz`.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| VisionError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| VisionError::BadIdx { path: path.to_path_buf(), reason: format!("gzip: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `path` only names the source in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad = |reason: String| VisionError::BadIdx { path: path.to_path_buf(), reason };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is shorter than the 4-byte magic", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("magic does not start with two zero bytes".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} is not unsigned byte (0x08)", bytes[2])));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(bad("rank 0".into()));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(format!("truncated header: {} bytes, need {header}", bytes.len())));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count =
        dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("size overflows".into()))?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(bad(format!("dimensions {dims:?} need {count} values, file holds {}", body.len())));
    }
    Ok(IdxArray { dims, data: body.to_vec() })
}

/// Reads and parses an IDX file, gunzipping it when its name ends in `.gz`.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(&read_bytes(path)?, path)
}

/// Loads an images file (`n x rows x cols`) and its labels file (`n`) into a
/// one-channel data set with pixels scaled to `[0, 1]`.
pub fn load_idx_dataset(images: &Path, labels: &Path, class_names: &[&str]) -> Result<ImageDataset> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    if img.dims.len() != 3 {
        return Err(VisionError::BadIdx {
            path: images.to_path_buf(),
            reason: format!("rank {} is not 3", img.dims.len()),
        });
    }
    if lab.dims.len() != 1 {
        return Err(VisionError::BadIdx {
            path: labels.to_path_buf(),
            reason: format!("rank {} is not 1", lab.dims.len()),
        });
    }
    if img.dims[0] != lab.dims[0] {
        return Err(VisionError::LabelCountMismatch { images: img.dims[0], labels: lab.dims[0] });
    }
    let pixels = img.data.iter().map(|&b| f32::from(b) / 255.0).collect();
    let labels = lab.data.iter().map(|&b| usize::from(b)).collect();
    ImageDataset::new(1, img.dims[1], img.dims[2], pixels, labels, class_names.iter().map(|s| s.to_string()).collect())
}

/// Loads `{prefix}-images-idx3-ubyte.gz` / `{prefix}-labels-idx1-ubyte.gz`
/// (`prefix` is `train` or `t10k`) from a Fashion-MNIST directory.
pub fn load_fashion_mnist(dir: &Path, prefix: &str) -> Result<ImageDataset> {
    load_idx_dataset(
        &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        &FASHION_MNIST_CLASSES,
    )
}

/// Encodes unsigned bytes as IDX (used to write subsets and fixtures).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    if dims.is_empty() || dims.len() > 255 || dims.iter().product::<usize>() != data.len() {
        return Err(VisionError::InvalidConfig(format!("{} values do not fit dimensions {dims:?}", data.len())));
    }
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| VisionError::InvalidConfig(format!("dimension {d} exceeds u32")))?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn roundtrip_and_typed_errors() {
        let p = Path::new("x.idx");
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(parse_idx(&bytes, p).unwrap(), IdxArray { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] });
        // Truncated body, truncated header, bad magic, wrong element type.
        assert!(matches!(parse_idx(&bytes[..bytes.len() - 1], p), Err(VisionError::BadIdx { .. })));
        assert!(matches!(parse_idx(&bytes[..6], p), Err(VisionError::BadIdx { .. })));
        assert!(matches!(parse_idx(&[1, 0, 8, 1, 0, 0, 0, 0], p), Err(VisionError::BadIdx { .. })));
        assert!(matches!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0], p), Err(VisionError::BadIdx { .. })));
        assert!(matches!(parse_idx(&[], p), Err(VisionError::BadIdx { .. })));
        // Huge claimed dimensions do not allocate; they fail the length check.
        assert!(parse_idx(&[0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255], p).is_err());
    }

    #[test]
    fn loads_gzip_pair_and_rejects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("train-images-idx3-ubyte.gz");
        let lab = dir.path().join("train-labels-idx1-ubyte.gz");
        let pixels: Vec<u8> = (0..10 * 4).map(|i| (i * 6) as u8).collect();
        std::fs::write(&img, gz(&encode_idx(&[10, 2, 2], &pixels).unwrap())).unwrap();
        std::fs::write(&lab, gz(&encode_idx(&[10], &(0..10).collect::<Vec<u8>>()).unwrap())).unwrap();
        let ds = load_fashion_mnist(dir.path(), "train").unwrap();
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.image_shape(), (1, 2, 2));
        assert_eq!(ds.class_counts(), vec![1; 10]);
        assert!((ds.image(1).unwrap()[0] - 24.0 / 255.0).abs() < 1e-7);
        // Nine labels for ten images.
        std::fs::write(&lab, gz(&encode_idx(&[9], &[0; 9]).unwrap())).unwrap();
        assert!(matches!(load_fashion_mnist(dir.path(), "train"), Err(VisionError::LabelCountMismatch { .. })));
        // Corrupt gzip stream and a missing file.
        std::fs::write(&lab, b"not gzip").unwrap();
        assert!(matches!(load_fashion_mnist(dir.path(), "train"), Err(VisionError::BadIdx { .. })));
        assert!(matches!(load_fashion_mnist(dir.path(), "t10k"), Err(VisionError::Io { .. })));
    }
}

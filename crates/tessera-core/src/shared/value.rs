//! One value that many members' messages carry alike, held once.
//!
//! A SecAgg+ member is sent the signed advertisement of each of its k
//! neighbours, so each advertisement goes to k members. Cloned into every
//! message, the aggregator's thread copies k · n certificates (a few
//! hundred bytes each) between two phases while the members wait: at 1,000
//! members that was most of a serial pause of 50–100 ms
//! (docs/benchmarks.md, "Protocol time, fourth pass"). A [`Shared`] value is
//! behind an `Arc`, so putting it in a message is a reference count, and
//! its encoded length is computed once. On the wire it is exactly `T`.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{CodecError, value_len};

/// An immutable value shared by reference: cloning it is one reference
/// count. It encodes and decodes exactly as `T` does.
pub struct Shared<T>(Arc<Inner<T>>);

struct Inner<T> {
    value: T,
    encoded_len: OnceLock<Result<usize, CodecError>>,
}

impl<T> Shared<T> {
    /// `value`, to be shared.
    pub fn new(value: T) -> Self {
        Self(Arc::new(Inner { value, encoded_len: OnceLock::new() }))
    }

    /// Whether `a` and `b` are the same shared value (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T: Serialize> Shared<T> {
    /// Bytes the value takes in an encoded message, computed once.
    pub fn encoded_len(&self) -> Result<usize, CodecError> {
        self.0.encoded_len.get_or_init(|| value_len(&self.0.value)).clone()
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Self::ptr_eq(self, other) || self.0.value == other.0.value
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.value.fmt(f)
    }
}

/// Exactly as `T` encodes.
impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.value.serialize(serializer)
    }
}

/// Exactly as `T` decodes.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(feature = "arbitrary")]
impl<'a, T: arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a> for Shared<T> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        T::arbitrary(u).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_value_encodes_as_the_value() {
        let value = (7u32, vec![1u8, 2, 3], "name".to_string());
        let shared = Shared::new(value.clone());
        let bytes = crate::to_bytes(&value).unwrap();
        assert_eq!(crate::to_bytes(&shared).unwrap(), bytes);
        assert_eq!(shared.encoded_len().unwrap(), bytes.len());
        let back: Shared<(u32, Vec<u8>, String)> = crate::codec::decode_payload(&bytes).unwrap();
        assert_eq!(back, shared);
        assert!(!Shared::ptr_eq(&back, &shared));
        assert!(Shared::ptr_eq(&shared.clone(), &shared));
    }
}

//! The feature schema of a tabular run, as plain data: which columns are
//! features, their type, the bounds values are clamped to, the scaling
//! constants, the categorical vocabularies and which columns carry a
//! missing-value indicator.
//!
//! Why it is declared rather than fitted: under record-level DP-SGD,
//! per-example clipping bounds how much one record moves the summed gradient
//! only if that record does not also move every *other* record's features.
//! Means, standard deviations and vocabularies fitted on a member's private
//! rows do exactly that, and an unseen category or a first missing value
//! changes the feature count (the member then cannot even join: a signal
//! with epsilon = infinity). A schema the consortium writes down from public
//! knowledge makes the encoding of a record a function of that record alone,
//! and the feature count a constant. Fitting on local data stays available
//! as the explicit, non-private `schema = "fit-locally"`.
//!
//! This module only parses and checks; reading a schema file is
//! `tessera-tabular`'s (this crate does no I/O).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The keyword that opts into fitting the encoding on the member's own data.
pub const FIT_LOCALLY: &str = "fit-locally";

/// One feature column of a [`FeatureSchema`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureDecl {
    /// A number, clamped to `[min, max]`, then encoded as `(v - center) / scale`.
    Numeric {
        /// The CSV header name.
        name: String,
        /// Values below are raised to it.
        min: f64,
        /// Values above are lowered to it.
        max: f64,
        /// Subtracted before scaling; a missing value encodes as this (0 after scaling).
        center: f64,
        /// Divides the centred value; positive.
        scale: f64,
        /// Append a 0/1 "was missing" feature after this one.
        #[serde(default)]
        missing_indicator: bool,
    },
    /// A category, one-hot over `categories` plus one last `other` column
    /// that takes every unseen value and a missing cell, so the width never
    /// depends on the data.
    Categorical {
        /// The CSV header name.
        name: String,
        /// The vocabulary, in column order.
        categories: Vec<String>,
    },
}

impl FeatureDecl {
    /// The CSV header name.
    pub fn name(&self) -> &str {
        match self {
            Self::Numeric { name, .. } | Self::Categorical { name, .. } => name,
        }
    }

    /// Encoded columns this feature takes.
    pub fn width(&self) -> usize {
        match self {
            Self::Numeric { missing_indicator, .. } => 1 + usize::from(*missing_indicator),
            Self::Categorical { categories, .. } => categories.len() + 1,
        }
    }
}

/// A consortium's declared feature encoding; the same for every member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSchema {
    /// The features, in encoded column order.
    pub features: Vec<FeatureDecl>,
}

/// Why a declared schema is refused; each variant names the feature.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// Not TOML, or not the schema's shape (a missing or unknown key).
    #[error("feature schema: {0}")]
    Parse(String),
    /// No features at all.
    #[error("feature schema declares no features")]
    Empty,
    /// Two features with one name.
    #[error("feature schema: `{0}` is declared twice")]
    Duplicate(String),
    /// `min`/`max`/`center`/`scale` not finite, `min > max`, `scale <= 0`
    /// or `center` outside the bounds.
    #[error("feature schema: `{name}`: {reason}")]
    BadNumeric {
        /// The feature.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An empty vocabulary, or one category listed twice.
    #[error("feature schema: `{name}`: {reason}")]
    BadVocabulary {
        /// The feature.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl FeatureSchema {
    /// Parse a schema file's text (`[[features]]` tables) and check it.
    pub fn from_toml(text: &str) -> Result<Self, SchemaError> {
        let schema: Self = toml::from_str(text).map_err(|e| SchemaError::Parse(e.to_string()))?;
        schema.validate()?;
        Ok(schema)
    }

    /// Encoded width: the `[model] num_features` this schema needs.
    pub fn width(&self) -> usize {
        self.features.iter().map(FeatureDecl::width).sum()
    }

    /// The feature column names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(FeatureDecl::name)
    }

    /// Refuse schemas that cannot encode every record to finite values of a fixed width.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.features.is_empty() {
            return Err(SchemaError::Empty);
        }
        let mut seen = BTreeSet::new();
        for f in &self.features {
            if !seen.insert(f.name()) {
                return Err(SchemaError::Duplicate(f.name().to_string()));
            }
            let bad = |reason| SchemaError::BadNumeric { name: f.name().to_string(), reason };
            match f {
                FeatureDecl::Numeric { min, max, center, scale, .. } => {
                    if ![min, max, center, scale].iter().all(|v| v.is_finite()) {
                        return Err(bad("min, max, center and scale must be finite"));
                    }
                    if min > max {
                        return Err(bad("min is above max"));
                    }
                    if *scale <= 0.0 {
                        return Err(bad("scale must be positive"));
                    }
                    if center < min || center > max {
                        return Err(bad("center must lie within [min, max]"));
                    }
                }
                FeatureDecl::Categorical { categories, .. } => {
                    let vocab = |reason| SchemaError::BadVocabulary { name: f.name().to_string(), reason };
                    if categories.is_empty() {
                        return Err(vocab("the vocabulary is empty"));
                    }
                    if categories.iter().collect::<BTreeSet<_>>().len() != categories.len() {
                        return Err(vocab("a category is listed twice"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `[data] schema`: where a tabular member's encoding comes from.
///
/// In TOML: a string naming a schema file (relative to the configuration
/// file), the keyword `"fit-locally"`, or the schema inline as a table
/// (`[data.schema]` with `[[data.schema.features]]`).
#[derive(Clone, Debug, PartialEq)]
pub enum SchemaSource {
    /// Fit imputation, scaling and vocabularies on the member's own
    /// training rows. Not differentially private: refused under `[privacy]`.
    FitLocally,
    /// A schema file, read when the data is loaded.
    File(PathBuf),
    /// The schema itself.
    Declared(FeatureSchema),
}

impl Serialize for SchemaSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::FitLocally => s.serialize_str(FIT_LOCALLY),
            Self::File(p) => p.serialize(s),
            Self::Declared(schema) => schema.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SchemaSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Table(toml::Table),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) if t == FIT_LOCALLY => Ok(Self::FitLocally),
            Raw::Text(t) => Ok(Self::File(PathBuf::from(t))),
            Raw::Table(t) => {
                let schema: FeatureSchema =
                    t.try_into().map_err(|e: toml::de::Error| serde::de::Error::custom(format!("schema: {e}")))?;
                schema.validate().map_err(serde::de::Error::custom)?;
                Ok(Self::Declared(schema))
            }
        }
    }
}

impl SchemaSource {
    /// Whether the encoding is declared (a file or inline), not fitted on private data.
    pub fn is_declared(&self) -> bool {
        !matches!(self, Self::FitLocally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[features]]
type = "numeric"
name = "age"
min = 18.0
max = 100.0
center = 40.0
scale = 15.0
missing_indicator = true

[[features]]
type = "categorical"
name = "city"
categories = ["basel", "bern"]
"#;

    #[test]
    fn a_schema_parses_and_its_width_is_declared_not_measured() {
        let s = FeatureSchema::from_toml(TWO).unwrap();
        // 1 + indicator, 2 categories + other.
        assert_eq!(s.width(), 5);
        assert_eq!(s.names().collect::<Vec<_>>(), ["age", "city"]);
    }

    #[test]
    fn a_missing_key_is_named() {
        let err = FeatureSchema::from_toml(&TWO.replace("scale = 15.0\n", "")).unwrap_err().to_string();
        assert!(err.contains("scale"), "{err}");
        let err =
            FeatureSchema::from_toml(&TWO.replace("categories = [\"basel\", \"bern\"]\n", "")).unwrap_err().to_string();
        assert!(err.contains("categories"), "{err}");
    }

    #[test]
    fn unusable_schemas_are_refused() {
        let e = |from: &str, to: &str| FeatureSchema::from_toml(&TWO.replace(from, to)).unwrap_err();
        assert!(matches!(e("scale = 15.0", "scale = 0.0"), SchemaError::BadNumeric { .. }));
        assert!(matches!(e("min = 18.0", "min = 180.0"), SchemaError::BadNumeric { .. }));
        assert!(matches!(e("center = 40.0", "center = 400.0"), SchemaError::BadNumeric { .. }));
        assert!(matches!(e("max = 100.0", "max = nan"), SchemaError::BadNumeric { .. }));
        assert!(matches!(e("\"bern\"]", "\"basel\"]"), SchemaError::BadVocabulary { .. }));
        assert!(matches!(e("name = \"city\"", "name = \"age\""), SchemaError::Duplicate(_)));
        assert_eq!(FeatureSchema::from_toml("features = []"), Err(SchemaError::Empty));
    }

    #[test]
    fn a_source_is_a_keyword_a_file_or_a_table() {
        #[derive(Deserialize, Serialize)]
        struct D {
            schema: SchemaSource,
        }
        let d: D = toml::from_str("schema = \"fit-locally\"").unwrap();
        assert_eq!(d.schema, SchemaSource::FitLocally);
        assert!(!d.schema.is_declared());
        let d: D = toml::from_str("schema = \"wdbc.schema.toml\"").unwrap();
        assert_eq!(d.schema, SchemaSource::File("wdbc.schema.toml".into()));
        let inline = TWO.replace("[[features]]", "[[schema.features]]");
        let d: D = toml::from_str(&inline).unwrap();
        assert_eq!(d.schema, SchemaSource::Declared(FeatureSchema::from_toml(TWO).unwrap()));
        // Round trip through the serializer.
        let again: D = toml::from_str(&toml::to_string(&d).unwrap()).unwrap();
        assert_eq!(again.schema, d.schema);
        // An inline schema is checked as a file is.
        assert!(toml::from_str::<D>(&inline.replace("scale = 15.0", "scale = -1.0")).is_err());
    }
}

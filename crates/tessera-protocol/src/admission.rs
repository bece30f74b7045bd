//! Admission by configuration: the digest a member announces in `Hello`
//! and the coordinator's verdict on it.
//!
//! A member whose `[model]` or feature schema differs from the
//! consortium's cannot contribute a usable update: its vector has another
//! length, or the same length with other meanings. Found during a round,
//! that costs every member of the cohort an aborted attempt, and under DP
//! a reservation each. Found at admission, it costs nothing, and the
//! refusal names the member and both digests.

use sha2::{Digest, Sha256};
use tessera_core::{FeatureSchema, ModelSection, SettingsDigest};

/// Domain separation of the two digests (a model digest can never equal a
/// schema digest of other content).
const MODEL_TAG: &[u8] = b"tessera/settings/model/v1";
const SCHEMA_TAG: &[u8] = b"tessera/settings/schema/v1";

/// The digest of a `[model]` section and a declared feature schema, as
/// every party computes it. File locations (`pretrained`, `weights`) are
/// left out, since each machine keeps its files elsewhere, and so is
/// `feature_batch`, which only sizes local inference passes. `schema` is
/// `None` for image models and for a `fit-locally` encoding: then the
/// schema half is all zeros.
pub fn settings_digest(model: &ModelSection, schema: Option<&FeatureSchema>) -> SettingsDigest {
    let mut model = model.clone();
    match &mut model {
        ModelSection::Tabular(m) => m.pretrained = None,
        ModelSection::Vision(v) => {
            v.weights = None;
            v.feature_batch = 0;
        }
    }
    let kind: &[u8] = match model {
        ModelSection::Tabular(_) => b"tabular",
        ModelSection::Vision(_) => b"vision",
    };
    SettingsDigest {
        model: hash(MODEL_TAG, kind, &encode(&model)),
        schema: schema.map_or([0; 32], |s| hash(SCHEMA_TAG, b"", &encode(s))),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain data (numbers, strings, vectors): encoding cannot fail.
    tessera_core::to_bytes(value).expect("settings encode")
}

fn hash(tag: &[u8], kind: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [tag, kind, body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Which half of the [`SettingsDigest`] differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingsPart {
    /// The `[model]` section.
    Model,
    /// The feature schema.
    Schema,
    /// Both.
    Both,
}

impl std::fmt::Display for SettingsPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Model => "[model] section",
            Self::Schema => "feature schema",
            Self::Both => "[model] section and feature schema",
        })
    }
}

/// Why the coordinator refused a member at admission. The member never
/// joins a round, so no budget is reserved on its account.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionRefusal {
    /// The member's build speaks another protocol version.
    #[error("member {member} speaks protocol version {announced}, the aggregator {expected}")]
    ProtocolVersion {
        /// The member's certificate name.
        member: String,
        /// Its `Hello`'s version.
        announced: u8,
        /// This build's.
        expected: u8,
    },
    /// The member's configuration differs from the consortium's.
    #[error(
        "member {member}'s {part} differs from the aggregator's (member: {announced}; aggregator: {expected}); \
         fix the member's client.toml to match the consortium's"
    )]
    Settings {
        /// The member's certificate name.
        member: String,
        /// What differs.
        part: SettingsPart,
        /// What the member announced.
        announced: SettingsDigest,
        /// What the aggregator expects.
        expected: SettingsDigest,
    },
}

impl AdmissionRefusal {
    /// The refused member.
    pub fn member(&self) -> &str {
        match self {
            Self::ProtocolVersion { member, .. } | Self::Settings { member, .. } => member,
        }
    }
}

/// What the coordinator expects a member to announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// The consortium's digest.
    pub expected: SettingsDigest,
    /// Whether the schema half is compared. An aggregator that declares no
    /// schema cannot judge one; the `[model]` half is always compared.
    pub check_schema: bool,
}

impl AdmissionPolicy {
    /// The verdict on `member`'s `Hello` (boxed: a refusal carries two
    /// digests, and admission is the rare path).
    pub fn check(
        &self,
        member: &str,
        protocol_version: u8,
        announced: SettingsDigest,
    ) -> Result<(), Box<AdmissionRefusal>> {
        if protocol_version != tessera_core::PROTOCOL_VERSION {
            return Err(Box::new(AdmissionRefusal::ProtocolVersion {
                member: member.to_string(),
                announced: protocol_version,
                expected: tessera_core::PROTOCOL_VERSION,
            }));
        }
        let model = announced.model != self.expected.model;
        let schema = self.check_schema && announced.schema != self.expected.schema;
        let part = match (model, schema) {
            (false, false) => return Ok(()),
            (true, false) => SettingsPart::Model,
            (false, true) => SettingsPart::Schema,
            (true, true) => SettingsPart::Both,
        };
        Err(Box::new(AdmissionRefusal::Settings {
            member: member.to_string(),
            part,
            announced,
            expected: self.expected,
        }))
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::{ModelConfig, TrainableConfig, VisionModelConfig};

    use super::*;

    fn tabular(hidden: Vec<usize>) -> ModelSection {
        ModelSection::Tabular(ModelConfig {
            hidden,
            num_features: 4,
            num_classes: 2,
            trainable: TrainableConfig::All,
            init_seed: 1,
            pretrained: None,
        })
    }

    fn schema(max: f64) -> FeatureSchema {
        FeatureSchema::from_toml(&format!(
            "[[features]]\ntype = \"numeric\"\nname = \"x\"\nmin = 0.0\nmax = {max:?}\ncenter = 0.5\nscale = 1.0\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_digest_follows_the_consortium_settings_and_not_local_paths() {
        let base = settings_digest(&tabular(vec![8]), Some(&schema(1.0)));
        assert_eq!(base, settings_digest(&tabular(vec![8]), Some(&schema(1.0))));
        assert_ne!(base.model, settings_digest(&tabular(vec![16]), Some(&schema(1.0))).model);
        assert_ne!(base.schema, settings_digest(&tabular(vec![8]), Some(&schema(2.0))).schema);
        assert_eq!(settings_digest(&tabular(vec![8]), None).schema, [0; 32]);
        let ModelSection::Tabular(mut moved) = tabular(vec![8]) else { unreachable!() };
        moved.pretrained = Some("/elsewhere/backbone.safetensors".into());
        assert_eq!(settings_digest(&ModelSection::Tabular(moved), Some(&schema(1.0))), base);

        let mut v = VisionModelConfig::efficientnet_head(10, 96);
        let vision = settings_digest(&ModelSection::Vision(v.clone()), None);
        v.weights = Some("/opt/w.pth".into());
        v.feature_batch = 7;
        assert_eq!(settings_digest(&ModelSection::Vision(v.clone()), None), vision);
        v.trainable_blocks = 1;
        assert_ne!(settings_digest(&ModelSection::Vision(v), None), vision);
    }

    #[test]
    #[allow(clippy::result_large_err)] // unboxed to compare with `matches!`
    fn a_mismatch_is_refused_naming_the_member_the_part_and_both_digests() {
        let expected = settings_digest(&tabular(vec![8]), Some(&schema(1.0)));
        let p = AdmissionPolicy { expected, check_schema: true };
        let policy = |m: &str, v: u8, d: SettingsDigest| p.check(m, v, d).map_err(|e| *e);
        assert_eq!(policy("a", tessera_core::PROTOCOL_VERSION, expected), Ok(()));
        let wrong = settings_digest(&tabular(vec![16]), Some(&schema(1.0)));
        let err = policy("bank-c", tessera_core::PROTOCOL_VERSION, wrong).unwrap_err();
        assert!(matches!(err, AdmissionRefusal::Settings { part: SettingsPart::Model, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("bank-c") && text.contains(&wrong.short()) && text.contains(&expected.short()), "{text}");
        let other_schema = settings_digest(&tabular(vec![8]), Some(&schema(2.0)));
        assert!(matches!(
            policy("a", tessera_core::PROTOCOL_VERSION, other_schema),
            Err(AdmissionRefusal::Settings { part: SettingsPart::Schema, .. })
        ));
        // Without a schema of its own the aggregator judges the model only.
        let lenient = AdmissionPolicy { check_schema: false, ..p };
        assert_eq!(lenient.check("a", tessera_core::PROTOCOL_VERSION, other_schema), Ok(()));
        assert!(matches!(
            policy("a", tessera_core::PROTOCOL_VERSION - 1, expected),
            Err(AdmissionRefusal::ProtocolVersion { .. })
        ));
    }
}

//! Unit tests of `client.toml` parsing and validation.
use super::*;

#[test]
fn parses_and_resolves_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("client.toml");
    std::fs::write(
        &p,
        r#"
member = "hospital-a"
[aggregator]
address = "127.0.0.1:4433"
ca = "pki/ca.pem"
cert = "pki/hospital-a.pem"
key = "pki/hospital-a.key"
[data]
path = "data.csv"
label = "diagnosis"
schema = "wdbc.schema.toml"
[model]
num_features = 30
num_classes = 2
"#,
    )
    .unwrap();
    let c = ClientConfig::load(&p).unwrap();
    assert_eq!(c.data.csv().unwrap().path, dir.path().join("data.csv"));
    assert_eq!(c.data.csv().unwrap().schema, Some(SchemaSource::File(dir.path().join("wdbc.schema.toml"))));
    assert_eq!(c.model.tabular().unwrap().num_features, 30);
    assert_eq!(c.state.egress_ledger, dir.path().join("state/egress.jsonl"));
    std::fs::write(&p, "member = 3").unwrap();
    assert!(ClientConfig::load(&p).unwrap_err().to_string().contains("client.toml"));
}

#[test]
fn a_relative_config_path_resolves_to_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("client.toml"),
        format!(
            "{PKI}[data]\npath = \"data/d.csv\"\nlabel = \"y\"\nschema = \"fit-locally\"\n\
             [model]\nnum_features = 3\nnum_classes = 2\n"
        ),
    )
    .unwrap();
    // The same file named relative to the working directory.
    let cwd = std::env::current_dir().unwrap();
    let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
    let relative = up.join(dir.path().strip_prefix("/").unwrap()).join("client.toml");
    assert!(relative.is_relative());
    let c = ClientConfig::load(&relative).unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(c.aggregator.cert, real.join("pki/hospital-b.pem"));
    assert_eq!(c.data.csv().unwrap().path, real.join("data/d.csv"));
    assert_eq!(c.state.egress_ledger, real.join("state/egress.jsonl"));
}

#[test]
fn an_address_without_a_port_is_a_config_error_at_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("client.toml");
    let text = PKI.replace("127.0.0.1:4433", "aggregator.example.org");
    std::fs::write(
        &p,
        format!("{text}[data]\npath = \"d.csv\"\nlabel = \"y\"\n[model]\nnum_features = 3\nnum_classes = 2\n"),
    )
    .unwrap();
    let err = ClientConfig::load(&p);
    let Err(ConfigError::Parse { message, .. }) = err else { panic!("expected a parse error, got {err:?}") };
    assert!(message.contains("has no port") && message.contains("aggregator.example.org:4433"), "{message}");
    // The parser points at the value: its line, and a caret under it.
    assert!(message.contains("line 4") && message.contains('^'), "{message}");
}

/// A minimal valid `client.toml` followed by `extra`, loaded.
fn load_with(extra: &str) -> Result<ClientConfig, ConfigError> {
    load_with_data("schema = \"s.toml\"\n", extra)
}

/// As [`load_with`], with `data` appended to the `[data]` section (in place of its schema).
fn load_with_data(data: &str, extra: &str) -> Result<ClientConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("client.toml");
    let text = format!(
        "{PKI}[data]\npath = \"d.csv\"\nlabel = \"y\"\n{data}[model]\nnum_features = 3\nnum_classes = 2\n{extra}"
    );
    std::fs::write(&p, text).unwrap();
    ClientConfig::load(&p)
}

fn invalid(extra: &str) -> ConfigProblem {
    match load_with(extra) {
        Err(ConfigError::Invalid { path, source }) => {
            assert!(path.ends_with("client.toml"), "the error names the file: {}", path.display());
            source
        }
        other => panic!("expected a refused value for {extra:?}, got {other:?}"),
    }
}

#[test]
fn policy_defaults_are_the_protocol_defaults() {
    let c = load_with("").unwrap();
    assert_eq!(c.policy, PolicySection::default());
    let (ours, protocol) = (c.policy.policy(), Policy::default());
    assert_eq!(
        (ours.min_cohort, ours.min_threshold_fraction, ours.max_model_values, ours.require_dp),
        (protocol.min_cohort, protocol.min_threshold_fraction, protocol.max_model_values, protocol.require_dp)
    );
    assert!(!ours.allow_plaintext, "the daemon never accepts plaintext rounds");
    // An empty section is the defaults too.
    assert_eq!(load_with("[policy]\n").unwrap().policy, PolicySection::default());
}

#[test]
fn policy_keys_set_the_participants_policy() {
    let c = load_with(
        "[policy]\nmin_cohort = 10\nmin_threshold_fraction = 0.75\nmax_model_values = 1000\nrequire_dp = true\n",
    )
    .unwrap();
    let p = c.policy.policy();
    assert_eq!((p.min_cohort, p.min_threshold_fraction, p.max_model_values, p.require_dp), (10, 0.75, 1000, true));
    // Exactly two thirds (the default, spelled out) is accepted.
    assert!(load_with("[policy]\nmin_threshold_fraction = 0.6666666666666666\n").is_ok());
    // The section takes no other keys.
    let err = load_with("[policy]\nallow_plaintext = true\n").unwrap_err();
    assert!(matches!(&err, ConfigError::Parse { message, .. } if message.contains("allow_plaintext")), "{err}");
}

#[test]
fn policy_below_the_safe_floor_is_refused_with_a_typed_error() {
    use PolicyError::*;
    for (extra, expected) in [
        ("min_cohort = 1", MinCohort(1)),
        ("min_cohort = 0", MinCohort(0)),
        ("min_threshold_fraction = 0.5", ThresholdFraction(0.5)),
        ("min_threshold_fraction = 0.666", ThresholdFraction(0.666)),
        ("min_threshold_fraction = 1.0", ThresholdFraction(1.0)),
        ("min_threshold_fraction = 1.5", ThresholdFraction(1.5)),
        ("max_model_values = 0", MaxModelValues),
    ] {
        assert_eq!(invalid(&format!("[policy]\n{extra}\n")), ConfigProblem::Policy(expected), "{extra}");
    }
    // NaN compares false with everything; it is refused all the same.
    let nan = invalid("[policy]\nmin_threshold_fraction = nan\n");
    assert!(matches!(nan, ConfigProblem::Policy(ThresholdFraction(f)) if f.is_nan()), "{nan:?}");
    // The message says which key and why.
    let msg = tessera_cli::ErrorChain(&load_with("[policy]\nmin_cohort = 1\n").unwrap_err()).to_string();
    assert!(msg.contains("client.toml") && msg.contains("[policy]") && msg.contains("min_cohort = 1"), "{msg}");
}

#[test]
fn a_configuration_built_in_code_is_checked_by_the_daemons_builders() {
    let mut c = load_with("").unwrap();
    c.policy.min_cohort = 1;
    assert_eq!(c.validate(), Err(ConfigProblem::Policy(PolicyError::MinCohort(1))));
    let err = crate::daemon::participant(&c).err().expect("participant refuses");
    let err = tessera_cli::ErrorChain(err.as_ref()).to_string();
    assert!(err.contains("min_cohort"), "{err}");
    assert!(crate::daemon::tabular_model(&c).is_err());
}

#[test]
fn a_tabular_member_names_its_schema_and_fits_locally_only_without_privacy() {
    let problem = |data: &str, extra: &str| match load_with_data(data, extra) {
        Err(ConfigError::Invalid { source, .. }) => Some(source),
        Ok(_) => None,
        Err(other) => panic!("{}", tessera_cli::ErrorChain(&other)),
    };
    let privacy = "[privacy]\nepsilon = 1.0\n";
    // No schema at all: refused either way, and the message names the key.
    assert_eq!(problem("", ""), Some(ConfigProblem::SchemaMissing(false)));
    assert_eq!(problem("", privacy), Some(ConfigProblem::SchemaMissing(true)));
    let why = tessera_cli::ErrorChain(&load_with_data("", privacy).unwrap_err()).to_string();
    assert!(why.contains("[data] schema") && why.contains("[privacy]"), "{why}");
    assert!(ConfigProblem::SchemaMissing(false).to_string().contains("fit-locally"));
    // Fitting locally is an explicit opt-in, and never under [privacy].
    let fit = "schema = \"fit-locally\"\n";
    assert_eq!(problem(fit, ""), None);
    assert_eq!(problem(fit, privacy), Some(ConfigProblem::FitLocallyUnderPrivacy));
    // A declared schema (file or inline) is fine under [privacy] ...
    assert_eq!(problem("schema = \"s.toml\"\n", privacy), None);
    let inline = "[data.schema]\nfeatures = [{ type = \"numeric\", name = \"x\", min = 0.0, max = 1.0, \
                  center = 0.5, scale = 0.5 }]\n";
    let c = load_with_data("", &format!("{inline}{privacy}")).unwrap();
    assert!(matches!(&c.data.csv().unwrap().schema, Some(SchemaSource::Declared(s)) if s.width() == 1));
    // ... but not beside feature lists that could contradict it.
    let both = "schema = \"s.toml\"\ncategorical = [\"city\"]\n";
    assert_eq!(problem(both, ""), Some(ConfigProblem::SchemaConflict));
    // A configuration built in code is held to the same rules.
    let mut c = load_with(privacy).unwrap();
    if let DataConfig::Csv(d) = &mut c.data {
        d.schema = Some(SchemaSource::FitLocally);
    }
    assert_eq!(c.validate(), Err(ConfigProblem::FitLocallyUnderPrivacy));
    assert!(crate::daemon::tabular_model(&c).is_err());
}

/// `backend = "wgpu"` loads in a build with the GPU backend and is
/// refused, naming the feature and the command, in one without; the
/// CPU backends load in every build and anything else is a parse error.
#[test]
fn backend_key_chooses_the_backend_and_wgpu_needs_the_feature() {
    let load = |backend: &str| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        let text = format!(
            "backend = \"{backend}\"\n{PKI}[data]\npath = \"d.csv\"\nlabel = \"y\"\nschema = \"s.toml\"\n\
             [model]\nnum_features = 3\nnum_classes = 2\n"
        );
        std::fs::write(&p, text).unwrap();
        ClientConfig::load(&p)
    };
    assert_eq!(load("flex").unwrap().backend.compute(), Ok(ComputeBackend::Flex));
    assert_eq!(load("ndarray").unwrap().backend.compute(), Ok(ComputeBackend::NdArray));
    let built = std::hint::black_box(tessera_learn::WGPU_BUILT);
    match load("wgpu") {
        Ok(c) => {
            assert!(built);
            assert_eq!(c.backend, BackendChoice::Wgpu);
        }
        Err(ConfigError::Invalid { source: ConfigProblem::Backend(e), .. }) => {
            assert!(!built);
            let why = tessera_cli::ErrorChain(&ConfigProblem::Backend(e)).to_string();
            assert!(why.contains("tessera-learn/wgpu") && why.contains("cargo build"), "{why}");
        }
        Err(other) => panic!("{other}"),
    }
    let err = load("cuda").unwrap_err();
    assert!(matches!(&err, ConfigError::Parse { message, .. } if message.contains("backend")), "{err}");
    for b in [BackendChoice::Flex, BackendChoice::Ndarray, BackendChoice::Wgpu] {
        assert_eq!(b.name().parse::<BackendChoice>(), Ok(b));
    }
    assert!("gpu".parse::<BackendChoice>().is_err());
}

#[test]
fn seeded_randomness_is_refused_unless_the_build_allows_it() {
    let seeded = TestingSection { seeded_randomness: true };
    assert_eq!(seeded.validate(false), Err(ConfigProblem::SeededRandomnessRefused));
    assert_eq!(seeded.validate(true), Ok(()));
    assert_eq!(TestingSection::default().validate(false), Ok(()));
    let why = ConfigProblem::SeededRandomnessRefused.to_string();
    assert!(why.contains("seeded_randomness") && why.contains("test-seeded-randomness"), "{why}");
}

/// The release daemon (no test-only feature) refuses the key when it
/// loads the file. `cargo test --workspace` builds this crate with the
/// feature (the test crate's dev-dependency turns it on for the whole
/// build), so this runs under `cargo test -p tessera-client`; the
/// parameterised check above runs in every build, and
/// `tests/tests/dependency_edges.rs` checks that nothing else turns the
/// feature on.
#[cfg(not(feature = "test-seeded-randomness"))]
#[test]
fn release_build_refuses_seeded_randomness() {
    assert_eq!(invalid("[testing]\nseeded_randomness = true\n"), ConfigProblem::SeededRandomnessRefused);
    let mut c = load_with("").unwrap();
    c.testing.seeded_randomness = true;
    assert!(crate::daemon::participant(&c).is_err(), "a configuration built in code is refused too");
    assert!(load_with("[testing]\nseeded_randomness = false\n").is_ok());
}

/// A test build (the workspace's test crate) accepts the key.
#[cfg(feature = "test-seeded-randomness")]
#[test]
fn test_build_accepts_seeded_randomness() {
    assert!(load_with("[testing]\nseeded_randomness = true\n").unwrap().testing.seeded_randomness);
}

const PKI: &str = r#"
member = "hospital-b"
[aggregator]
address = "127.0.0.1:4433"
ca = "pki/ca.pem"
cert = "pki/hospital-b.pem"
key = "pki/hospital-b.key"
"#;

#[test]
fn image_data_and_model_sections_parse_and_build_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let fashion = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist");
    let p = dir.path().join("client.toml");
    let text = format!(
        r#"{PKI}
[data]
kind = "idx"
path = "{images}"
labels = "{labels}"
classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
per_class = 6
test = 0.5
split_seed = 3
[model]
kind = "efficientnet_lite0"
num_classes = 10
image_size = 32
backbone = "pretrained_if_present"
weights = "no-such-dir/weights.pth"
[model.augment]
horizontal_flip = true
"#,
        images = fashion.join("t10k-images-idx3-ubyte.gz").display(),
        labels = fashion.join("t10k-labels-idx1-ubyte.gz").display(),
    );
    std::fs::write(&p, &text).unwrap();
    let c = ClientConfig::load(&p).unwrap();
    let DataConfig::Images(d) = &c.data else { panic!("expected image data") };
    assert_eq!((d.kind, d.per_class, d.classes.len()), (ImageDataKind::Idx, Some(6), 10));
    let ModelSection::Vision(m) = &c.model else { panic!("expected an image model") };
    assert_eq!(m.weights.as_deref(), Some(dir.path().join("no-such-dir/weights.pth").as_path()));
    assert!(m.augment.as_ref().is_some_and(|a| a.horizontal_flip && a.rotation_degrees == 0.0));
    assert!(c.data.csv().is_err() && c.model.tabular().is_err());
    // The daemon's builder: a missing checkpoint falls back to the seeded random backbone here.
    let model = crate::daemon::vision_model(&c).unwrap();
    assert_eq!(model.num_train_examples(), 30);
    let layout = model.net().trainable_params().unwrap().layout();
    assert_eq!(layout.entries[0], ("head.weight".to_string(), vec![1280, 10]));
    // A tabular builder refuses image sections, and vice versa.
    assert!(crate::daemon::tabular_model(&c).is_err());

    // Folder data: class folders must match the configured classes.
    let root = dir.path().join("images");
    for (class, shade) in [("benign", 40u8), ("malignant", 200u8)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..4u8 {
            let img = image::GrayImage::from_pixel(12, 10, image::Luma([shade + i]));
            img.save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let folder = format!(
        "{PKI}\n[data]\nkind = \"image_folder\"\npath = \"images\"\nclasses = [\"benign\", \"malignant\"]\n\
         image_size = [8, 8]\nchannels = 1\n[model]\nkind = \"small_cnn\"\nnum_classes = 2\nimage_size = 8\n\
         input_channels = 1\n"
    );
    std::fs::write(&p, &folder).unwrap();
    let c = ClientConfig::load(&p).unwrap();
    let model = crate::daemon::vision_model(&c).unwrap();
    assert_eq!(model.num_train_examples(), 6);
    std::fs::write(&p, folder.replace("\"benign\", ", "\"healthy\", ")).unwrap();
    let err = crate::daemon::vision_model(&ClientConfig::load(&p).unwrap()).unwrap_err().to_string();
    assert!(err.contains("differ from the configured classes"), "{err}");

    // Mistakes name the section and the key.
    std::fs::write(&p, text.replace("kind = \"idx\"", "kind = \"tiff\"")).unwrap();
    let err = ClientConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("client.toml") && err.contains("[data]") && err.contains("tiff"), "{err}");
    std::fs::write(&p, text.replace("image_size = 32", "image_sise = 32")).unwrap();
    let err = ClientConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("[model]") && err.contains("image_sise"), "{err}");
    // `kind = "csv"` is the CSV section, spelled out.
    std::fs::write(
        &p,
        format!(
            "{PKI}[data]\nkind = \"csv\"\npath = \"d.csv\"\nlabel = \"y\"\nschema = \"fit-locally\"\n\
             [model]\nnum_features = 3\nnum_classes = 2\n"
        ),
    )
    .unwrap();
    assert_eq!(ClientConfig::load(&p).unwrap().data.csv().unwrap().label, "y");
}

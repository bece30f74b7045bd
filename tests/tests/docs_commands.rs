//! The documentation agrees with the binaries (#21): every `tessera-aggregator`,
//! `tessera-client` and `tessera-sim` command in a shell block of the README
//! and docs/*.md (and every `ExecStart=` in an `ini` block) is accepted by
//! the binary's own argument parser, so a renamed flag or subcommand fails
//! here until the docs follow. See `cli_check` for what `--help` appended
//! does and does not check.

mod cli_check;

use std::collections::BTreeSet;

use cli_check::{CommandLine, Origin, binary_of, check_all, markdown_commands, not_yet_shipped, repo_root};

fn documents() -> Vec<(String, String)> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn every_documented_command_line_is_accepted_by_its_binary() {
    let mut all = Vec::new();
    for (file, text) in documents() {
        let cmds = markdown_commands(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        check_all(&cmds, &not_yet_shipped(&text));
        all.extend(cmds);
    }
    // The extraction itself must keep finding the commands: a change to the
    // fences or to the extractor that silently found nothing would pass.
    let per_binary = |b: &str| all.iter().filter(|c| binary_of(&c.argv[0]) == Some(b)).count();
    for (b, at_least) in [("tessera-aggregator", 20), ("tessera-client", 5), ("tessera-sim", 10)] {
        assert!(per_binary(b) >= at_least, "only {} documented {b} command lines found", per_binary(b));
    }
    let guide: BTreeSet<String> =
        all.iter().filter(|c| c.origin.file == "docs/operator-guide.md").map(|c| c.argv[..2].join(" ")).collect();
    for expected in
        ["tessera-aggregator serve", "tessera-aggregator pki", "tessera-aggregator audit", "tessera-client run"]
    {
        assert!(guide.contains(expected), "the operator guide's `{expected}` lines were not found: {guide:?}");
    }
}

/// The checker itself: a renamed flag, an unknown subcommand and a bad
/// value are refused; the extractor finds commands behind `cargo run`,
/// `$B/`, `for … do`, `kubectl exec … --`, `podman run --name …` and
/// `<placeholders>`, and skips `install` and `systemctl`.
#[test]
fn the_checker_refuses_what_the_binaries_refuse() {
    let at = Origin { file: "inline".into(), line: 1 };
    let line = |s: &str| CommandLine { origin: at.clone(), argv: s.split_whitespace().map(String::from).collect() };
    let none = BTreeSet::new();
    assert!(cli_check::check(&line("tessera-aggregator serve --config a.toml"), &none).is_ok());
    assert!(cli_check::check(&line("tessera-aggregator serve --conf a.toml"), &none).is_err());
    assert!(cli_check::check(&line("tessera-client launch --config c.toml"), &none).is_err());
    assert!(cli_check::check(&line("tessera-sim run s.toml --transport carrier-pigeon"), &none).is_err());
    assert!(cli_check::check(&line("tessera-sim run s.toml extra.toml"), &none).is_err());
    // A not-yet-shipped marker accepts only the refusal of that subcommand.
    let pending = BTreeSet::from([("tessera-sim".to_owned(), "nonesuch".to_owned())]);
    assert!(cli_check::check(&line("tessera-sim nonesuch --members 0..4"), &pending).is_ok());
    let shipped = BTreeSet::from([("tessera-sim".to_owned(), "run".to_owned())]);
    let e = cli_check::check(&line("tessera-sim run s.toml"), &shipped).unwrap_err();
    assert!(e.contains("accepts `run` now"), "{e}");

    let md = "```sh\nB=$PWD/target/release\n\
              for m in a b; do $B/tessera-aggregator pki issue --dir pki --name $m; done\n\
              cargo run --release -p tessera-sim -- run s.toml --transport quic   # comment\n\
              tessera-aggregator pki revoke --dir pki --fingerprint <64 hex digits>\n\
              install -m 0755 target/release/tessera-client /usr/local/bin/\n\
              systemctl enable --now tessera-aggregator\n\
              kubectl exec deploy/tessera-aggregator -- tessera-aggregator status --state s.db\n\
              podman run --name tessera-client -v /d:/data:ro tessera:0.1.0 tessera-client egress --config c.toml\n\
              tessera-client run \\\n  --config c.toml\n```\n";
    let found: Vec<String> = markdown_commands("inline", md).unwrap().iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(
        found,
        [
            "$B/tessera-aggregator pki issue --dir pki --name $m",
            "tessera-sim run s.toml --transport quic",
            "tessera-aggregator pki revoke --dir pki --fingerprint PLACEHOLDER",
            "tessera-aggregator status --state s.db",
            "tessera-client egress --config c.toml",
            "tessera-client run --config c.toml",
        ]
    );
    // A binary named where the extractor cannot tell whether it runs: an error, not a skip.
    assert!(markdown_commands("inline", "```sh\nnohup tessera-client run --config c.toml\n```\n").is_err());
}

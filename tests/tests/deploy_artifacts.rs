//! `deploy/` (#20): every Kubernetes manifest, systemd unit, Slurm script and
//! the Containerfile parses, keeps the sandbox it promises, and runs only
//! command lines that the real binaries' argument parsers accept
//! (`cli_check`: the built binary with `--help` appended). Shell scripts
//! (Slurm, a container's `sh -c`) are run by the real shell with recording
//! stand-ins for the binaries, so their variables and arithmetic are
//! checked as written.

mod cli_check;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cli_check::{CommandLine, Origin, binary_of, check_all, not_yet_shipped, record_script, repo_root, shell_commands};
use serde::Deserialize;
use serde_norway::Value;

fn deploy_files(sub: &str, ext: &str) -> Vec<(String, String)> {
    let dir = repo_root().join("deploy").join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.{ext} in {}", dir.display());
    files.into_iter().map(|p| (format!("deploy/{sub}/{}", p.file_name().unwrap().display()), read(&p))).collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `--members A..B` ranges of one file's workers (one per array task or
/// completion index) tile `0..N` without gap or overlap: each index picks
/// its own contiguous range.
fn assert_member_ranges_tile(file: &str, cmds: &[CommandLine]) {
    let mut ranges: Vec<(u64, u64)> = cmds
        .iter()
        .filter_map(|c| c.argv.iter().position(|a| a == "--members").map(|i| &c.argv[i + 1]))
        .map(|r| {
            let (a, b) = r.split_once("..").unwrap_or_else(|| panic!("{file}: --members {r} is not A..B"));
            let number =
                |x: &str| x.parse().unwrap_or_else(|_| panic!("{file}: --members {r}: {x} is not a member number"));
            (number(a), number(b))
        })
        .collect();
    ranges.sort();
    let mut next = 0;
    for (a, b) in &ranges {
        assert!(*a == next && b > a, "{file}: member ranges {ranges:?} do not tile 0..N");
        next = *b;
    }
}

/// Files a command line names exist in the repository: scenarios relative to
/// the repository root, and the image's `/usr/share/tessera/<path>` copies.
fn assert_referenced_files_exist(cmds: &[CommandLine]) {
    for c in cmds {
        for w in &c.argv[1..] {
            let rel =
                w.strip_prefix("/usr/share/tessera/").or((w.ends_with(".toml") && !w.starts_with('/')).then_some(w));
            if let Some(rel) = rel {
                assert!(
                    repo_root().join(rel).exists(),
                    "{}: {w} names {rel}, which is not in the repository",
                    c.origin
                );
            }
        }
    }
}

// ---------------------------------------------------------------- Kubernetes

fn yaml_documents(file: &str, text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .inspect(|v| {
            assert!(
                v["apiVersion"].is_string() && v["kind"].is_string(),
                "{file}: a document without apiVersion and kind"
            )
        })
        .collect()
}

fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(&doc["spec"]["template"]["spec"]),
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        "Pod" => Some(&doc["spec"]),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(|x| x.as_str().expect("a string").to_owned()).collect()).unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().or(v["name"].as_str()).unwrap_or("?")
}

/// An image reference with an explicit tag other than `latest`, or a digest.
fn pinned(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    image.contains("@sha256:") || last.split_once(':').is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest")
}

/// The sandbox every container keeps; `Err` names what is missing.
fn check_container_sandbox(pod: &Value, c: &Value) -> Result<(), String> {
    let (psc, sc) = (&pod["securityContext"], &c["securityContext"]);
    let non_root = sc["runAsNonRoot"].as_bool().or(psc["runAsNonRoot"].as_bool()) == Some(true);
    let uid = sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64());
    if !non_root || uid == Some(0) {
        return Err("runAsNonRoot: true (and no runAsUser 0)".into());
    }
    if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
        return Err("readOnlyRootFilesystem: true".into());
    }
    if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
        return Err("allowPrivilegeEscalation: false".into());
    }
    if !strings(&sc["capabilities"]["drop"]).iter().any(|x| x == "ALL") {
        return Err("capabilities: { drop: [ALL] }".into());
    }
    let image = c["image"].as_str().unwrap_or("");
    if !pinned(image) {
        return Err(format!("an image with an explicit tag other than latest (got {image:?})"));
    }
    // Configuration and secrets are mounted read-only, explicitly.
    let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let v = volumes.iter().find(|v| v["name"] == m["name"]).ok_or(format!("a volume named {}", name(m)))?;
        let config = ["configMap", "secret", "projected"].iter().any(|k| !v[*k].is_null());
        if config && m["readOnly"].as_bool() != Some(true) {
            return Err(format!("readOnly: true on the mount of {}", name(m)));
        }
    }
    Ok(())
}

/// The command lines a container runs: its `command` + `args`, or, for a
/// `sh -c` script, what the script runs (for each completion index of an
/// Indexed Job).
fn container_commands(doc: &Value, c: &Value, origin: &Origin) -> Vec<CommandLine> {
    let argv: Vec<String> = strings(&c["command"]).into_iter().chain(strings(&c["args"])).collect();
    assert!(!argv.is_empty(), "{origin}: container {} relies on the image's CMD; name the command", name(c));
    let shell = argv[0].rsplit('/').next().unwrap();
    if !(["sh", "bash"].contains(&shell) && argv.get(1).is_some_and(|a| a == "-c")) {
        assert!(
            binary_of(&argv[0]).is_some(),
            "{origin}: container {} runs {:?}, not a Tessera binary",
            name(c),
            argv[0]
        );
        return vec![CommandLine { origin: origin.clone(), argv }];
    }
    let mut env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    let indexed = doc["spec"]["completionMode"].as_str() == Some("Indexed");
    let indices = if indexed { doc["spec"]["completions"].as_u64().expect("completions") } else { 1 };
    let work = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for i in 0..indices {
        if indexed {
            env.retain(|(k, _)| k != "JOB_COMPLETION_INDEX");
            env.push(("JOB_COMPLETION_INDEX".into(), i.to_string()));
        }
        out.extend(record_script(&argv[0], &argv[2], &env, work.path(), origin));
    }
    assert!(!out.is_empty(), "{origin}: the script of container {} runs no Tessera binary", name(c));
    out
}

/// Every manifest parses, every container keeps the sandbox, and every
/// command line is accepted (or, where marked, refused as not yet shipped).
#[test]
fn kubernetes_manifests_keep_the_sandbox_and_run_accepted_command_lines() {
    let mut seen = BTreeSet::new();
    for (file, text) in deploy_files("kubernetes", "yaml") {
        let mut cmds = Vec::new();
        for doc in yaml_documents(&file, &text) {
            let Some(pod) = pod_spec(&doc) else { continue };
            let containers = pod["containers"].as_sequence().expect("containers");
            for c in containers.iter().chain(pod["initContainers"].as_sequence().into_iter().flatten()) {
                let origin =
                    Origin { file: format!("{file} ({} {})", doc["kind"].as_str().unwrap(), name(&doc)), line: 0 };
                if let Err(missing) = check_container_sandbox(pod, c) {
                    panic!("{origin}: container {} lacks {missing}", name(c));
                }
                cmds.extend(container_commands(&doc, c, &origin));
            }
        }
        assert_referenced_files_exist(&cmds);
        assert_member_ranges_tile(&file, &cmds);
        check_all(&cmds, &not_yet_shipped(&text));
        seen.extend(cmds.iter().map(|c| format!("{} {}", c.argv[0], c.argv[1])));
    }
    for expected in ["tessera-aggregator serve", "tessera-sim run", "tessera-sim worker"] {
        assert!(seen.contains(expected), "no manifest runs `{expected}` (saw {seen:?})");
    }
}

/// The aggregator's Deployment: one replica replaced by Recreate (the state
/// database is single-instance), a UDP Service, the PKI from a Secret, and a
/// configuration the daemon's own loader accepts whose state lives on the
/// persistent volume.
#[test]
fn the_aggregator_runs_once_from_its_secret_pki_with_state_on_the_volume() {
    let text = read(&repo_root().join("deploy/kubernetes/aggregator.yaml"));
    let docs = yaml_documents("aggregator.yaml", &text);
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(k));
    let dep = of_kind("Deployment").next().expect("a Deployment");
    assert_eq!(dep["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(dep["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
    let pod = pod_spec(dep).unwrap();
    let c = &pod["containers"][0];
    let argv: Vec<String> = strings(&c["command"]).into_iter().chain(strings(&c["args"])).collect();
    assert_eq!(&argv[..2], ["tessera-aggregator", "serve"]);
    let config = &argv[argv.iter().position(|a| a == "--config").expect("--config") + 1];

    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume = |mount: &Value| volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount_at = |path: &str| mounts.iter().find(|m| m["mountPath"].as_str() == Some(path));

    // The configuration file comes from the ConfigMap in this file.
    let m = mount_at(config).expect("a mount at the --config path");
    let map_name = volume(m)["configMap"]["name"].as_str().expect("the config from a ConfigMap");
    let map = of_kind("ConfigMap").find(|d| name(d) == map_name).expect("the ConfigMap in this file");
    let key = m["subPath"].as_str().expect("subPath");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregator.toml");
    std::fs::write(&path, map["data"][key].as_str().expect("the configuration text")).unwrap();
    let cfg = tessera_aggregator::AggregatorConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));

    // State and run directory on the persistent volume, the only writable mount
    // besides /tmp.
    let writable: Vec<&str> = mounts
        .iter()
        .filter(|m| !volume(m)["persistentVolumeClaim"].is_null())
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for p in [cfg.state_path(), cfg.server.run_dir.clone()] {
        assert!(
            writable.iter().any(|w| p.starts_with(w)),
            "{} is not on a persistent volume {writable:?}",
            p.display()
        );
    }
    // The PKI directory is a read-only mount holding the Secret.
    let pki = mount_at(cfg.server.pki_dir.to_str().unwrap()).expect("a mount at [server] pki_dir");
    let sources = volume(pki)["projected"]["sources"].as_sequence().expect("a projected volume");
    assert!(sources.iter().any(|s| !s["secret"].is_null()), "pki_dir holds no Secret");

    // Members reach it over UDP on the port it listens on.
    let port = cfg.server.listen.port() as u64;
    let named = c["ports"].as_sequence().unwrap().iter().find(|p| p["containerPort"].as_u64() == Some(port));
    let named = named.expect("a container port for [server] listen");
    assert_eq!(named["protocol"].as_str(), Some("UDP"));
    let labels = &pod_template_labels(dep);
    let svc = of_kind("Service").find(|s| selects(s, labels) && udp_to(s, named)).expect("a UDP Service for QUIC");
    assert_ne!(svc["spec"]["type"].as_str(), Some("ClusterIP"), "members are outside the cluster");
}

fn pod_template_labels(dep: &Value) -> BTreeMap<String, String> {
    let m = dep["spec"]["template"]["metadata"]["labels"].as_mapping().expect("pod labels");
    m.iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v.as_str().unwrap().to_owned())).collect()
}

fn selects(svc: &Value, labels: &BTreeMap<String, String>) -> bool {
    let sel = svc["spec"]["selector"].as_mapping().expect("a selector");
    sel.iter().all(|(k, v)| labels.get(k.as_str().unwrap()).map(String::as_str) == v.as_str())
}

fn udp_to(svc: &Value, port: &Value) -> bool {
    svc["spec"]["ports"].as_sequence().into_iter().flatten().any(|p| {
        p["protocol"].as_str() == Some("UDP")
            && (p["targetPort"] == port["name"] || p["targetPort"].as_u64() == port["containerPort"].as_u64())
    })
}

// ------------------------------------------------------------------- systemd

/// A unit file as section -> (key, value) in order; repeated keys kept.
fn parse_unit(file: &str, text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = Some(s.to_owned());
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{file}:{}: not `Key=Value`: {line}", i + 1));
        let s = section.clone().unwrap_or_else(|| panic!("{file}:{}: a key before any section", i + 1));
        out.entry(s).or_default().push((k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

fn values<'a>(section: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    section.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

fn yes(v: Option<&&str>) -> bool {
    v.is_some_and(|v| ["yes", "true", "on", "1"].contains(v))
}

/// Each unit runs a dedicated user in the sandbox #20 asks for, restarts on
/// failure, keeps its configuration (and the member's data) read-only, and
/// runs a command line the binary accepts.
#[test]
fn systemd_units_are_sandboxed_and_run_accepted_command_lines() {
    let units = deploy_files("systemd", "service");
    let mut cmds = Vec::new();
    for (file, text) in &units {
        let unit = parse_unit(file, text);
        let svc = unit.get("Service").unwrap_or_else(|| panic!("{file}: no [Service]"));
        let one = |k: &str| values(svc, k).last().copied();
        let user = one("User").unwrap_or_else(|| panic!("{file}: no User="));
        assert!(!["root", "0"].contains(&user), "{file}: runs as {user}");
        assert_eq!(one("Restart"), Some("on-failure"), "{file}");
        assert!(yes(values(svc, "NoNewPrivileges").last()), "{file}: NoNewPrivileges=yes");
        assert_eq!(one("ProtectSystem"), Some("strict"), "{file}");
        assert!(yes(values(svc, "ProtectHome").last()), "{file}: ProtectHome=yes");
        assert!(yes(values(svc, "PrivateTmp").last()), "{file}: PrivateTmp=yes");
        let families: BTreeSet<&str> =
            values(svc, "RestrictAddressFamilies").into_iter().flat_map(|v| v.split(' ')).collect();
        assert_eq!(families, BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]), "{file}");
        let read_only: Vec<&str> =
            values(svc, "ReadOnlyPaths").into_iter().flat_map(|v| v.split_whitespace()).collect();
        assert!(!read_only.is_empty(), "{file}: ReadOnlyPaths=");
        assert!(
            one("StateDirectory").is_some() || one("ReadWritePaths").is_some(),
            "{file}: no writable state directory"
        );

        let exec = values(svc, "ExecStart");
        assert_eq!(exec.len(), 1, "{file}: one ExecStart=");
        let line = text.lines().position(|l| l.starts_with("ExecStart=")).unwrap() + 1;
        let origin = Origin { file: file.clone(), line };
        let found = shell_commands(exec[0].trim_start_matches(['-', '@', ':', '+', '!']), &origin).unwrap();
        assert_eq!(found.len(), 1, "{origin}: ExecStart= runs one Tessera binary");
        let argv = &found[0].argv;
        let config = &argv[argv.iter().position(|a| a == "--config").expect("--config") + 1];
        assert!(read_only.iter().any(|p| config.starts_with(p)), "{origin}: {config} is not under ReadOnlyPaths=");
        if argv[0].ends_with("tessera-client") {
            assert!(
                read_only.iter().any(|p| !config.starts_with(p)),
                "{file}: the member's data is not in ReadOnlyPaths="
            );
        }
        cmds.extend(found);
    }
    let run: BTreeSet<&str> = cmds.iter().map(|c| binary_of(&c.argv[0]).unwrap()).collect();
    assert_eq!(run, BTreeSet::from(["tessera-aggregator", "tessera-client"]), "a unit for each daemon");
    check_all(&cmds, &BTreeSet::new());
}

/// docs/operator-guide.md quotes each unit file whole, so the two cannot
/// drift apart.
#[test]
fn the_operator_guide_quotes_the_systemd_units_verbatim() {
    let guide = read(&repo_root().join("docs/operator-guide.md"));
    for (file, text) in deploy_files("systemd", "service") {
        assert!(guide.contains(&format!("```ini\n{text}```")), "docs/operator-guide.md does not quote {file} verbatim");
    }
}

// --------------------------------------------------------------------- Slurm

fn sbatch_option<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix("#SBATCH ")?.trim().strip_prefix(key)?.strip_prefix('='))
}

/// Each batch script, run by bash for every task of its array with the
/// environment Slurm gives it, runs only accepted command lines.
#[test]
fn slurm_scripts_run_accepted_command_lines() {
    let mut seen = BTreeSet::new();
    for (file, text) in deploy_files("slurm", "sbatch") {
        assert!(text.starts_with("#!/bin/bash\n"), "{file}: starts with #!/bin/bash");
        assert!(text.contains("\nset -euo pipefail\n"), "{file}: set -euo pipefail");
        let array = sbatch_option(&text, "--array").unwrap_or("0-0");
        let (first, last) = array.split_once('-').expect("--array=A-B");
        let (first, last): (u32, u32) = (first.parse().unwrap(), last.parse().unwrap());
        let work = tempfile::tempdir().unwrap();
        let mut cmds = Vec::new();
        for task in first..=last {
            let env: Vec<(String, String)> = [
                ("SLURM_ARRAY_JOB_ID", "4242".to_owned()),
                ("SLURM_ARRAY_TASK_ID", task.to_string()),
                ("SLURM_ARRAY_TASK_COUNT", (last - first + 1).to_string()),
                ("SLURM_JOB_ID", (4242 + task).to_string()),
                ("SLURM_SUBMIT_DIR", work.path().display().to_string()),
                ("SLURM_CPUS_PER_TASK", sbatch_option(&text, "--cpus-per-task").unwrap_or("1").to_owned()),
                ("SLURMD_NODENAME", format!("node{task:03}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let origin = Origin { file: format!("{file} (array task {task})"), line: 0 };
            let found = record_script("bash", &text, &env, work.path(), &origin);
            assert!(!found.is_empty(), "{origin}: runs no Tessera binary");
            cmds.extend(found);
        }
        // Scenario paths are relative to the submit directory, the repository root.
        assert_referenced_files_exist(&cmds);
        assert_member_ranges_tile(&file, &cmds);
        check_all(&cmds, &not_yet_shipped(&text));
        seen.extend(cmds.iter().map(|c| format!("{} {}", c.argv[0], c.argv[1])));
    }
    for expected in ["tessera-sim run", "tessera-sim worker", "tessera-sim coordinator"] {
        assert!(seen.contains(expected), "no Slurm script runs `{expected}` (saw {seen:?})");
    }
}

// ---------------------------------------------------------------- Containerfile

/// The image builds the three binaries with the locked dependencies from
/// pinned base images, runs as a numeric non-root user, declares its one
/// writable volume, finds weights through TESSERA_WEIGHTS_DIR, and its
/// default command is accepted.
#[test]
fn the_containerfile_builds_the_three_binaries_and_runs_as_a_non_root_user() {
    let text = read(&repo_root().join("deploy/Containerfile"));
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let mut args = BTreeMap::new();
    let mut stages = 0;
    let (mut user, mut build_run, mut volume, mut weights, mut cmd) = (None, String::new(), String::new(), false, None);
    for (op, rest) in &instructions {
        match op.as_str() {
            "ARG" => {
                if let Some((k, v)) = rest.split_once('=') {
                    args.insert(format!("${{{k}}}"), v.to_owned());
                }
            }
            "FROM" => {
                stages += 1;
                user = None;
                let image =
                    args.iter().fold(rest.split_whitespace().next().unwrap().to_owned(), |s, (k, v)| s.replace(k, v));
                assert!(pinned(&image), "FROM {image}: pin a tag other than latest");
            }
            "RUN" if rest.contains("cargo build") => build_run = rest.clone(),
            "USER" => user = Some(rest.clone()),
            "VOLUME" => volume.push_str(rest),
            "ENV" => weights |= rest.contains("TESSERA_WEIGHTS_DIR="),
            "CMD" => cmd = Some(serde_json::from_str::<Vec<String>>(rest).expect("CMD in exec form")),
            "COPY" if !rest.starts_with("--from") => {
                let src = rest.split_whitespace().next().unwrap();
                assert!(src == "." || repo_root().join(src).exists(), "COPY {src}: not in the repository");
            }
            _ => {}
        }
    }
    assert!(stages >= 2, "a multi-stage build");
    assert!(build_run.contains("cargo build --release --locked"), "the build runs `cargo build --release --locked`");
    for b in cli_check::BINARIES {
        assert!(build_run.contains(&format!("-p {b}")), "the build stage builds {b}");
    }
    let user = user.expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}: a numeric non-root user (runAsNonRoot checks it)");
    assert!(volume.contains("/var/lib/tessera"), "VOLUME /var/lib/tessera");
    assert!(weights, "ENV TESSERA_WEIGHTS_DIR");
    let cmd = CommandLine { origin: Origin { file: "deploy/Containerfile".into(), line: 0 }, argv: cmd.expect("CMD") };
    check_all(&[cmd], &BTreeSet::new());
}

//! Command lines written down outside the code (documentation, deployment
//! files) checked against the real binaries' own argument parsers.
//!
//! Each command line runs as the built binary with `--help` appended. clap
//! reads the arguments left to right and acts on `--help` only when it gets
//! there, so everything before it is still checked: the subcommand path, every
//! flag name, the number of positional arguments, and the values of typed
//! flags (`--transport bogus` is refused). A renamed or removed flag or
//! subcommand therefore fails. What `--help` does not check: missing required
//! flags and conflicting flags (clap validates those after parsing, and help
//! ends parsing first). Running without `--help` would start the daemons.
//!
//! A file may declare subcommands that are designed but not shipped yet with
//! a line `tessera:not-yet-shipped: tessera-sim worker, tessera-sim coordinator`.
//! Their command lines must then be refused as an unrecognized subcommand;
//! once the binary accepts them the check fails, so the marker (and the
//! caveat next to it) cannot outlive the feature.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Held while writing an executable and while spawning a process. A child
/// forked while another thread has a stand-in script open for writing
/// inherits that descriptor until it execs, and executing the script then
/// fails with "Text file busy" (ETXTBSY); tests run on parallel threads.
static FORK: Mutex<()> = Mutex::new(());

/// The binaries whose command lines are checked.
pub const BINARIES: [&str; 3] = ["tessera-aggregator", "tessera-client", "tessera-sim"];

/// The repository root (the tests crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// The binary a shell word names (`/usr/local/bin/tessera-sim`, `$B/tessera-client`).
pub fn binary_of(word: &str) -> Option<&'static str> {
    let base = word.rsplit('/').next().unwrap_or(word);
    BINARIES.into_iter().find(|b| *b == base)
}

/// Where a command line was written, for messages (line 0: no line).
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}", self.file),
            n => write!(f, "{}:{n}", self.file),
        }
    }
}

/// One command line: the binary's name, then its arguments.
#[derive(Clone, Debug)]
pub struct CommandLine {
    pub origin: Origin,
    pub argv: Vec<String>,
}

/// `(binary, subcommand)` pairs a file declares as not shipped yet.
pub fn not_yet_shipped(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("tessera:not-yet-shipped:") else { continue };
        let rest = rest.split("-->").next().unwrap_or("");
        for item in rest.split(',') {
            let words: Vec<&str> = item.split_whitespace().collect();
            assert!(words.len() == 2 && binary_of(words[0]).is_some(), "malformed not-yet-shipped entry {item:?}");
            out.insert((words[0].to_owned(), words[1].to_owned()));
        }
    }
    out
}

/// Run `cmd` through its binary with `--help` appended; `Err` says why it
/// is wrong, naming where it was written.
pub fn check(cmd: &CommandLine, pending: &BTreeSet<(String, String)>) -> Result<(), String> {
    let name =
        binary_of(&cmd.argv[0]).ok_or_else(|| format!("{}: {:?} is not a Tessera binary", cmd.origin, cmd.argv))?;
    let args = &cmd.argv[1..];
    let mut command = Command::new(binary_path(name));
    command.args(args).arg("--help").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        command.spawn().map_err(|e| format!("{}: cannot run {name}: {e}", cmd.origin))?
    };
    let out = child.wait_with_output().map_err(|e| format!("{}: {name}: {e}", cmd.origin))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("{name} {}", args.join(" "));
    let sub = args.first().cloned().unwrap_or_default();
    if pending.contains(&(name.to_owned(), sub.clone())) {
        let refused = format!("unrecognized subcommand '{sub}'");
        return match (out.status.success(), stderr.contains(&refused)) {
            (false, true) => Ok(()),
            (true, _) => Err(format!(
                "{}: `{shown}` is marked not-yet-shipped, but {name} accepts `{sub}` now: remove the \
                 tessera:not-yet-shipped marker and its caveats, and check these flags against the shipped ones",
                cmd.origin
            )),
            (false, false) => Err(format!(
                "{}: `{shown}` (marked not-yet-shipped) was refused, but not as an unknown subcommand; \
                 `{sub}` seems to exist now with other arguments:\n{stderr}",
                cmd.origin
            )),
        };
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: `{shown}` is refused by {name}'s argument parser:\n{stderr}", cmd.origin))
    }
}

/// Check every command line; panics listing all failures at once.
pub fn check_all(cmds: &[CommandLine], pending: &BTreeSet<(String, String)>) {
    let failures: Vec<String> = cmds.iter().filter_map(|c| check(c, pending).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} command lines fail:\n\n{}",
        failures.len(),
        cmds.len(),
        failures.join("\n\n")
    );
}

fn binary_path(name: &str) -> PathBuf {
    // As common::daemon_binary (not imported: that module pulls in the whole
    // consortium harness): `TESSERA_DAEMON_DIR` first, for worktrees that
    // share one target directory, else target/<profile>/deps/<test> ->
    // target/<profile>/<name>.
    if let Some(dir) = std::env::var_os("TESSERA_DAEMON_DIR") {
        let p = PathBuf::from(dir).join(name);
        assert!(p.is_file(), "{} is not there (TESSERA_DAEMON_DIR)", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe.parent().and_then(Path::parent).expect("target directory").join(name);
    assert!(p.is_file(), "{} is not built; run `cargo test --workspace`", p.display());
    p
}

/// Commands that name a Tessera binary without running it (installing,
/// managing a unit, building): skipped, not checked.
const NOT_INVOKING: [&str; 9] = ["install", "systemctl", "journalctl", "cp", "ls", "which", "chmod", "chown", "kill"];
/// Commands that run the Tessera binary named later on their line.
const WRAPPERS: [&str; 9] = ["time", "exec", "srun", "sudo", "podman", "docker", "kubectl", "apptainer", "env"];

/// The Tessera command lines in one shell line (comments, `;`, `&&`, `|`
/// and `do` handled; `<placeholders>` become a plain word). `Err` for a
/// line that names a binary in a way this extractor does not know, so that
/// nothing is skipped silently.
pub fn shell_commands(line: &str, origin: &Origin) -> Result<Vec<CommandLine>, String> {
    let line = replace_placeholders(line);
    let mut out = Vec::new();
    for segment in split_segments(&line) {
        let words = shlex::split(&segment).ok_or_else(|| format!("{origin}: unbalanced quotes in {segment:?}"))?;
        let words: Vec<String> = words
            .into_iter()
            .skip_while(|w| ["do", "then", "else", "!"].contains(&w.as_str()) || is_assignment(w))
            .collect();
        let head = words.first().map_or("", |w| w.rsplit('/').next().unwrap_or(""));
        // The command a wrapper runs follows its `--` if it has one
        // (`kubectl exec deploy/tessera-aggregator -- tessera-aggregator …`),
        // and a binary's name right after an option is that option's value
        // (`podman run --name tessera-client … IMAGE tessera-client run …`).
        let wrapper = WRAPPERS.contains(&head);
        let from = if wrapper { words.iter().position(|w| w == "--").map_or(0, |i| i + 1) } else { 0 };
        let option_value =
            |i: usize| wrapper && i > from && words[i - 1].starts_with('-') && !words[i - 1].contains('=');
        let Some(at) = (from..words.len()).find(|&i| binary_of(&words[i]).is_some() && !option_value(i)) else {
            continue;
        };
        let argv = if at == 0 || WRAPPERS.contains(&head) {
            words[at..].to_vec()
        } else if head == "cargo" && words.get(1).is_some_and(|w| w == "run") {
            let bin = binary_of(&words[at]).expect("a binary");
            let rest = words.iter().position(|w| w == "--").map_or(&[][..], |i| &words[i + 1..]);
            std::iter::once(bin.to_owned()).chain(rest.iter().cloned()).collect()
        } else if head == "cargo" || NOT_INVOKING.contains(&head) {
            continue;
        } else {
            return Err(format!("{origin}: {segment:?} names a Tessera binary in a way the check does not know"));
        };
        out.push(CommandLine { origin: origin.clone(), argv });
    }
    Ok(out)
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// `<the 64 hex digits>` -> `PLACEHOLDER` (docs mark what the reader fills in so).
fn replace_placeholders(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('<') {
        match rest[start..].find('>') {
            Some(len) if !rest[start + 1..start + len].contains('<') => {
                out.push_str(&rest[..start]);
                out.push_str("PLACEHOLDER");
                rest = &rest[start + len + 1..];
            }
            _ => break,
        }
    }
    out.push_str(rest);
    out
}

/// Split a line at unquoted `;`, `&&`, `||`, `|` and `&`, dropping a
/// `#` comment (a `#` that starts a word).
fn split_segments(line: &str) -> Vec<String> {
    let (mut segments, mut cur) = (Vec::new(), String::new());
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for c in line.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => break,
            ';' | '|' | '&' if !single && !double => {
                segments.push(std::mem::take(&mut cur));
                prev = ' ';
                continue;
            }
            _ => {}
        }
        cur.push(c);
        prev = c;
    }
    segments.push(cur);
    segments.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Shell command lines of a fenced-code-block document (Markdown): every
/// line of `sh`/`bash`/`shell`/`console`/unlabelled blocks, continuation
/// lines joined, and `ExecStart=` of `ini` blocks.
pub fn markdown_commands(file: &str, text: &str) -> Result<Vec<CommandLine>, String> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            fence = if fence.is_some() { None } else { Some(lang.trim().to_owned()) };
            continue;
        }
        let Some(lang) = fence.as_deref() else { continue };
        let origin = Origin { file: file.to_owned(), line: i + 1 };
        match lang {
            "" | "sh" | "bash" | "shell" | "console" => {
                let body = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
                let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
                if let Some(head) = body.strip_suffix('\\') {
                    joined.push_str(head);
                    pending = Some((start, joined));
                    continue;
                }
                joined.push_str(body);
                out.extend(shell_commands(&joined, &Origin { line: start, ..origin })?);
            }
            "ini" => {
                if let Some(cmd) = trimmed.strip_prefix("ExecStart=") {
                    out.extend(shell_commands(cmd.trim_start_matches(['-', '@', ':', '+', '!']), &origin)?);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Run `interpreter -c script` in `work` the way a scheduler would, with
/// `env` set and every Tessera binary (and `srun`) replaced by a recording
/// stand-in on PATH; returns the command lines the script ran, each once.
/// Variables, arithmetic and quoting are the real shell's.
pub fn record_script(
    interpreter: &str,
    script: &str,
    env: &[(String, String)],
    work: &Path,
    origin: &Origin,
) -> Vec<CommandLine> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (bin, calls) = (dir.path().join("bin"), dir.path().join("calls"));
    for d in [&bin, &calls] {
        std::fs::create_dir_all(d).unwrap();
    }
    let record = "#!/bin/sh\nf=$(mktemp \"$TESSERA_SHIM_CALLS/call.XXXXXX\")\n\
                  { printf '%s\\0' \"$(basename \"$0\")\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done; } > \"$f\"\n";
    // srun's options are written `--key=value` in our scripts; drop them and run the step.
    let srun = "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -*) shift ;; *) break ;; esac; done\nexec \"$@\"\n";
    {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        for (name, body) in BINARIES.iter().map(|b| (*b, record)).chain([("srun", srun)]) {
            let p = bin.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new(interpreter);
    command
        .arg("-c")
        .arg(script)
        .arg(interpreter)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", path)
        .env("TESSERA_SHIM_CALLS", &calls)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        command.spawn().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("{origin}: the script did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{origin}: the script failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&calls).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        // Each word ends with a NUL, so the split leaves an empty last piece.
        let mut argv: Vec<String> = bytes.split(|b| *b == 0).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
        argv.pop();
        seen.insert(argv);
    }
    seen.into_iter().map(|argv| CommandLine { origin: origin.clone(), argv }).collect()
}

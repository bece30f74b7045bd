//! Where the pretrained EfficientNet-Lite0 checkpoint is found, at run time.
//!
//! An installed binary (`cargo install`, a package, a copy on another
//! machine) has no build tree, so no path is compiled in. The search order,
//! first match wins:
//!
//! 1. the `[model] weights` path, when the configuration names one (then
//!    only that file: an explicit path is never second-guessed; see
//!    [`crate::weights_path`]);
//! 2. `$TESSERA_WEIGHTS_DIR/<file>`;
//! 3. `./.weights/<file>`, relative to the working directory (where
//!    `scripts/fetch-weights.sh` puts it when run from the repository root);
//! 4. the platform data directory: `$XDG_DATA_HOME/tessera/weights/<file>`,
//!    or `~/.local/share/tessera/weights/<file>` when `XDG_DATA_HOME` is
//!    unset or relative (the XDG base directory rules).
//!
//! `<file>` is [`WEIGHTS_FILE`]. The workspace's `.cargo/config.toml` sets
//! `TESSERA_WEIGHTS_DIR` to the repository's `.weights/` for `cargo test`
//! and `cargo run`, whose working directories differ (a crate's folder for
//! its tests).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::VisionError;

/// File name of the pretrained weights installed by `scripts/fetch-weights.sh`.
pub const WEIGHTS_FILE: &str = "efficientnet-lite0-57934424.pth";

/// Every place the checkpoint is looked for, in order (absolute paths when
/// the working directory is known); steps 2-4 of the module's search order.
pub fn weights_search_path() -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    candidates(|k| std::env::var_os(k), &cwd)
}

/// The first place in [`weights_search_path`] that holds the checkpoint,
/// or, when none does, the first place searched (so a caller that only
/// checks `is_file()` gets a sensible path to name). Use [`find_weights`]
/// for an error that lists every place searched.
pub fn default_weights_path() -> PathBuf {
    let places = weights_search_path();
    places.iter().find(|p| p.is_file()).unwrap_or(&places[0]).clone()
}

/// The checkpoint's path, or [`VisionError::WeightsNotFound`] listing every
/// place searched.
pub fn find_weights() -> Result<PathBuf, VisionError> {
    let searched = weights_search_path();
    match searched.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(VisionError::WeightsNotFound { searched }),
    }
}

/// The search order over an environment `env` and working directory `cwd`.
fn candidates(env: impl Fn(&str) -> Option<OsString>, cwd: &Path) -> Vec<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut dirs = Vec::new();
    if let Some(dir) = set("TESSERA_WEIGHTS_DIR") {
        dirs.push(cwd.join(dir));
    }
    dirs.push(cwd.join(".weights"));
    let data = set("XDG_DATA_HOME").filter(|d| d.is_absolute()).or_else(|| set("HOME").map(|h| h.join(".local/share")));
    if let Some(data) = data {
        dirs.push(data.join("tessera/weights"));
    }
    dirs.into_iter().map(|d| d.join(WEIGHTS_FILE)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn search_order_is_env_then_working_directory_then_xdg_data() {
        let cwd = Path::new("/srv/member");
        let f = |d: &str| PathBuf::from(d).join(WEIGHTS_FILE);
        let all = [("TESSERA_WEIGHTS_DIR", "/opt/w"), ("XDG_DATA_HOME", "/data"), ("HOME", "/home/op")];
        assert_eq!(
            candidates(env(&all), cwd),
            vec![f("/opt/w"), f("/srv/member/.weights"), f("/data/tessera/weights")]
        );
        // A relative TESSERA_WEIGHTS_DIR is taken from the working directory.
        assert_eq!(candidates(env(&[("TESSERA_WEIGHTS_DIR", "w")]), cwd)[0], f("/srv/member/w"));
        // No XDG_DATA_HOME (or a relative one, which XDG says to ignore): ~/.local/share.
        let home = [("HOME", "/home/op"), ("XDG_DATA_HOME", "rel")];
        assert_eq!(
            candidates(env(&home), cwd),
            vec![f("/srv/member/.weights"), f("/home/op/.local/share/tessera/weights")]
        );
        // Nothing set: the working directory only; never a build-tree path.
        assert_eq!(candidates(env(&[]), cwd), vec![f("/srv/member/.weights")]);
    }

    #[test]
    fn not_found_lists_every_place_searched() {
        let err = VisionError::WeightsNotFound { searched: vec![PathBuf::from("/a/x.pth"), PathBuf::from("/b/x.pth")] };
        let msg = err.to_string();
        assert!(msg.contains("/a/x.pth") && msg.contains("/b/x.pth"), "{msg}");
        assert!(msg.contains("TESSERA_WEIGHTS_DIR"), "{msg}");
    }
}

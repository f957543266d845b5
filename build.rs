//! Build script: names the commit the binary is built from, for `edgepin --version`,
//! `/health`, the stats page and `edgepin_process_build_info`.
//!
//! `EDGEPIN_COMMIT` in the environment wins (a build from a source tarball can say which
//! commit it is); otherwise `git rev-parse` in the source tree; outside git, `unknown`.
//! Cargo reruns this only when HEAD or the checked-out branch moves, so a commit costs one
//! rebuild of the package and an ordinary edit none.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Paths whose change means another commit is checked out: HEAD (a detached HEAD holds
/// the commit), packed-refs, and the branch's ref file — or, while the branch is only in
/// packed-refs (a fresh clone), the directory its ref file will be written to. Only
/// paths that exist: cargo reruns every build for a missing one.
fn watched() -> Vec<PathBuf> {
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) else {
        return Vec::new();
    };
    let (git_dir, common) = (PathBuf::from(git_dir), PathBuf::from(common));
    let mut paths = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let file = common.join(branch);
        match file.parent() {
            Some(dir) if !file.is_file() => paths.push(dir.to_path_buf()),
            _ => paths.push(file),
        }
    }
    paths.into_iter().filter(|p| Path::new(p).exists()).collect()
}

fn main() {
    println!("cargo:rerun-if-env-changed=EDGEPIN_COMMIT");
    let commit = match std::env::var("EDGEPIN_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            for file in watched() {
                println!("cargo:rerun-if-changed={}", file.display());
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=EDGEPIN_COMMIT={commit}");
}

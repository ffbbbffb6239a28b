//! Finds or builds the `flotilla` binaries a run needs: the normal release build, and a
//! planted-bug build kept beside it under `$CARGO_TARGET_DIR/planted/flotilla-<source hash>`
//! (rebuilt when any source it is made from changes, reused otherwise).
//!
//! A planted build must not leave the workspace's ordinary binaries built with the feature,
//! so after copying it out the normal build runs again (only Flotilla's own crates recompile).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace this suite was built from.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shared = PathBuf::from("/var/tmp/flotilla-target");
            if shared.exists() {
                shared
            } else {
                root.join("target")
            }
        })
}

fn cargo_build(root: &Path, target: &Path, features: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).env("CARGO_TARGET_DIR", target).args([
        "build",
        "--release",
        "--workspace",
        "--all-targets",
    ]);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    eprintln!("jepsen: building: {cmd:?}");
    let status = cmd.status().context("run cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(())
}

/// The normal release `flotilla`, built if missing.
pub fn flotilla(root: &Path) -> Result<PathBuf> {
    let target = target_dir(root);
    let bin = target.join("release").join("flotilla");
    if !bin.exists() {
        cargo_build(root, &target, None)?;
    }
    Ok(bin)
}

/// FNV-1a, 64 bit: small, stable across Rust versions.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Hash of every input of the `flotilla` binary: sources and manifests of `crates/` and
/// `proto/`, the root manifest and lock file.
pub fn source_hash(root: &Path) -> Result<u64> {
    let mut files = Vec::new();
    for dir in ["crates", "proto"] {
        collect(&root.join(dir), &mut files)?;
    }
    files.push(root.join("Cargo.toml"));
    files.push(root.join("Cargo.lock"));
    files.sort();
    let mut h = FNV_OFFSET;
    for f in files {
        h = fnv1a(
            h,
            f.strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h = fnv1a(
            h,
            &std::fs::read(&f).with_context(|| format!("read {}", f.display()))?,
        );
    }
    Ok(h)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "toml" || e == "proto")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The planted-bug `flotilla` for the current sources, built (and the normal build restored)
/// if it does not exist yet.
pub fn planted(root: &Path) -> Result<PathBuf> {
    let target = target_dir(root);
    let dir = target.join("planted");
    let bin = dir.join(format!("flotilla-{:016x}", source_hash(root)?));
    if bin.exists() {
        return Ok(bin);
    }
    cargo_build(root, &target, Some("flotilla-cli/planted-bugs"))?;
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(".flotilla.partial");
    std::fs::copy(target.join("release").join("flotilla"), &tmp)?;
    std::fs::rename(&tmp, &bin)?;
    // The planted binary is ready; a failure to restore the normal build does not change it.
    if let Err(e) = cargo_build(root, &target, None) {
        eprintln!("jepsen: warning: restoring the normal build failed: {e:#}");
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn the_source_hash_is_stable() {
        let root = workspace_root();
        assert_eq!(source_hash(&root).unwrap(), source_hash(&root).unwrap());
    }
}

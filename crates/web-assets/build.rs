//! Embeds `web-client/dist` and `web-admin/dist` (made by `cargo xtask web`; `PEERBUBBLE_WEB_DIST` and
//! `PEERBUBBLE_CONSOLE_DIST` override the paths). Without them the crate builds with no files and serves a page
//! saying how to build them, so that `cargo check` and the Rust tests never need Node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, root, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let web = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>();
            out.push((format!("/{}", web.join("/")), path.clone()));
        }
    }
}

/// `static <name>: &[(&str, &[u8])]` holding every file under `dist`.
fn embed(code: &mut String, name: &str, dist: &Path) {
    println!("cargo::rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    walk(dist, dist, &mut files);
    for (_, path) in &files {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    let _ = writeln!(code, "/// The built files: (path, bytes).\npub static {name}: &[(&str, &[u8])] = &[");
    for (web, path) in &files {
        let _ = writeln!(code, "    ({web:?}, include_bytes!({:?})),", path.display().to_string());
    }
    code.push_str("];\n");
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let mut code = String::new();
    for (name, var, default) in [
        ("FILES", "PEERBUBBLE_WEB_DIST", "web-client/dist"),
        ("CONSOLE_FILES", "PEERBUBBLE_CONSOLE_DIST", "web-admin/dist"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        let dist = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| manifest.join("../..").join(default));
        embed(&mut code, name, &dist);
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("files.rs");
    if let Err(err) = std::fs::write(&out, code) {
        println!("cargo::error=cannot write {}: {err}", out.display());
    }
}

//! Building the browser client: client-wasm for wasm32 (profile `wasm`, the same build the wasm-bindgen tests
//! use), wasm-bindgen's JS glue (the CLI pinned to the crate's version), wasm-opt from npm's binaryen (Debian's
//! breaks modules), the wasm's SRI hash for the worker's fetch, then type-check, lint and Vite into
//! `web-client/dist`, which `crates/web-assets` embeds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use base64::Engine as _;
use sha2::Digest as _;

use crate::bench::target_dir as target_dir_of;
use crate::{cargo, project_root, sh};

fn target_dir() -> PathBuf {
    target_dir_of(&project_root())
}

const CRATE_FILE: &str = "peerbubble_client_wasm";

fn npx(dir: &Path, tool: &str) -> Command {
    let mut cmd = Command::new(dir.join("node_modules/.bin").join(tool));
    cmd.current_dir(dir);
    cmd
}

/// Where the optimised wasm ends up (for the size benchmark too).
pub(crate) fn wasm_out(root: &Path) -> PathBuf {
    root.join("web-client/src/wasm").join(format!("{CRATE_FILE}_bg.wasm"))
}

/// Builds `web-client/dist`.
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    let root = project_root();
    let web = root.join("web-client");
    sh(cargo().args([
        "build",
        "--package",
        "peerbubble-client-wasm",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm",
    ]))?;
    let built = target_dir().join("wasm32-unknown-unknown/wasm").join(format!("{CRATE_FILE}.wasm"));
    let out = web.join("src/wasm");
    sh(Command::new("wasm-bindgen")
        .args(["--target", "web", "--out-name", CRATE_FILE, "--out-dir"])
        .arg(&out)
        .arg(&built))?;
    crate::npm_ci(&web)?;
    let wasm = wasm_out(&root);
    sh(npx(&web, "wasm-opt")
        .args([
            "-Oz",
            "--enable-bulk-memory",
            "--enable-mutable-globals",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-reference-types",
            "--enable-multivalue",
        ])
        .arg(&wasm)
        .arg("-o")
        .arg(&wasm))?;
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let digest = sha2::Sha384::digest(&bytes);
    let integrity = format!("sha384-{}", base64::engine::general_purpose::STANDARD.encode(digest));
    std::fs::write(
        out.join("integrity.ts"),
        format!(
            "// Written by `cargo xtask web`: the Subresource Integrity of the optimised wasm the worker fetches.\n\
             export const WASM_INTEGRITY = '{integrity}';\n"
        ),
    )?;
    sh(npx(&web, "tsc").arg("-b"))?;
    sh(npx(&web, "tsc").args(["-p", "tsconfig.node.json"]))?;
    sh(npx(&web, "eslint").args([".", "--max-warnings", "0"]))?;
    sh(npx(&web, "vite").args(["build", "--logLevel", "warn"]))?;
    println!("web client: {} ({} KiB of wasm before compression)", web.join("dist").display(), bytes.len() / 1024);
    Ok(web.join("dist"))
}

/// The browser end-to-end tests (Playwright driving Debian's Chromium) against a real `peerbubble up`.
pub(crate) fn e2e() -> anyhow::Result<()> {
    let root = project_root();
    sh(cargo().args(["build", "--package", "peerbubble", "--bin", "peerbubble"]))?;
    let bin = target_dir().join("debug/peerbubble");
    let web = root.join("web-client");
    crate::npm_ci(&web)?;
    sh(npx(&web, "vitest")
        .args(["run", "--config", "e2e/vitest.config.ts"])
        .env("PEERBUBBLE_BIN", &bin)
        .env("PEERBUBBLE_SCREENSHOTS", screenshots()))
}

/// Where the end-to-end tests leave their screenshots (desktop and phone, English and French): CI keeps them.
pub(crate) fn screenshots() -> PathBuf {
    target_dir().join("screenshots")
}

//! Building the browser client: client-wasm for wasm32 (profile `wasm`, the same build the wasm-bindgen tests
//! use), wasm-bindgen's JS glue (the CLI pinned to the crate's version), wasm-opt from npm's binaryen (Debian's
//! breaks modules), the wasm's SRI hash for the worker's fetch, then type-check, lint and Vite into
//! `web-client/dist`, which `crates/web-assets` embeds; then the administrator's console into `web-admin/dist`.

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
    let mut opt = npx(&web, "wasm-opt");
    if std::env::var_os("PEERBUBBLE_WASM_NAMES").is_some() {
        // For CPU profiles (BENCHMARKS.md, "Profiling a transfer"): the functions keep their names.
        opt.arg("--debuginfo");
    }
    sh(opt
        .args([
            "-Oz",
            "--enable-bulk-memory",
            "--enable-mutable-globals",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-reference-types",
            "--enable-multivalue",
            "--enable-simd",
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
    console()?;
    Ok(web.join("dist"))
}

/// Builds `web-admin/dist`: the API client's types generated from the committed OpenAPI document (which
/// crates/admin-api/tests/openapi.rs holds equal to the server's), then type-check, lint and Vite.
pub(crate) fn console() -> anyhow::Result<PathBuf> {
    let admin = project_root().join("web-admin");
    crate::npm_ci(&admin)?;
    sh(npx(&admin, "openapi-typescript").args(["src/api/openapi.json", "-o", "src/api/schema.ts", "--silent"]))?;
    sh(npx(&admin, "tsc").arg("-b"))?;
    sh(npx(&admin, "eslint").args([".", "--max-warnings", "0"]))?;
    sh(npx(&admin, "vite").args(["build", "--logLevel", "warn"]))?;
    println!("console: {}", admin.join("dist").display());
    Ok(admin.join("dist"))
}

/// `cargo xtask openapi`: writes the admin API's current OpenAPI document where the console's client is
/// generated from.
pub(crate) fn bless_openapi() -> anyhow::Result<()> {
    sh(cargo().env("PEERBUBBLE_BLESS", "1").args([
        "test",
        "--package",
        "peerbubble-admin-api",
        "--test",
        "openapi",
        "--quiet",
    ]))
}

/// The browser end-to-end tests (Playwright driving Debian's Chromium) against a real `peerbubble up`.
pub(crate) fn e2e() -> anyhow::Result<()> {
    let root = project_root();
    sh(cargo().args(["build", "--package", "peerbubble", "--bin", "peerbubble"]))?;
    let bin = target_dir().join("debug/peerbubble");
    let web = root.join("web-client");
    crate::npm_ci(&web)?;
    // The console's OpenID sign-in runs against the same real provider as the admin API's tests.
    crate::npm_ci(&root.join("crates/admin-api/tests/oidc"))?;
    sh(npx(&web, "vitest")
        .args(["run", "--config", "e2e/vitest.config.ts"])
        .env("PEERBUBBLE_BIN", &bin)
        .env("PEERBUBBLE_SCREENSHOTS", screenshots()))
}

/// `cargo xtask bench browser`: the web client's costs against baselines measured in the same run (the native
/// client-core for the MLS message cost, a raw RTCPeerConnection page for connecting), in Debian's Chromium
/// against a real `peerbubble up` (web-client/bench/). Options: `--rounds R` (connections of each kind),
/// `--messages N` (1 KiB texts per wasm run and, ten times as many, natively).
pub(crate) fn bench_browser(rest: &[String]) -> anyhow::Result<()> {
    let (mut rounds, mut messages) = (5u32, 300u32);
    for pair in rest.chunks(2) {
        let value = || pair.get(1).map(|v| v.parse::<u32>()).transpose().ok().flatten().context("a number");
        match pair[0].as_str() {
            "--rounds" => rounds = value()?,
            "--messages" => messages = value()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    crate::web_tools()?;
    crate::debian_packages()?;
    build()?;
    let root = project_root();
    sh(cargo().args(["build", "--package", "peerbubble", "--bin", "peerbubble"]))?;
    // The native figure: the same function (peerbubble_client_core::bench), 1 KiB texts, optimised build.
    let native = cargo()
        .args(["bench", "--package", "peerbubble-peer", "--bench", "e2ee", "--", "--messages-only"])
        .args(["--message-bytes", "1024", "--messages", &(messages * 10).to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let native = String::from_utf8_lossy(&native.stdout).into_owned();
    print!("{native}");
    let native_us: f64 = native
        .lines()
        .find_map(|l| l.strip_prefix("mls: ")?.split_whitespace().next()?.parse().ok())
        .context("the native bench printed no `mls:` line")?;
    let chunk_native = |what: &str| -> anyhow::Result<f64> {
        let line = native.lines().find_map(|l| l.strip_prefix("chunk: ")).context("no native `chunk:` line")?;
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == what {
                return words.next().and_then(|v| v.parse().ok()).context("a number after it");
            }
        }
        anyhow::bail!("the native `chunk:` line has no {what}")
    };
    let web = root.join("web-client");
    let out = target_dir().join("bench-browser.json");
    let _ = std::fs::remove_file(&out);
    sh(npx(&web, "vitest")
        .args(["run", "--config", "bench/vitest.config.ts", "bench/browser.test.ts"])
        .env("PEERBUBBLE_BIN", target_dir().join("debug/peerbubble"))
        .env("BENCH_ROUNDS", rounds.to_string())
        .env("BENCH_MESSAGES", messages.to_string())
        .env("BENCH_OUT", &out))?;
    let result = std::fs::read_to_string(&out).context("the browser bench wrote no result")?;
    let number = |key: &str| crate::bench::json_number(&result, key);
    let (wasm_us, ours, raw, gz) =
        (number("wasm_msg_us")?, number("ours_median_ms")?, number("raw_median_ms")?, number("wasm_gz_kb")?);
    println!(
        "connect (median of {rounds}): web client {ours:.0} ms, raw RTCPeerConnection page {raw:.0} ms; \
         MLS 1 KiB message: wasm {wasm_us:.1} us, native {native_us:.1} us"
    );
    let (seal, open, sha) =
        (number("wasm_chunk_seal_us")?, number("wasm_chunk_open_us")?, number("wasm_chunk_sha256_us")?);
    println!(
        "file chunk of 16 KiB: wasm seal {seal:.0} us, open {open:.0} us, SHA-256 alone {sha:.0} us; native seal \
         {:.0} us, open {:.0} us, SHA-256 alone {:.0} us",
        chunk_native("seal")?,
        chunk_native("open")?,
        chunk_native("sha256")?
    );
    println!(
        "bench browser: wasm_msg_us={wasm_us:.1} native_msg_us={native_us:.1} wasm_ratio={:.2} connect_ratio={:.2} \
         wasm_gz_kb={gz:.0}",
        wasm_us / native_us,
        ours / raw
    );
    Ok(())
}

/// Where the end-to-end tests leave their screenshots (desktop and phone, English and French): CI keeps them.
pub(crate) fn screenshots() -> PathBuf {
    target_dir().join("screenshots")
}

/// `cargo xtask bench browser-media`: a file between two browsers through the web client against two raw pages
/// over one DataChannel (same 16 KiB messages), and the time from "Video call" to the first decoded remote frame
/// against a raw RTCPeerConnection page, and the raw DataChannel forced through our TURN (release build) against
/// coturn, in one Chromium, rounds alternating (web-client/bench/media.test.ts).
pub(crate) fn bench_browser_media(rest: &[String]) -> anyhow::Result<()> {
    let (mut rounds, mut file_mb) = (3u32, 256u32);
    for pair in rest.chunks(2) {
        let value = || pair.get(1).map(|v| v.parse::<u32>()).transpose().ok().flatten().context("a number");
        match pair[0].as_str() {
            "--rounds" => rounds = value()?,
            "--file-mb" => file_mb = value()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    crate::web_tools()?;
    crate::debian_packages()?;
    build()?;
    sh(cargo().args(["build", "--package", "peerbubble", "--bin", "peerbubble"]))?;
    // The relays are compared as they ship: ours from a release build, against Debian's coturn.
    sh(cargo().args(["build", "--release", "--package", "peerbubble", "--bin", "peerbubble"]))?;
    let web = project_root().join("web-client");
    let out = target_dir().join("bench-browser-media.json");
    let _ = std::fs::remove_file(&out);
    sh(npx(&web, "vitest")
        .args(["run", "--config", "bench/vitest.config.ts", "bench/media.test.ts"])
        .env("PEERBUBBLE_BIN", target_dir().join("debug/peerbubble"))
        .env("PEERBUBBLE_RELEASE_BIN", target_dir().join("release/peerbubble"))
        .env("BENCH_ROUNDS", rounds.to_string())
        .env("BENCH_FILE_MB", file_mb.to_string())
        .env("BENCH_OUT", &out))?;
    let result = std::fs::read_to_string(&out).context("the browser-media bench wrote no result")?;
    let number = |key: &str| crate::bench::json_number(&result, key);
    let (ours, raw) = (number("file_ours_mb_s")?, number("file_raw_mb_s")?);
    let raw_disk = number("file_raw_disk_mb_s")?;
    let (call_ours, call_raw) = (number("call_ours_ms")?, number("call_raw_ms")?);
    let (relay_ours, relay_coturn) = (number("relay_ours_mb_s")?, number("relay_coturn_mb_s")?);
    println!(
        "file of {file_mb} MiB (median of {rounds}): web client {ours:.1} MB/s, raw DataChannel {raw:.1} MB/s, raw \
         DataChannel reading and storing the file {raw_disk:.1} MB/s (web client {:.2}x); \
         call to first remote video frame: web client {call_ours:.0} ms, raw RTCPeerConnection {call_raw:.0} ms; \
         raw DataChannel relayed: through our TURN {relay_ours:.1} MB/s, through coturn {relay_coturn:.1} MB/s",
        ours / raw_disk
    );
    println!(
        "bench browser-media: file_ratio={:.2} relay_ratio={:.2} call_ratio={:.2} file_mb_s={ours:.1} \
         relay_mb_s={relay_ours:.1}",
        ours / raw,
        relay_ours / relay_coturn,
        call_ours / call_raw
    );
    Ok(())
}

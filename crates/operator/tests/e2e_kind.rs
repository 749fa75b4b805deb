//! The kind end-to-end test (tests/e2e/kind/run.sh): a real cluster, the images, `helm install`, a Bubble
//! reaching Ready and native peers through it. It needs docker (with a running daemon) and kind; where they are
//! missing, as on the project's CI machines, it says so and skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::print_stderr)]

use std::process::Command;

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

#[test]
fn kind_end_to_end() {
    let missing: Vec<&str> = [("docker", &["info"][..]), ("kind", &["version"][..])]
        .into_iter()
        .filter(|(program, args)| !works(program, args))
        .map(|(program, _)| program)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED kind e2e: {} not available here (needs docker with a running daemon and kind)",
            missing.join(" and ")
        );
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/kind/run.sh");
    let status = Command::new("bash").arg(script).status().expect("bash runs");
    assert!(status.success(), "tests/e2e/kind/run.sh failed: {status}");
}

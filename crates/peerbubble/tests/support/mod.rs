//! `peerbubble up` as a test drives it: started on free loopback ports in a data directory, its banner read
//! (signaling URL, admin API, admin token, demo invite links), members enrolled with the host's own binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running micro-node and what it printed. Dropped without [`MicroNode::stop`] (a test that ends or fails
/// early), it is killed: a node left running outlived the test run.
pub struct MicroNode {
    child: Option<Child>,
    pub banner: Vec<String>,
}

impl Drop for MicroNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl MicroNode {
    /// Starts `program` (with `args` before `up`, e.g. an emulator's) as `up` on loopback with free ports, and
    /// reads its banner up to "Stop with Ctrl-C".
    pub async fn start(program: &Path, prefix: &[&str], envs: &[(&str, &str)], data: &Path) -> MicroNode {
        let mut child = Command::new(program)
            .args(prefix)
            .args(["up", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--turn-port", "0", "--turn-tls-port", "0", "--data-dir"])
            .arg(data)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let banner = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let done = line.starts_with("Stop with Ctrl-C");
                lines.push(line);
                if done {
                    break;
                }
            }
            lines
        })
        .await
        .unwrap();
        MicroNode { child: Some(child), banner }
    }

    /// The first word after `label` on a banner line (e.g. "signaling", "admin API", "admin token").
    pub fn field(&self, label: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|rest| rest.split_whitespace().next().unwrap_or_default()))
            .unwrap_or_else(|| panic!("no {label} in {:?}", self.banner))
            .to_owned()
    }

    /// Each demo invite, once (the banner prints the first one again in a CLI example).
    pub fn invite_links(&self) -> Vec<String> {
        let mut links: Vec<String> = Vec::new();
        for word in self.banner.iter().flat_map(|l| l.split_whitespace()).map(|w| w.trim_matches('\'')) {
            if word.contains("/enroll#demo.") && !links.iter().any(|l| l == word) {
                links.push(word.to_owned());
            }
        }
        links
    }

    /// SIGTERM, and the process's exit status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node runs until stopped");
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap()
    }
}

/// `peerbubble enroll` (this build's, on the host) with `link`, keeping the key in `key`.
pub fn enroll(api: &str, link: &str, key: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
        .args(["enroll", "--api", api, "--invite", link, "--key-out"])
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The identity key in a key file `enroll` wrote.
pub fn read_key(path: &Path) -> peerbubble_proto::IdentityKey {
    peerbubble_proto::IdentityKey::from_seed_base64(&std::fs::read_to_string(path).unwrap()).unwrap()
}

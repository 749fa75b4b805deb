//! Writes the CustomResourceDefinitions to crds/ and the Helm chart's templates/crds/, or with `--check`
//! fails when the files differ from the Rust types.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("crdgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(check: bool) -> anyhow::Result<bool> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut in_sync = true;
    for (name, yaml) in peerbubble_crd::crd_files()? {
        let path = root.join(&name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!(
                    "crdgen: {} differs from the Rust types; run `cargo run -p peerbubble-crd --bin crdgen`",
                    path.display()
                );
                in_sync = false;
            }
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, yaml)?;
            eprintln!("crdgen: wrote {}", path.display());
        }
    }
    Ok(in_sync)
}

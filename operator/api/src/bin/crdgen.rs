//! Writes `crds/*.yaml` from the Rust types: `crdgen <dir>` (`make crds`).

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crdgen <directory>");
        return ExitCode::from(64);
    };
    for (file, crd) in weft_api::crd::all() {
        let path = dir.join(file);
        let written = weft_api::crd::to_yaml(&crd)
            .map_err(|e| e.to_string())
            .and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("crdgen: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

//! Writes `crds/*.yaml` from the Rust types: `crdgen <dir>` (`make crds`).

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crdgen <directory>");
        return ExitCode::from(64);
    };
    let mut files: Vec<(&str, Result<String, String>)> = weft_api::crd::all()
        .into_iter()
        .map(|(file, crd)| {
            (
                file,
                weft_api::crd::to_yaml(&crd).map_err(|e| e.to_string()),
            )
        })
        .collect();
    files.push(("kustomization.yaml", Ok(weft_api::crd::kustomization())));
    for (file, yaml) in files {
        let path = dir.join(file);
        let written = yaml.and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("crdgen: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

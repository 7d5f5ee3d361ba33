//! Build checks: what the crate embeds at compile time must be there, and a change to it rebuilds.

use std::path::Path;

/// uPlot comes from the npm registry (package.json, package-lock.json) into node_modules/, and
/// src/http/assets.rs embeds these files of it.
const UPLOT_FILES: [&str; 3] = [
    "node_modules/uplot/dist/uPlot.esm.js",
    "node_modules/uplot/dist/uPlot.min.css",
    "node_modules/uplot/LICENSE",
];

fn main() {
    // `sqlx::migrate!` embeds the folder at compile time.
    println!("cargo::rerun-if-changed=migrations");
    // A fresh `npm ci` (or a missing node_modules/) re-runs this check; a missing path counts as
    // changed, so the check runs again on every build until the files are there.
    println!("cargo::rerun-if-changed=package-lock.json");
    for file in UPLOT_FILES {
        println!("cargo::rerun-if-changed={file}");
    }
    if let Some(missing) = UPLOT_FILES.iter().find(|file| !Path::new(file).is_file()) {
        // One line that says what to do, instead of the embed macro's error about a folder.
        println!("cargo::error={missing} is missing: run `npm ci` in the repository root (it installs uPlot)");
    }
}

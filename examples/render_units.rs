//! Rendering a job spec into systemd units: the unit files an agent writes into a
//! container's `/etc/systemd/system`, and the same units as `StartTransientUnit`
//! properties for a caller that starts them over D-Bus without files.
//!
//! ```sh
//! cargo run --example render_units                    # examples/specs/web.toml
//! cargo run --example render_units -- path/to/job.yaml
//! ```
//!
//! Specs are TOML, JSON or YAML (by extension); unknown keys are errors, and validation
//! lists every problem with its field path. `twine render` and `twine check` are the same
//! on the command line; `cargo run -p twine-spec --example render -- SPEC` is the
//! smallest version of this program.
#![allow(clippy::print_stdout)] // an example: its output is the point

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/specs/web.toml"),
        PathBuf::from,
    );
    let spec =
        twine::spec::JobSpec::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let job = spec
        .validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let units = twine::spec::translate(&job)?;

    // Unit files: written all or none by `twine_spec::install::write_unit_files`.
    for file in units.files() {
        println!("### {}\n{}", file.name, file.contents);
    }
    // Transient units: the main unit first; each property with its D-Bus signature.
    for unit in units.transient() {
        let props: Vec<_> = unit
            .properties
            .iter()
            .map(|p| format!("{}({})", p.name, p.signature))
            .collect();
        println!("### transient {}: {}", unit.name, props.join(" "));
    }
    println!("start {} to start the job", units.target());
    Ok(())
}

//! Renders a spec file's units to stdout: `cargo run -p twine-spec --example render -- SPEC`.
#![allow(clippy::print_stdout)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: render SPEC")?;
    let job = twine_spec::JobSpec::from_path(path.as_ref())?.validate()?;
    for file in twine_spec::translate(&job)?.files() {
        println!("### {}\n{}", file.name, file.contents);
    }
    Ok(())
}

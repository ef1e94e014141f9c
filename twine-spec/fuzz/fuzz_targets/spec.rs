//! Any bytes, read as a TOML, JSON or YAML spec: parsing, validation and rendering
//! never panic, and a rendered unit has exactly one line per directive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twine_spec::{Format, JobSpec, translate};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = match selector % 3 {
        0 => Format::Toml,
        1 => Format::Json,
        _ => Format::Yaml,
    };
    let Ok(spec) = JobSpec::parse(text, format) else { return };
    let Ok(job) = spec.validate() else { return };
    let set = translate(&job).expect("a validated job always translates");
    let _ = set.transient();
    for unit in set.units() {
        let text = unit.render();
        let directives: usize = unit.sections.iter().map(|s| s.directives.len()).sum();
        let lines = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('[')).count();
        assert_eq!(lines, directives, "a value added or removed a line:\n{text}");
        assert!(!text.lines().any(|l| l.ends_with('\\')), "a line continues into the next:\n{text}");
    }
});

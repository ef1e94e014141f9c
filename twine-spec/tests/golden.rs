//! Golden tests in the manner of quadlet's test files: each `golden/*.{toml,json,yaml}`
//! spec carries its own assertions as `## assert-...` comment lines, and, for specs
//! that translate, the full expected output sits next to it as `NAME.units`.
//! Every rendered set is also run through `systemd-analyze verify`.
//!
//! Assertions:
//! - `## assert-units NAME...`: exactly these units, in this order
//! - `## assert-key-is UNIT SECTION KEY VALUE`: the last `KEY=` is exactly VALUE
//! - `## assert-key-contains UNIT SECTION KEY TEXT`
//! - `## assert-no-key UNIT SECTION KEY`
//! - `## assert-error FIELD KIND`: validation reports this problem (all must be listed)
//! - `## assert-parse-error FIELD`: the parser stops at this field path
//!
//! `TWINE_BLESS=1 cargo test -p twine-spec --test golden` rewrites the `.units` files.

mod support;

use std::path::{Path, PathBuf};

use twine_spec::{Format, JobSpec, ParseError, UnitFile, translate};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_default())
        .filter(|p| Format::from_path(p).is_some())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "golden cases missing in {}",
        dir.display()
    );
    cases
}

fn assertions(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("## "))
        .map(|l| {
            // VALUE/TEXT may contain spaces: split off at most the fixed words.
            let words: Vec<&str> = l.splitn(2, ' ').collect();
            let fixed = match words[0] {
                "assert-key-is" | "assert-key-contains" => 4,
                "assert-no-key" => 4,
                "assert-error" => 3,
                "assert-parse-error" => 2,
                "assert-units" => usize::MAX,
                other => panic!("unknown assertion {other}"),
            };
            if fixed == usize::MAX {
                l.split(' ').map(str::to_owned).collect()
            } else {
                l.splitn(fixed + 1, ' ').map(str::to_owned).collect()
            }
        })
        .collect()
}

fn last_value(files: &[UnitFile], unit: &str, section: &str, key: &str) -> Option<String> {
    let file = files.iter().find(|f| f.name == unit)?;
    let entries = support::systemd_parse::read_unit(&file.contents).expect("unit reads back");
    entries
        .into_iter()
        .filter(|e| e.section == section && e.key == key)
        .map(|e| e.value)
        .next_back()
}

fn listing(files: &[UnitFile]) -> String {
    files
        .iter()
        .map(|f| format!("### {}\n{}\n", f.name, f.contents))
        .collect()
}

fn run_case(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let checks = assertions(&text);
    let parsed = JobSpec::from_path(path);
    if let Some(expect) = checks.iter().find(|c| c[0] == "assert-parse-error") {
        return match parsed {
            Err(ParseError::Syntax { field, message }) if field == expect[1] => {
                eprintln!("{}: {field}: {message}", path.display());
                Ok(())
            }
            other => Err(format!(
                "expected a parse error at {}, got {other:?}",
                expect[1]
            )),
        };
    }
    let spec = parsed.map_err(|e| e.to_string())?;
    let expected_errors: Vec<&Vec<String>> =
        checks.iter().filter(|c| c[0] == "assert-error").collect();
    let job = match spec.validate() {
        Err(errors) => {
            let got: Vec<(String, String)> = errors
                .problems
                .iter()
                .map(|p| (p.field.clone(), format!("{:?}", p.kind)))
                .collect();
            let want: Vec<(String, String)> = expected_errors
                .iter()
                .map(|c| (c[1].clone(), c[2].clone()))
                .collect();
            return if got == want {
                Ok(())
            } else {
                Err(format!(
                    "problems differ\n got: {got:?}\nwant: {want:?}\n{errors}"
                ))
            };
        }
        Ok(_) if !expected_errors.is_empty() => {
            return Err("expected validation errors, got none".to_owned());
        }
        Ok(job) => job,
    };
    let files = translate(&job).expect("a validated job translates").files();
    for check in &checks {
        match check[0].as_str() {
            "assert-units" => {
                let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
                if names != check[1..].iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(format!("units are {names:?}"));
                }
            }
            "assert-key-is" => {
                let got = last_value(&files, &check[1], &check[2], &check[3]);
                if got.as_deref() != Some(check[4].as_str()) {
                    return Err(format!(
                        "{} [{}] {}: got {got:?}, want {:?}",
                        check[1], check[2], check[3], check[4]
                    ));
                }
            }
            "assert-key-contains" => {
                let got = last_value(&files, &check[1], &check[2], &check[3]).unwrap_or_default();
                if !got.contains(check[4].as_str()) {
                    return Err(format!(
                        "{} [{}] {}: {got:?} lacks {:?}",
                        check[1], check[2], check[3], check[4]
                    ));
                }
            }
            "assert-no-key" => {
                if let Some(got) = last_value(&files, &check[1], &check[2], &check[3]) {
                    return Err(format!(
                        "{} [{}] {} is set to {got:?}",
                        check[1], check[2], check[3]
                    ));
                }
            }
            _ => {}
        }
    }
    let rendered = listing(&files);
    let golden = path.with_extension("units");
    if std::env::var("TWINE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&golden, &rendered).map_err(|e| e.to_string())?;
    } else {
        let want = std::fs::read_to_string(&golden)
            .map_err(|e| format!("{}: {e} (TWINE_BLESS=1 writes it)", golden.display()))?;
        if want != rendered {
            return Err(format!(
                "{} differs from the rendered units:\n{rendered}",
                golden.display()
            ));
        }
    }
    support::assert_verifies(&files);
    Ok(())
}

#[test]
fn golden_specs() {
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(e) = run_case(&case) {
            failures.push(format!("{}: {e}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The same job in TOML, JSON and YAML renders the same units.
#[test]
fn formats_agree() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let render = |name: &str| {
        let job = JobSpec::from_path(&dir.join(name))
            .expect("parses")
            .validate()
            .expect("valid");
        translate(&job).expect("a validated job translates").files()
    };
    let toml = render("formats.toml");
    assert_eq!(toml, render("formats.json"));
    assert_eq!(toml, render("formats.yaml"));
}

//! The daemon's TOML config: the shipped example parses; bad configs name field and value.

use std::time::Duration;

use twine_oomd::config::{Config, ConfigError};
use twine_oomd::senpai::{Mode, SenpaiConfig};

#[test]
fn example_config_parses() {
    let text = include_str!("../examples/oomd.toml");
    let config = Config::from_toml(text).expect("the example is valid");
    assert!(!config.dry_run);
    assert_eq!(config.resize.len(), 2);
    let web = config
        .resize_for("workload.slice/web.service")
        .expect("selected");
    assert_eq!(
        web.senpai,
        SenpaiConfig {
            mode: Mode::Reclaim,
            ..SenpaiConfig::default()
        }
    );
    let batch = config
        .resize_for("batch.slice/a/b.scope")
        .expect("selected");
    assert_eq!(batch.senpai.mode, Mode::High);
    assert_eq!(batch.senpai.pressure, Duration::from_millis(50));
    assert!(config.resize_for("system.slice/x.service").is_none());
}

#[test]
fn overrides_apply_to_every_entry() {
    let mut config = Config::from_toml(include_str!("../examples/oomd.toml")).expect("valid");
    config.set_mode(Mode::High);
    config
        .set_interval(Duration::from_secs(2))
        .expect("positive");
    assert!(config.resize.iter().all(|r| r.senpai.mode == Mode::High));
    assert!(
        config
            .resize
            .iter()
            .all(|r| r.senpai.interval == Duration::from_secs(2))
    );
    assert!(config.set_interval(Duration::ZERO).is_err());
    config.set_dry_run(true);
    assert!(config.dry_run);
}

fn error(text: &str) -> String {
    Config::from_toml(text).expect_err("invalid").to_string()
}

#[test]
fn impossible_bounds_name_field_and_value() {
    assert_eq!(
        error("interval_s = 0"),
        "interval_s = 0: must be a positive number of seconds"
    );
    assert_eq!(
        error("[[resize]]\ncgroups = [\"a\"]\nmax_probe = 2.0"),
        "resize[0].max_probe = 2: must be in (0, 1]"
    );
    assert_eq!(
        error("[[resize]]\ncgroups = [\"a\"]\nlimit_min_bytes = 10\nlimit_max_bytes = 5"),
        "resize[0].limit_min_bytes = 10: must be at most limit_max_bytes"
    );
    assert_eq!(
        error("[[resize]]\ncgroups = [\"a\"]\ninterval_s = 0"),
        "resize[0].interval_s = 0: must be greater than zero"
    );
    let kill = "[[kill]]\nname = \"k\"\ncgroup = \"w\"\ndetectors = [{ type = \"pressure_above\", window_s = WINDOW, threshold_pct = PCT, duration_s = 1 }]";
    assert_eq!(
        error(&kill.replace("WINDOW", "7").replace("PCT", "50")),
        "kill[0].detectors[0].window_s = 7: must be 10, 60 or 300"
    );
    assert_eq!(
        error(&kill.replace("WINDOW", "10").replace("PCT", "101")),
        "kill[0].detectors[0].threshold_pct = 101: must be a percentage in [0, 100]"
    );
}

#[test]
fn unknown_keys_are_rejected() {
    for text in [
        "colour = \"red\"",
        "[[resize]]\ncgroups = [\"a\"]\nmax_prob = 0.1",
        "[[kill]]\nname = \"k\"\ncgroup = \"w\"\ndetectors = []\nextra = 1",
        "[[kill]]\nname = \"k\"\ncgroup = \"w\"\ndetectors = [{ type = \"memory_above\", bytes = 1, x = 2 }]",
        "[[prekill_hook]]\ncgroups = []\ncommand = [\"x\"]\nwait = 1",
    ] {
        let err = Config::from_toml(text).expect_err(text);
        assert!(matches!(err, ConfigError::Syntax { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains("unknown"), "{text}: {err}");
        assert!(
            err.to_string().starts_with("line ") || err.to_string().starts_with("resize[0]: "),
            "{err}"
        );
    }
    assert_eq!(
        error("\n\n[[kill]]\nname = \"k\"\ncgroup = \"w\"\ndetectors = []\nextra = 1"),
        "line 7: unknown field `extra`, expected one of `name`, `cgroup`, `detectors`, `select`, `prefer`, `avoid`, `omit`, `via`"
    );
    assert_eq!(
        error("[[resize]]\nmax_probe = 0.1"),
        "resize[0]: missing field `cgroups`"
    );
}

proptest::proptest! {
    /// Any text, including TOML-looking garbage, parses or errors without panicking.
    #[test]
    fn any_text_is_an_error_or_a_config(text in "(\\PC|\n){0,200}|(\\[\\[(resize|kill)\\]\\]\n([a-z_]{1,12} = [0-9a-z\"\\[\\]., ]{0,12}\n){0,4}){1,3}") {
        let _ = Config::from_toml(&text);
    }
}

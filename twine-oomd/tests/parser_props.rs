//! Pure tier: the parsers never panic on any input, and an accepted cgroup path never
//! leaves its root.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::path::{Component, Path};

use proptest::prelude::*;
use twine_oomd::{CgroupRoot, Limit, Pressure};

proptest! {
    #[test]
    fn parsers_never_panic(text in "\\PC*") {
        let _ = Pressure::parse(Path::new("memory.pressure"), &text);
        let _ = Limit::parse(&text);
        let _ = CgroupRoot::find_in(&text);
    }

    #[test]
    fn pressure_round_trips(
        lines in proptest::collection::vec((0u32..10_000, 0u32..10_000, 0u32..10_000, any::<u64>()), 1..=2)
    ) {
        let text: String = lines
            .iter()
            .zip(["some", "full"])
            .map(|((a, b, c, t), kind)| {
                format!("{kind} avg10={}.{:02} avg60={}.{:02} avg300={}.{:02} total={t}\n",
                    a / 100, a % 100, b / 100, b % 100, c / 100, c % 100)
            })
            .collect();
        let p = Pressure::parse(Path::new("memory.pressure"), &text).unwrap();
        prop_assert_eq!(p.some.total_us, lines[0].3);
        prop_assert_eq!(p.full.map(|f| f.total_us), lines.get(1).map(|l| l.3));
    }

    #[test]
    fn accepted_cgroup_paths_stay_under_the_root(rel in "[a-z./\\\\\u{0}]{0,12}") {
        let root = CgroupRoot::at("/cg");
        if let Ok(cg) = root.cgroup(&rel) {
            let inside = cg.path().strip_prefix("/cg").unwrap();
            prop_assert!(inside.components().all(|c| matches!(c, Component::Normal(_))), "{rel:?}");
            prop_assert_eq!(cg.relative(), Path::new(&rel));
            prop_assert!(!rel.contains('\0'));
        }
    }
}

//! Any bytes as a trace file: the readers return rows or a typed error that names
//! the source, a line and a field; they never panic. `PROPTEST_CASES=N` runs N cases
//! instead of 512.

mod support;

use proptest::prelude::*;
use twine_sched::trace::{read_nodes, read_pods};

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,6}",
        "-[0-9]{1,3}",
        "[0-9]{20,25}",
        Just(String::new()),
        Just("1000".to_owned()),
        "[a-zA-Z|\" ]{0,6}",
        any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ]
}

fn table(header: &'static str) -> impl Strategy<Value = String> {
    let columns = header.split(',').count();
    proptest::collection::vec(
        proptest::collection::vec(cell(), columns - 1..=columns + 1),
        0..8,
    )
    .prop_map(move |rows| {
        let mut text = format!("{header}\n");
        for row in rows {
            text.push_str(&row.join(","));
            text.push('\n');
        }
        text
    })
}

proptest! {
    #![proptest_config(support::proptest_config(512))]

    #[test]
    fn pods_never_panic(text in table("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos")) {
        if let Err(e) = read_pods("p.csv", text.as_bytes()) {
            prop_assert_eq!(&e.source_name, "p.csv");
            prop_assert!(e.line >= 1, "{}", e);
            prop_assert!(!e.field.is_empty() && !e.problem.to_string().is_empty(), "{}", e);
        }
    }

    #[test]
    fn nodes_never_panic(text in table("sn,cpu_milli,memory_mib,gpu,model")) {
        if let Err(e) = read_nodes("n.csv", text.as_bytes()) {
            prop_assert!(e.line >= 1 && !e.problem.to_string().is_empty(), "{}", e);
        }
    }

    #[test]
    fn raw_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = read_pods("p.csv", bytes.as_slice());
        let _ = read_nodes("n.csv", bytes.as_slice());
    }
}

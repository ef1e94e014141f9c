//! The credentials directory: atomic renewal as seen by concurrent readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use twine_agent::identity::{Identity, IdentityError};

fn set(generation: u64) -> (Vec<u8>, Vec<u8>) {
    // Sizes vary so a torn or mixed read cannot look whole.
    let pad = "x".repeat(usize::try_from(generation % 97).expect("small"));
    (
        format!("cert {generation} {pad}").into_bytes(),
        format!("key {generation} {pad}").into_bytes(),
    )
}

#[test]
fn readers_never_see_a_mix_of_two_sets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let identity = Arc::new(Identity::new(tmp.path().join("identity")));
    let (cert, key) = set(0);
    identity
        .install(&[("cert.pem", &cert), ("key.pem", &key)])
        .expect("install");

    let done = Arc::new(AtomicBool::new(false));
    let consistent = {
        let (identity, done) = (Arc::clone(&identity), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut last = 0u64;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                let (generation, files) = identity.read_set().expect("read_set");
                let cert = String::from_utf8(files["cert.pem"].clone()).expect("utf-8");
                let key = String::from_utf8(files["key.pem"].clone()).expect("utf-8");
                assert_eq!(
                    cert.strip_prefix("cert "),
                    key.strip_prefix("key "),
                    "a mixed set"
                );
                assert!(generation >= last, "went back from {last} to {generation}");
                last = generation;
                reads += 1;
            }
            reads
        })
    };
    // A reader by visible names, as a job inside the container reads: every
    // file it opens is whole, of some generation.
    let by_name = {
        let (dir, done) = (identity.dir().to_owned(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut whole = 0u64;
            while !done.load(Ordering::Relaxed) {
                match std::fs::read_to_string(dir.join("key.pem")) {
                    Ok(text) => {
                        let generation: u64 = text
                            .split(' ')
                            .nth(1)
                            .and_then(|g| g.parse().ok())
                            .unwrap_or_else(|| panic!("a torn file: {text:?}"));
                        assert_eq!(text.into_bytes(), set(generation).1, "a torn file");
                        whole += 1;
                    }
                    // Resolution can race the removal of the old generation
                    // (as with kubelet); a retry sees the new one.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("reading key.pem: {e}"),
                }
            }
            whole
        })
    };
    for generation in 1..=1000 {
        let (cert, key) = set(generation);
        identity
            .renew(&[("cert.pem", &cert), ("key.pem", &key)])
            .expect("renew");
    }
    done.store(true, Ordering::Relaxed);
    let reads = consistent.join().expect("the consistent reader panicked");
    let whole = by_name.join().expect("the by-name reader panicked");
    assert!(
        reads > 0 && whole > 0,
        "readers did not run ({reads}, {whole})"
    );

    assert_eq!(
        identity.current_generation().expect("generation"),
        Some(1001)
    );
    let mut entries: Vec<String> = std::fs::read_dir(identity.dir())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["..data", "..gen-1001", "cert.pem", "key.pem"],
        "old generations left behind"
    );
    let link = std::fs::read_link(identity.dir().join("cert.pem")).expect("a symlink");
    assert_eq!(
        link,
        std::path::Path::new("..data/cert.pem"),
        "visible names must be relative links"
    );
}

#[test]
fn names_leave_and_join_the_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let identity = Identity::new(tmp.path());
    identity.renew(&[("a", b"1"), ("b", b"1")]).expect("first");
    identity.renew(&[("b", b"2"), ("c", b"2")]).expect("second");
    assert!(
        !tmp.path().join("a").exists() && std::fs::symlink_metadata(tmp.path().join("a")).is_err()
    );
    assert_eq!(std::fs::read(tmp.path().join("b")).expect("b"), b"2");
    assert_eq!(std::fs::read(tmp.path().join("c")).expect("c"), b"2");
    let (generation, files) = identity.read_set().expect("read");
    assert_eq!(generation, 2);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn bad_names_are_refused_by_name_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let identity = Identity::new(tmp.path());
    identity.renew(&[("cert.pem", b"1")]).expect("first");
    let long = "n".repeat(256);
    for bad in [
        "",
        ".hidden",
        "..data",
        "a/b",
        "../escape",
        "nul\0",
        long.as_str(),
    ] {
        let error = identity.renew(&[("ok", b"2"), (bad, b"2")]).expect_err(bad);
        assert!(
            matches!(&error, IdentityError::InvalidName { name, .. } if name == bad),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("identity file {bad:?}: ")),
            "{error}"
        );
    }
    let error = identity
        .renew(&[("a", b"1"), ("a", b"2")])
        .expect_err("duplicate");
    assert!(
        matches!(&error, IdentityError::Duplicate { name } if name == "a"),
        "{error:?}"
    );
    assert_eq!(identity.current_generation().expect("generation"), Some(1));
    assert!(!tmp.path().join("ok").exists());
}

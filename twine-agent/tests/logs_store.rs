//! File tier of the log store: round trips, rotation with counted loss, crash
//! recovery, a model-checked property test, and a full disk (root only).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use twine_agent::logs::{LogError, LogLine, LogStore, NewLine, StoreBudget};

fn line(i: u64, machine: &str) -> NewLine {
    NewLine {
        realtime_usec: 1_700_000_000_000_000 + i,
        machine: machine.into(),
        unit: "web.service".into(),
        message: format!("message {i}"),
        cursor: format!("s=abc;i={i:x}"),
    }
}

fn lines(range: std::ops::RangeInclusive<u64>) -> Vec<NewLine> {
    range.map(|i| line(i, "m1")).collect()
}

fn read_all(dir: &Path) -> Vec<LogLine> {
    LogStore::read(dir, 1)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn same(stored: &LogLine, new: &NewLine) -> bool {
    stored.realtime_usec == new.realtime_usec
        && stored.machine == new.machine
        && stored.unit == new.unit
        && stored.message == new.message
        && stored.cursor == new.cursor
}

#[test]
fn append_and_read_round_trip_with_consecutive_sequence_numbers() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("logs");
    let mut store = LogStore::open(&dir, StoreBudget::default()).unwrap();
    assert_eq!(store.last_cursor(), None);
    let mut all = lines(1..=10);
    // Whatever bytes journald gave, after the shipper's decoding: escapes,
    // newlines, replacement characters, non-ASCII.
    let mut odd = line(11, "m2");
    odd.message = "quote \" backslash \\ newline \n tab \t nul \0 \u{fffd} ü 日本".into();
    all.push(odd);
    assert_eq!(store.append(&all[..4]).unwrap(), 4);
    assert_eq!(store.append(&[]).unwrap(), 4);
    assert_eq!(store.append(&all[4..]).unwrap(), 11);
    assert_eq!(store.last_cursor(), Some(all[10].cursor.as_str()));
    assert_eq!(store.cursor_for("m1"), Some(all[9].cursor.as_str()));
    assert_eq!(store.cursor_for("m2"), Some(all[10].cursor.as_str()));

    let back = read_all(&dir);
    assert_eq!(back.len(), all.len());
    for (i, (b, a)) in back.iter().zip(&all).enumerate() {
        assert_eq!(b.seq, i as u64 + 1);
        assert!(same(b, a), "{b:?} != {a:?}");
    }
    // Reading from the middle.
    let tail: Vec<_> = LogStore::read(&dir, 7)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tail.first().map(|l| l.seq), Some(7));
    assert_eq!(tail.len(), 5);
}

#[test]
fn reopen_resumes_cursors_and_sequence_numbers() {
    let d = tempfile::tempdir().unwrap();
    let budget = StoreBudget::new(1 << 20, 1024).unwrap();
    {
        let mut s = LogStore::open(d.path(), budget).unwrap();
        s.append(&lines(1..=30)).unwrap();
        s.append(&[line(31, "m2")]).unwrap();
    }
    let mut s = LogStore::open(d.path(), budget).unwrap();
    assert_eq!(s.last_cursor(), Some(line(31, "m2").cursor.as_str()));
    assert_eq!(s.cursor_for("m1"), Some(line(30, "m1").cursor.as_str()));
    assert_eq!(s.stats().last_seq, 31);
    assert_eq!(s.append(&lines(32..=33)).unwrap(), 33);
    let seqs: Vec<u64> = read_all(d.path()).iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=33).collect::<Vec<_>>());
}

#[test]
fn rotation_keeps_the_budget_and_counts_what_it_deleted() {
    let d = tempfile::tempdir().unwrap();
    let budget = StoreBudget::new(4096, 1024).unwrap();
    let mut s = LogStore::open(d.path(), budget).unwrap();
    for i in 0..50 {
        s.append(&lines(i * 10 + 1..=i * 10 + 10)).unwrap();
    }
    let stats = s.stats();
    let on_disk: u64 = segments(d.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(stats.bytes, on_disk);
    assert!(on_disk <= 4096, "{on_disk} bytes on disk");
    assert!(stats.rotated_lines > 0);
    assert_eq!(stats.rotated_lines + stats.retained_lines, 500);
    assert_eq!(stats.segments, segments(d.path()).len() as u64);

    let mut reader = LogStore::read(d.path(), 1).unwrap();
    let back: Vec<_> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(reader.skipped(), stats.rotated_lines);
    assert_eq!(back.len() as u64, stats.retained_lines);
    assert_eq!(back[0].seq, stats.rotated_lines + 1);
    assert_eq!(back.last().map(|l| l.seq), Some(500));
    // Reopening derives the same count.
    drop(s);
    assert_eq!(
        LogStore::open(d.path(), budget)
            .unwrap()
            .stats()
            .rotated_lines,
        stats.rotated_lines
    );
}

fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().unwrap()
}

#[test]
fn a_torn_record_is_truncated_on_open() {
    for tail in [
        &b"{\"seq\":4,\"ts\":1,\"machine\":\"m1\",\"un"[..],
        &[0u8; 100][..],
        &b"{\"seq\":4}\n"[..],
    ] {
        let d = tempfile::tempdir().unwrap();
        let budget = StoreBudget::default();
        {
            let mut s = LogStore::open(d.path(), budget).unwrap();
            s.append(&lines(1..=3)).unwrap();
        }
        let seg = last_segment(d.path());
        let good_len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(tail)
            .unwrap();
        let mut s = LogStore::open(d.path(), budget).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
        assert_eq!(s.last_cursor(), Some(line(3, "m1").cursor.as_str()));
        assert_eq!(s.append(&lines(4..=5)).unwrap(), 5);
        let seqs: Vec<u64> = read_all(d.path()).iter().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }
}

#[test]
fn cutting_the_last_segment_mid_record_loses_only_that_record() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(d.path(), StoreBudget::default()).unwrap();
        s.append(&lines(1..=10)).unwrap();
    }
    let seg = last_segment(d.path());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let s = LogStore::open(d.path(), StoreBudget::default()).unwrap();
    assert_eq!(s.stats().last_seq, 9);
    assert_eq!(s.last_cursor(), Some(line(9, "m1").cursor.as_str()));
}

#[test]
fn a_segment_with_a_torn_header_is_removed_and_damage_elsewhere_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let budget = StoreBudget::new(1 << 20, 512).unwrap();
    {
        let mut s = LogStore::open(d.path(), budget).unwrap();
        s.append(&lines(1..=20)).unwrap();
    }
    let next = LogStore::open(d.path(), budget).unwrap().stats().last_seq + 1;
    // A crash while rotating: the new segment's header is half written.
    let torn = d.path().join(format!("seg-{next:020}.log"));
    fs::write(&torn, b"{\"segment\":{\"first_").unwrap();
    let mut s = LogStore::open(d.path(), budget).unwrap();
    assert!(!torn.exists());
    assert_eq!(s.append(&lines(21..=21)).unwrap(), 21);
    drop(s);

    // Garbage in a segment that is not the last one is not repaired.
    let first = segments(d.path()).remove(0);
    let mut f = OpenOptions::new().write(true).open(&first).unwrap();
    let header_len = fs::read(&first)
        .unwrap()
        .iter()
        .position(|&b| b == b'\n')
        .unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(header_len as u64 + 3)).unwrap();
    f.write_all(b"####").unwrap();
    match LogStore::open(d.path(), budget) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(path, first),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_reader_follows_a_live_store_across_rotation() {
    let d = tempfile::tempdir().unwrap();
    let budget = StoreBudget::new(1 << 20, 600).unwrap();
    let mut s = LogStore::open(d.path(), budget).unwrap();
    let mut reader = LogStore::read(d.path(), 1).unwrap();
    assert!(reader.next().is_none());
    let mut seen = Vec::new();
    for i in 0..10 {
        s.append(&lines(i * 5 + 1..=i * 5 + 5)).unwrap();
        seen.extend(reader.by_ref().map(|l| l.unwrap().seq));
    }
    assert!(s.stats().segments > 3);
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..40).prop_map(Op::Append),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Against a model that keeps every line in a Vec: the store holds a
    /// suffix of it, numbered by position, counts the rest as rotated, and
    /// stays within budget unless only the current segment is left.
    #[test]
    fn the_store_is_a_suffix_of_the_model(
        ops in proptest::collection::vec(op(), 1..30),
        segment_bytes in 150u64..3000,
        segments_per_budget in 1u64..5,
        machines in 1usize..3,
    ) {
        let d = tempfile::tempdir().unwrap();
        let budget = StoreBudget::new(segment_bytes * segments_per_budget, segment_bytes).unwrap();
        let mut store = LogStore::open(d.path(), budget).unwrap();
        let mut model: Vec<NewLine> = Vec::new();
        for op in ops {
            match op {
                Op::Append(n) => {
                    let start = model.len() as u64;
                    let batch: Vec<NewLine> = (start + 1..=start + n as u64)
                        .map(|i| line(i, &format!("m{}", i % machines as u64)))
                        .collect();
                    let last = store.append(&batch).unwrap();
                    model.extend(batch);
                    prop_assert_eq!(last, model.len() as u64);
                }
                Op::Reopen => {
                    drop(store);
                    store = LogStore::open(d.path(), budget).unwrap();
                }
            }
            let stats = store.stats();
            prop_assert_eq!(stats.last_seq, model.len() as u64);
            prop_assert_eq!(stats.rotated_lines + stats.retained_lines, model.len() as u64);
            prop_assert!(stats.bytes <= budget.max_bytes || stats.segments == 1);
            prop_assert_eq!(store.last_cursor(), model.last().map(|l| l.cursor.as_str()));
            for m in 0..machines {
                let name = format!("m{m}");
                let want = model.iter().rev().find(|l| l.machine == name).map(|l| l.cursor.as_str());
                prop_assert_eq!(store.cursor_for(&name), want);
            }
        }
        let back = read_all(d.path());
        let rotated = usize::try_from(store.stats().rotated_lines).unwrap();
        prop_assert_eq!(back.len(), model.len() - rotated);
        for (b, (i, m)) in back.iter().zip(model.iter().enumerate().skip(rotated)) {
            prop_assert_eq!(b.seq, i as u64 + 1);
            prop_assert!(same(b, m));
        }
    }
}

// ---- A full disk (root: mounts a tiny tmpfs) ----

fn realsys_gate(reason: &str) -> bool {
    if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
        panic!("TWINE_REQUIRE_REALSYS=1 but the real system is not usable: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// A mounted tmpfs, unmounted (lazily, so even a leaked fd cannot keep it) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .map_err(|e| format!("cannot mount a tmpfs (needs root): {e}"))?;
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.dir.path().display());
        }
    }
}

#[test]
fn a_full_disk_is_disk_full_and_the_store_stays_consistent() {
    let fs = match Tmpfs::mount("256k") {
        Ok(fs) => fs,
        Err(reason) => {
            realsys_gate(&reason);
            return;
        }
    };
    let dir = fs.dir.path().join("logs");
    let budget = StoreBudget::new(1 << 20, 1 << 20).unwrap();
    let mut store = LogStore::open(&dir, budget).unwrap();
    store.append(&lines(1..=100)).unwrap();
    let seg = last_segment(&dir);
    let len_before = fs::metadata(&seg).unwrap().len();

    // Fill the file system to the last byte.
    let filler = fs.dir.path().join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![b'x'; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }

    let big: Vec<NewLine> = (101..=2000).map(|i| line(i, "m1")).collect();
    match store.append(&big) {
        Err(LogError::DiskFull { path }) => assert_eq!(path, seg),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    let msg = store.append(&big).unwrap_err().to_string();
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    // The partial record was cut away; the resume point did not move.
    assert_eq!(fs::metadata(&seg).unwrap().len(), len_before);
    assert_eq!(store.last_cursor(), Some(line(100, "m1").cursor.as_str()));
    assert_eq!(store.stats().last_seq, 100);
    drop(store);

    let reopened = LogStore::open(&dir, budget).unwrap();
    assert_eq!(reopened.stats().last_seq, 100);
    assert_eq!(
        reopened.last_cursor(),
        Some(line(100, "m1").cursor.as_str())
    );
    assert_eq!(read_all(&dir).len(), 100);
    drop(reopened);

    // With space again, appending continues where it stopped.
    drop(f);
    fs::remove_file(&filler).unwrap();
    let mut store = LogStore::open(&dir, budget).unwrap();
    assert_eq!(store.append(&big[..10]).unwrap(), 110);
    let seqs: Vec<u64> = read_all(&dir).iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=110).collect::<Vec<_>>());
}

//! Host tier: a real journald in a systemd-nspawn container writes a burst into
//! a host directory; the shipper moves it into the store with nothing lost or
//! duplicated, also across a SIGKILL of the shipper and across container
//! generations (one machine-id subdirectory each). Needs root; skips (or fails
//! under `TWINE_REQUIRE_REALSYS=1`) otherwise.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

#[path = "../../twine-spec/tests/support/nspawn.rs"]
#[allow(dead_code, unreachable_pub)]
mod nspawn;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use twine_agent::logs::{JournalShipper, LogStore, StoreBudget, journald_dropin};

const BURST: u64 = 100_000;
const CHILD_ENV: &str = "TWINE_LOGS_TEST_SHIPPER";

fn realsys_gate(reason: &str) -> bool {
    if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
        panic!("TWINE_REQUIRE_REALSYS=1 but the real system is not usable: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

fn usable() -> bool {
    match nspawn::unavailable() {
        None => true,
        Some(reason) => realsys_gate(&reason),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn budget() -> StoreBudget {
    StoreBudget::new(1 << 30, 16 << 20).unwrap()
}

/// Boots a container whose `/var/log/journal` is `share/journal` (the harness
/// binds only its share directory, so the bind happens inside, before
/// journald is restarted with the twine drop-in). The journal files of
/// earlier generations in `seed` are moved in first, as they would be in the
/// job's journal directory. Returns the container and the host journal
/// directory.
fn boot_with_journal(
    seed: Option<&Path>,
    new_machine_id: bool,
) -> Result<(nspawn::Container, PathBuf)> {
    let c = nspawn::Container::boot()?;
    let journal = c.share().join("journal");
    fs::create_dir(&journal)?;
    if let Some(seed) = seed {
        move_entries(seed, &journal)?;
    }
    let (rel, contents) = journald_dropin();
    let dropin = c.host_path(&format!("/{rel}"));
    fs::create_dir_all(dropin.parent().context("drop-in parent")?)?;
    fs::write(&dropin, contents)?;
    if new_machine_id {
        // PID 1 mounted a tmpfs file over the empty /etc/machine-id; journald
        // reads it when it starts.
        let out = c.exec(&["sh", "-ec", "systemd-id128 new > /etc/machine-id"]);
        ensure!(
            out.status.success(),
            "new machine id: {}",
            nspawn::describe(&out)
        );
    }
    let out = c.exec(&[
        "sh",
        "-ec",
        "mkdir -p /var/log/journal; mount --bind /twine/journal /var/log/journal; \
         systemctl restart systemd-journald; journalctl --flush",
    ]);
    ensure!(
        out.status.success(),
        "binding the journal: {}",
        nspawn::describe(&out)
    );
    // journald logs an unknown key where nobody sees it (before its journal
    // is open), so check every key against the parser table of the
    // container's own journald instead.
    let journald = fs::read(c.host_path("/usr/lib/systemd/systemd-journald"))?;
    for key in contents
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
    {
        let needle = format!("Journal.{key}");
        let known = journald
            .windows(needle.len() + 1)
            .any(|w| w.starts_with(needle.as_bytes()) && !w[needle.len()].is_ascii_alphanumeric());
        ensure!(known, "journald does not know the drop-in key {key}");
    }
    Ok((c, journal))
}

fn move_entries(from: &Path, to: &Path) -> Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        fs::rename(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

fn machine_id(c: &nspawn::Container) -> String {
    String::from_utf8_lossy(&c.exec(&["cat", "/etc/machine-id"]).stdout)
        .trim()
        .to_owned()
}

/// Runs a unit inside that prints `first..=last`, one number a line, and
/// waits until journald has everything on disk.
fn burst(c: &nspawn::Container, unit: &str, first: u64, last: u64) -> Result<Duration> {
    let started = Instant::now();
    let out = c.exec_timeout(
        &[
            "systemd-run",
            "--wait",
            "--quiet",
            &format!("--unit={unit}"),
            "-p",
            "StandardOutput=journal",
            "seq",
            &first.to_string(),
            &last.to_string(),
        ],
        Duration::from_secs(120),
    )?;
    ensure!(out.status.success(), "burst: {}", nspawn::describe(&out));
    let out = c.exec(&["journalctl", "--sync"]);
    ensure!(out.status.success(), "sync: {}", nspawn::describe(&out));
    Ok(started.elapsed())
}

/// Counts a unit's entries with journalctl itself (independent of the shipper).
fn journal_count(dir: &Path, unit: &str) -> Result<u64> {
    let out = Command::new("journalctl")
        .arg(format!("--directory={}", dir.display()))
        .args(["-o", "cat", "--no-pager", "-q"])
        .arg(format!("_SYSTEMD_UNIT={unit}"))
        .output()?;
    ensure!(out.status.success(), "journalctl: {out:?}");
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// The messages of `unit` in the store, parsed from the segment files
/// directly (not through `LogReader`), with their sequence numbers checked.
fn stored_messages(store: &Path, unit: &str) -> Result<Vec<String>> {
    let mut files: Vec<PathBuf> = fs::read_dir(store)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut expect_seq = None;
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f)?;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if i == 0 {
                ensure!(v.get("segment").is_some(), "{} has no header", f.display());
                continue;
            }
            let seq = v["seq"].as_u64().context("seq")?;
            if let Some(e) = expect_seq {
                ensure!(seq == e, "{}: seq {seq}, expected {e}", f.display());
            }
            expect_seq = Some(seq + 1);
            if v["unit"] == unit {
                out.push(v["msg"].as_str().context("msg")?.to_owned());
            }
        }
    }
    Ok(out)
}

fn assert_exactly(messages: &[String], first: u64, last: u64) {
    let expected = last - first + 1;
    assert_eq!(messages.len() as u64, expected, "line count");
    for (n, m) in (first..=last).zip(messages) {
        assert_eq!(m, &n.to_string(), "lines out of order or missing");
    }
}

#[test]
fn a_burst_of_100k_lines_arrives_in_order_exactly_once() {
    if !usable() {
        return;
    }
    let (c, journal) = boot_with_journal(None, false).unwrap();
    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("logs");
    let rt = runtime();

    // Follow while the burst runs: journald -> store end to end.
    let store = LogStore::open(&store_dir, budget()).unwrap();
    let mut shipper = JournalShipper::new(journal.clone(), vec!["burst.service".into()], store);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = rt.spawn(async move {
        let n = shipper.follow(stop_rx, Some(lines_tx)).await;
        (n, shipper)
    });
    let started = Instant::now();
    let burst_took = burst(&c, "burst", 1, BURST).unwrap();
    let mut forwarded = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (forwarded.len() as u64) < BURST && Instant::now() < deadline {
        match rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), lines_rx.recv()).await
        }) {
            Ok(Some(line)) => forwarded.push(line),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let end_to_end = started.elapsed();
    stop_tx.send(true).unwrap();
    let (shipped, shipper) = rt.block_on(follower).unwrap();
    let shipped = shipped.unwrap();
    while let Ok(line) = lines_rx.try_recv() {
        forwarded.push(line);
    }
    eprintln!(
        "end to end journald -> store: {BURST} lines in {end_to_end:?} ({:.0} lines/s); the writer took {burst_took:?}",
        BURST as f64 / end_to_end.as_secs_f64()
    );

    assert_eq!(journal_count(&journal, "burst.service").unwrap(), BURST);
    assert_eq!(shipped, BURST);
    let msgs: Vec<String> = forwarded.iter().map(|l| l.message.clone()).collect();
    assert_exactly(&msgs, 1, BURST);
    assert_exactly(
        &stored_messages(&store_dir, "burst.service").unwrap(),
        1,
        BURST,
    );
    assert_eq!(shipper.store().stats().last_seq, BURST);

    // Shipping the finished journal from scratch: journalctl -> store alone.
    let store = LogStore::open(&work.path().join("again"), budget()).unwrap();
    let mut again = JournalShipper::new(journal.clone(), vec!["burst.service".into()], store);
    let t = Instant::now();
    let n = rt.block_on(again.drain()).unwrap();
    let took = t.elapsed();
    eprintln!(
        "drain of a finished journal: {n} lines in {took:?} ({:.0} lines/s)",
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(n, BURST);
    // A second drain finds nothing new.
    assert_eq!(rt.block_on(again.drain()).unwrap(), 0);
    compare_output_formats(&journal);
    drop(c);
}

/// Prints how long journalctl takes to print the burst in each candidate
/// output format (the shipper uses the first); informative, not asserted.
fn compare_output_formats(journal: &Path) {
    for args in [
        &["-o", "json", "--output-fields=MESSAGE,_SYSTEMD_UNIT"][..],
        &["-o", "json"][..],
        &["-o", "export"][..],
        &["-o", "export", "--output-fields=MESSAGE,_SYSTEMD_UNIT"][..],
    ] {
        let t = Instant::now();
        let out = Command::new("journalctl")
            .arg(format!("--directory={}", journal.display()))
            .args(["--all", "--no-pager", "-q", "_SYSTEMD_UNIT=burst.service"])
            .args(args)
            .output()
            .unwrap();
        let took = t.elapsed();
        assert!(out.status.success());
        eprintln!(
            "journalctl {args:?}: {BURST} entries, {} bytes, {took:?} ({:.0} entries/s)",
            out.stdout.len(),
            BURST as f64 / took.as_secs_f64()
        );
    }
}

#[test]
fn journalctl_failures_name_the_directory_and_keep_the_store() {
    let have = Command::new("journalctl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have && !realsys_gate("journalctl is not installed (apt: systemd)") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let journal = work.path().join("journal");
    let source = journal.join("0123456789abcdef0123456789abcdef");
    fs::create_dir_all(&source).unwrap();
    let store_dir = work.path().join("logs");
    let rt = runtime();

    // No journal files yet: nothing to ship, no error.
    let store = LogStore::open(&store_dir, budget()).unwrap();
    let mut shipper = JournalShipper::new(journal.clone(), vec!["a.service".into()], store);
    assert_eq!(rt.block_on(shipper.drain()).unwrap(), 0);

    // A resume cursor journalctl cannot seek to.
    let mut store = shipper.into_store();
    store
        .append(&[twine_agent::logs::NewLine {
            realtime_usec: 1,
            machine: "0123456789abcdef0123456789abcdef".into(),
            unit: "a.service".into(),
            message: "m".into(),
            cursor: "not-a-cursor".into(),
        }])
        .unwrap();
    let mut shipper = JournalShipper::new(journal.clone(), vec!["a.service".into()], store);
    match rt.block_on(shipper.drain()) {
        Err(twine_agent::logs::LogError::Journalctl { dir, stderr, .. }) => {
            assert_eq!(dir, source);
            assert!(stderr.contains("cursor"), "{stderr}");
        }
        other => panic!("expected a journalctl failure, got {other:?}"),
    }
    assert_eq!(shipper.store().stats().last_seq, 1);

    // A missing journal directory is an error that names it.
    let missing = work.path().join("missing");
    let mut shipper = JournalShipper::new(missing.clone(), vec![], shipper.into_store());
    let err = rt.block_on(shipper.drain()).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

/// Not a test on its own: the shipper process that the SIGKILL test starts
/// and kills. Does nothing unless the environment says where to ship.
#[test]
fn shipper_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (journal, rest) = spec.split_once('\n').unwrap();
    let (store_dir, unit) = rest.split_once('\n').unwrap();
    let store = LogStore::open(Path::new(store_dir), budget()).unwrap();
    let mut shipper = JournalShipper::new(journal.into(), vec![unit.into()], store);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    runtime().block_on(shipper.follow(stop_rx, None)).unwrap();
}

fn stored_lines(store_dir: &Path) -> u64 {
    LogStore::read(store_dir, 1).map_or(0, |r| r.filter(Result::is_ok).count() as u64)
}

fn store_bytes(store_dir: &Path) -> u64 {
    fs::read_dir(store_dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Starts the shipper in a child process and SIGKILLs it once it has stored
/// more than `before` lines; fails unless it was killed before `total`.
fn ship_and_kill(
    journal: &Path,
    store_dir: &Path,
    unit: &str,
    before: u64,
    total: u64,
) -> Result<u64> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "shipper_child_process", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{}\n{}\n{unit}", journal.display(), store_dir.display()),
        )
        .spawn()?;
    // Watch the size (cheap), not the line count, so the kill lands early.
    let bytes_before = store_bytes(store_dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if store_bytes(store_dir) > bytes_before + 4096 {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the shipper child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let after = stored_lines(store_dir);
    ensure!(
        after > before && after < total,
        "the shipper was not killed half-way: {after} of {before}..{total} stored"
    );
    Ok(after)
}

#[test]
fn sigkill_and_container_generations_lose_and_duplicate_nothing() {
    if !usable() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let job_journal = work.path().join("journal");
    let store_dir = work.path().join("logs");
    let rt = runtime();
    let mut ids = Vec::new();
    let mut last = 0;
    // Generation 2 keeps the machine id (journald continues the same files),
    // generation 3 gets a new one (a second subdirectory).
    for (generation, new_machine_id) in [(1, false), (2, false), (3, true)] {
        let seed = (generation > 1).then_some(job_journal.as_path());
        let (c, journal) = boot_with_journal(seed, new_machine_id).unwrap();
        ids.push(machine_id(&c));
        let before = last;
        last += BURST;
        burst(&c, "burst", before + 1, last).unwrap();
        // journalctl --directory reads every machine-id subdirectory.
        assert_eq!(journal_count(&journal, "burst.service").unwrap(), last);
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(fs::read_dir(&journal).unwrap().count(), distinct.len());

        let killed_at = ship_and_kill(&journal, &store_dir, "burst.service", before, last).unwrap();
        eprintln!(
            "generation {generation} (machine id {}): shipper SIGKILLed with {killed_at} of {last} lines stored",
            ids[generation - 1]
        );
        let store = LogStore::open(&store_dir, budget()).unwrap();
        assert_eq!(store.stats().last_seq, killed_at);
        let mut shipper = JournalShipper::new(journal.clone(), vec!["burst.service".into()], store);
        assert_eq!(rt.block_on(shipper.drain()).unwrap(), last - killed_at);
        assert_exactly(
            &stored_messages(&store_dir, "burst.service").unwrap(),
            1,
            last,
        );
        assert_eq!(rt.block_on(shipper.drain()).unwrap(), 0);
        drop(shipper);

        // The job's journal directory outlives the container: move it out of
        // the harness's share directory (removed on drop); the bind mount
        // inside follows the directory, so journald closes its files into it.
        fs::rename(&journal, &job_journal).unwrap();
        drop(c);
    }
    assert_ne!(ids[1], ids[2]);
}

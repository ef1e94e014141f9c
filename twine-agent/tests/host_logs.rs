//! Host tier: a real journald in a systemd-nspawn container writes a burst into
//! a host directory; the shipper moves it into the store with nothing lost or
//! duplicated, also across a SIGKILL of the shipper and across container
//! generations (one machine-id subdirectory each). Needs root; skips (or fails
//! under `TWINE_REQUIRE_REALSYS=1`) otherwise.

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
/// journald is restarted with the twine drop-in). Returns the container and
/// the host journal directory.
fn boot_with_journal() -> Result<(nspawn::Container, PathBuf)> {
    let c = nspawn::Container::boot()?;
    let journal = c.share().join("journal");
    fs::create_dir(&journal)?;
    let (rel, contents) = journald_dropin();
    let dropin = c.host_path(&format!("/{rel}"));
    fs::create_dir_all(dropin.parent().context("drop-in parent")?)?;
    fs::write(&dropin, contents)?;
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
    Ok((c, journal))
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
    let (c, journal) = boot_with_journal().unwrap();
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
    assert_exactly(&stored_messages(&store_dir, "burst.service").unwrap(), 1, BURST);
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
    drop(c);
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

/// Starts the shipper in a child process and SIGKILLs it once it has stored
/// some but not all lines (or when `total` is reached, which fails the test).
fn ship_and_kill(journal: &Path, store_dir: &Path, unit: &str, total: u64) -> Result<u64> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "shipper_child_process", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{}\n{}\n{unit}", journal.display(), store_dir.display()),
        )
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = stored_lines(store_dir);
        if seen > 0 {
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
        seen > 0 && after < total,
        "the shipper was killed too late to test anything: {after} of {total} stored"
    );
    Ok(after)
}

#[test]
fn sigkill_and_a_new_container_generation_lose_and_duplicate_nothing() {
    if !usable() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let job_journal = work.path().join("journal");
    let store_dir = work.path().join("logs");
    fs::create_dir(&job_journal).unwrap();
    let rt = runtime();

    // Generation 1: a burst, a shipper killed half-way, a new shipper.
    let (c1, journal1) = boot_with_journal().unwrap();
    burst(&c1, "burst", 1, BURST).unwrap();
    let killed_at = ship_and_kill(&journal1, &store_dir, "burst.service", BURST).unwrap();
    eprintln!("shipper SIGKILLed with {killed_at} of {BURST} lines stored");
    let store = LogStore::open(&store_dir, budget()).unwrap();
    assert_eq!(store.stats().last_seq, killed_at);
    let mut shipper = JournalShipper::new(journal1.clone(), vec!["burst.service".into()], store);
    assert_eq!(rt.block_on(shipper.drain()).unwrap(), BURST - killed_at);
    assert_exactly(&stored_messages(&store_dir, "burst.service").unwrap(), 1, BURST);
    drop(shipper);

    // The container stops; its journal stays on the host (moved out of the
    // harness's share directory, which the harness removes).
    for e in fs::read_dir(&journal1).unwrap() {
        let e = e.unwrap();
        fs::rename(e.path(), job_journal.join(e.file_name())).unwrap();
    }
    drop(c1);

    // Generation 2: a new machine id, so a second subdirectory.
    let (c2, journal2) = boot_with_journal().unwrap();
    for e in fs::read_dir(&job_journal).unwrap() {
        let e = e.unwrap();
        fs::rename(e.path(), journal2.join(e.file_name())).unwrap();
    }
    burst(&c2, "burst", BURST + 1, 2 * BURST).unwrap();
    let machines: Vec<_> = fs::read_dir(&journal2).unwrap().collect();
    assert_eq!(machines.len(), 2, "one subdirectory per machine id");
    // journalctl --directory reads both subdirectories.
    assert_eq!(journal_count(&journal2, "burst.service").unwrap(), 2 * BURST);

    let killed_at = ship_and_kill(&journal2, &store_dir, "burst.service", 2 * BURST).unwrap();
    let store = LogStore::open(&store_dir, budget()).unwrap();
    assert_eq!(store.stats().last_seq, killed_at);
    let mut shipper = JournalShipper::new(journal2.clone(), vec!["burst.service".into()], store);
    rt.block_on(shipper.drain()).unwrap();
    assert_exactly(
        &stored_messages(&store_dir, "burst.service").unwrap(),
        1,
        2 * BURST,
    );
    assert_eq!(rt.block_on(shipper.drain()).unwrap(), 0);
    drop(c2);
}

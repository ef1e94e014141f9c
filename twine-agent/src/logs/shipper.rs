//! Ships the job's journal files into its [`LogStore`].
//!
//! The journal is read with the host's `journalctl` (spawned with
//! `tokio::process`), not with sd-journal: this keeps libsystemd out of the
//! agent's link line, and journalctl's `-o json` output is stable across
//! systemd versions (measured against `-o export` in `docs/`: see the bench
//! and the host test for figures).
//!
//! **One journalctl per journal source.** Every container generation has a
//! machine id of its own, so the job's journal directory holds one
//! subdirectory per generation, each written by a different journald with its
//! own sequence-number space. `journalctl --directory=DIR` does read those
//! subdirectories, but it merges them by realtime, and a single
//! `--after-cursor` then resumes by timestamp across sources: an entry that a
//! slower journald writes with an older timestamp after the resume point would
//! be skipped. So the shipper runs `journalctl --directory=DIR/MACHINE
//! --after-cursor=CURSOR(MACHINE)` per source, where within one journald the
//! order is exact, and the store keeps one cursor per source
//! ([`LogStore::cursor_for`]). Sources are shipped one after another, oldest
//! directory first; lines of one source keep the journal's order.
//!
//! **No loss, no duplicate.** The cursor of each line is stored in the same
//! record as the line, and a batch is durable before the next is read from the
//! pipe; whatever journalctl printed beyond the last durable batch when the
//! agent dies is read again after `--after-cursor`.
//!
//! **Messages** are kept as UTF-8: journalctl prints a non-UTF-8 `MESSAGE` as
//! an array of bytes, which is decoded lossily (U+FFFD for invalid
//! sequences). A field that occurs several times in one entry is joined with
//! newlines. `--all` is passed, so fields over 4096 bytes are not replaced by
//! `null`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::LogError;
use super::store::{LogLine, LogStore, NewLine};

/// Lines per store append, at most (one fdatasync each).
const MAX_BATCH: usize = 16 * 1024;
/// How often [`JournalShipper::follow`] looks for new entries.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How much of journalctl's stderr goes into an error.
const STDERR_MAX: usize = 4096;

/// Reads the journal of one job and appends the entries of its units to the
/// job's [`LogStore`].
#[derive(Debug)]
pub struct JournalShipper {
    journal_dir: PathBuf,
    units: Vec<String>,
    store: LogStore,
    journalctl: PathBuf,
}

impl JournalShipper {
    /// A shipper for the journal directory `journal_dir` (the host side of the
    /// containers' `/var/log/journal`), keeping the entries whose
    /// `_SYSTEMD_UNIT` is one of `units` (all entries when `units` is empty).
    pub fn new(journal_dir: PathBuf, units: Vec<String>, store: LogStore) -> JournalShipper {
        JournalShipper {
            journal_dir,
            units,
            store,
            journalctl: PathBuf::from("journalctl"),
        }
    }

    /// Uses `program` instead of `journalctl` from `PATH`.
    pub fn with_journalctl(mut self, program: impl Into<PathBuf>) -> JournalShipper {
        self.journalctl = program.into();
        self
    }

    /// The store.
    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> LogStore {
        self.store
    }

    /// Ships everything up to the current end of the journal; returns the
    /// number of lines stored.
    pub async fn drain(&mut self) -> Result<u64, LogError> {
        self.drain_forwarding(None).await
    }

    /// Ships lines as they arrive (polling every 100 ms) until `stop` turns
    /// true or its sender is dropped, then drains once more. Every stored line
    /// is also sent to `lines`, when given (a closed receiver is ignored).
    /// Returns the number of lines stored.
    pub async fn follow(
        &mut self,
        mut stop: watch::Receiver<bool>,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
    ) -> Result<u64, LogError> {
        let mut shipped = 0;
        loop {
            shipped += self.drain_forwarding(lines.as_ref()).await?;
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
        shipped += self.drain_forwarding(lines.as_ref()).await?;
        Ok(shipped)
    }

    async fn drain_forwarding(
        &mut self,
        lines: Option<&mpsc::UnboundedSender<LogLine>>,
    ) -> Result<u64, LogError> {
        let mut shipped = 0;
        for (machine, dir) in self.sources()? {
            shipped += self.ship_source(&machine, &dir, lines).await?;
        }
        Ok(shipped)
    }

    /// The machine-id subdirectories, oldest first (known sources first).
    fn sources(&self) -> Result<Vec<(String, PathBuf)>, LogError> {
        let dir = &self.journal_dir;
        let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("listing", dir, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LogError::io("listing", dir, e))?;
            let path = entry.path();
            let meta =
                std::fs::metadata(&path).map_err(|e| LogError::io("inspecting", &path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !meta.is_dir() || name.starts_with('.') {
                continue;
            }
            let born = meta
                .created()
                .or_else(|_| meta.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let known = self.store.cursor_for(&name).is_some();
            found.push((!known, born, name, path));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, _, n, p)| (n, p)).collect())
    }

    fn command(&self, dir: &Path, cursor: Option<&str>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.journalctl);
        cmd.arg(format!("--directory={}", dir.display()))
            .args([
                "--output=json",
                "--all",
                "--no-pager",
                "--quiet",
                "--output-fields=MESSAGE,_SYSTEMD_UNIT",
            ])
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "");
        if let Some(cursor) = cursor {
            cmd.arg(format!("--after-cursor={cursor}"));
        }
        for unit in &self.units {
            cmd.arg(format!("_SYSTEMD_UNIT={unit}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn ship_source(
        &mut self,
        machine: &str,
        dir: &Path,
        forward: Option<&mpsc::UnboundedSender<LogLine>>,
    ) -> Result<u64, LogError> {
        let mut child = self
            .command(dir, self.store.cursor_for(machine))
            .spawn()
            .map_err(|source| LogError::Spawn {
                program: self.journalctl.clone(),
                dir: dir.into(),
                source,
            })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(LogError::io(
                "reading journalctl output for",
                dir,
                std::io::Error::other("no pipe"),
            ));
        };
        let stderr_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.take(STDERR_MAX as u64).read_to_end(&mut buf).await;
            buf
        });
        let (tx, mut rx) = mpsc::channel(8);
        let parser = tokio::spawn(parse_entries(
            BufReader::with_capacity(1 << 20, stdout),
            machine.to_owned(),
            dir.to_owned(),
            tx,
        ));

        let mut shipped = 0;
        let result = async {
            while let Some(first) = rx.recv().await {
                let mut batch: Vec<NewLine> = first?;
                // Take whatever else is ready: bigger batches while a sync runs.
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(more?),
                        Err(_) => break,
                    }
                }
                let last = append_blocking(&mut self.store, &batch)?;
                shipped += batch.len() as u64;
                if let Some(tx) = forward {
                    let first_seq = last + 1 - batch.len() as u64;
                    for (seq, line) in (first_seq..).zip(batch) {
                        let _ = tx.send(LogLine {
                            seq,
                            realtime_usec: line.realtime_usec,
                            machine: line.machine,
                            unit: line.unit,
                            message: line.message,
                            cursor: line.cursor,
                        });
                    }
                }
            }
            Ok::<(), LogError>(())
        }
        .await;
        if result.is_err() {
            let _ = child.start_kill();
        }
        drop(rx);
        let status = child
            .wait()
            .await
            .map_err(|e| LogError::io("waiting for journalctl reading", dir, e))?;
        parser.abort();
        let stderr = stderr_task.await.unwrap_or_default();
        result?;
        if !status.success() {
            return Err(LogError::Journalctl {
                program: self.journalctl.clone(),
                dir: dir.into(),
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
            });
        }
        Ok(shipped)
    }
}

/// Appends on a blocking-capable thread when the runtime allows it: an
/// fdatasync must not stall the other tasks of a multi-thread runtime.
fn append_blocking(store: &mut LogStore, batch: &[NewLine]) -> Result<u64, LogError> {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(|| store.append(batch))
    } else {
        store.append(batch)
    }
}

async fn parse_entries<R: tokio::io::AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    machine: String,
    dir: PathBuf,
    tx: mpsc::Sender<Result<Vec<NewLine>, LogError>>,
) {
    let mut batch = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = tx
                    .send(Err(LogError::io("reading journalctl output for", &dir, e)))
                    .await;
                return;
            }
        }
        if !line.ends_with(b"\n") {
            // journalctl was killed mid-line; its cursor was not stored.
            break;
        }
        match parse_entry(&line, &machine) {
            Ok(entry) => batch.push(entry),
            Err(reason) => {
                let _ = tx
                    .send(Err(LogError::JournalEntry {
                        dir: dir.clone(),
                        reason,
                        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
                    }))
                    .await;
                return;
            }
        }
        if batch.len() >= MAX_BATCH || reader.buffer().is_empty() {
            if tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch)).await;
    }
}

#[derive(Deserialize)]
struct JsonEntry {
    #[serde(rename = "__CURSOR")]
    cursor: String,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: String,
    #[serde(rename = "_SYSTEMD_UNIT", default)]
    unit: Field,
    #[serde(rename = "MESSAGE", default)]
    message: Field,
}

/// A journal field as journalctl's JSON prints it: a string, an array of
/// bytes (not valid UTF-8), `null` (too large without `--all`), or an array
/// of those (the field occurs more than once).
#[derive(Default)]
struct Field(String);

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        d.deserialize_any(FieldVisitor).map(Field)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a journal field: a string, an array of bytes, null, or an array of those")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        let mut bytes = Vec::new();
        let mut values: Vec<String> = Vec::new();
        while let Some(item) = seq.next_element::<ByteOrField>()? {
            match item {
                ByteOrField::Byte(b) => bytes.push(b),
                ByteOrField::Field(s) => values.push(s.0),
            }
        }
        if values.is_empty() {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            Ok(values.join("\n"))
        }
    }
}

enum ByteOrField {
    Byte(u8),
    Field(Field),
}

impl<'de> Deserialize<'de> for ByteOrField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteOrField, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteOrField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte or a journal field")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteOrField, E> {
                u8::try_from(v)
                    .map(ByteOrField::Byte)
                    .map_err(|_| E::custom(format!("{v} is not a byte")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteOrField, E> {
                FieldVisitor
                    .visit_str(v)
                    .map(|s| ByteOrField::Field(Field(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ByteOrField, E> {
                Ok(ByteOrField::Field(Field::default()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ByteOrField, A::Error> {
                FieldVisitor
                    .visit_seq(seq)
                    .map(|s| ByteOrField::Field(Field(s)))
            }
        }
        d.deserialize_any(V)
    }
}

/// One line of `journalctl -o json` as a store line of source `machine`.
fn parse_entry(line: &[u8], machine: &str) -> Result<NewLine, String> {
    let entry: JsonEntry = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let realtime_usec = entry
        .realtime
        .parse()
        .map_err(|e| format!("__REALTIME_TIMESTAMP {:?}: {e}", entry.realtime))?;
    Ok(NewLine {
        realtime_usec,
        machine: machine.to_owned(),
        unit: entry.unit.0,
        message: entry.message.0,
        cursor: entry.cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_bytes_multi_and_null_fields() {
        let plain = br#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000000001","__MONOTONIC_TIMESTAMP":"5","_BOOT_ID":"b","MESSAGE":"hello","_SYSTEMD_UNIT":"a.service"}"#;
        let l = parse_entry(plain, "m").unwrap();
        assert_eq!(
            (l.message.as_str(), l.unit.as_str(), l.realtime_usec),
            ("hello", "a.service", 1_700_000_000_000_001)
        );
        assert_eq!(l.cursor, "s=1;i=2");

        let bytes = br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1","MESSAGE":[104,105,255,10,33]}"#;
        let l = parse_entry(bytes, "m").unwrap();
        assert_eq!(l.message, "hi\u{fffd}\n!");
        assert_eq!(l.unit, "");

        let multi = br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1","MESSAGE":["a",[98,255],null]}"#;
        assert_eq!(parse_entry(multi, "m").unwrap().message, "a\nb\u{fffd}\n");

        let null = br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1","MESSAGE":null}"#;
        assert_eq!(parse_entry(null, "m").unwrap().message, "");
    }

    #[test]
    fn rejects_entries_without_cursor_or_with_bad_timestamps() {
        assert!(parse_entry(br#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":"x"}"#, "m").is_err());
        assert!(parse_entry(br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"x"}"#, "m").is_err());
        assert!(
            parse_entry(
                br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1","MESSAGE":[300]}"#,
                "m"
            )
            .is_err()
        );
    }
}

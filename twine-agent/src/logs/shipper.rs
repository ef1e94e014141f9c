//! Ships the job's journal files into its [`LogStore`].
//!
//! The journal is read with the host's `journalctl` (spawned with
//! `tokio::process`), not with sd-journal: this keeps libsystemd out of the
//! agent's link line. The output format is the Journal Export Format with
//! `--output-fields=MESSAGE,_SYSTEMD_UNIT` (the cursor and timestamps are
//! always printed): on the host test's 100,000-line burst, journalctl 252
//! printed about 210,000 entries/s that way, against 166,000 for `-o export`
//! with every field, 102,000 for `-o json --output-fields=` and 49,000 for
//! plain `-o json`; journalctl, not the store, is the bottleneck. Export also
//! carries binary fields as raw bytes, where JSON turns them into number
//! arrays.
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
//! A generation may also keep the machine id of the one before (the
//! systemd-nspawn containers of the host tests do: an empty `/etc/machine-id`
//! in the image); journald then continues the files in the same
//! subdirectory, with the same sequence-number space, and the stored cursor
//! stays valid. The host test covers both cases.
//!
//! **Following** polls (every 100 ms, one short-lived journalctl per source)
//! rather than keeping `journalctl --follow` processes: a new generation adds
//! a source at any time, and a poll is a plain drain, so there is a single
//! code path to reason about for loss and duplication.
//!
//! **No loss, no duplicate.** The cursor of each line is stored in the same
//! record as the line, and a batch is durable before the next is read from the
//! pipe; whatever journalctl printed beyond the last durable batch when the
//! agent dies is read again after `--after-cursor`.
//!
//! **Messages** are stored as UTF-8: a `MESSAGE` that is not valid UTF-8
//! (a binary field in the export format) is decoded lossily, U+FFFD for each
//! invalid sequence. A field that occurs several times in one entry is joined
//! with newlines. `--all` is passed so that no field is ever shortened.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

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
                "--output=export",
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
    let mut scratch = Vec::new();
    loop {
        let entry = match read_export_entry(&mut reader, &mut scratch, &machine).await {
            Ok(Some(entry)) => entry,
            // The end, or journalctl killed mid-entry (its cursor was not stored).
            Ok(None) => break,
            Err(ExportError::Io(e)) => {
                let _ = tx
                    .send(Err(LogError::io("reading journalctl output for", &dir, e)))
                    .await;
                return;
            }
            Err(ExportError::Format(reason)) => {
                let _ = tx
                    .send(Err(LogError::JournalEntry {
                        dir: dir.clone(),
                        reason,
                        line: String::from_utf8_lossy(&scratch[..scratch.len().min(200)])
                            .into_owned(),
                    }))
                    .await;
                return;
            }
        };
        batch.push(entry);
        if (batch.len() >= MAX_BATCH || reader.buffer().is_empty())
            && tx.send(Ok(std::mem::take(&mut batch))).await.is_err()
        {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch)).await;
    }
}

#[derive(Debug)]
enum ExportError {
    Io(std::io::Error),
    Format(String),
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Io(e)
    }
}

/// Reads one entry of the Journal Export Format
/// (<https://systemd.io/JOURNAL_EXPORT_FORMATS/>): `NAME=value` lines, or for
/// a value that is not printable text `NAME`, a little-endian u64 length, the
/// bytes and a newline; an empty line ends the entry. `None` at the end of
/// the stream, also when it ends inside an entry. `scratch` holds the last
/// line read, for error messages.
async fn read_export_entry<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    scratch: &mut Vec<u8>,
    machine: &str,
) -> Result<Option<NewLine>, ExportError> {
    let mut cursor = None;
    let mut realtime = None;
    let mut unit: Option<Vec<u8>> = None;
    let mut message: Option<Vec<u8>> = None;
    loop {
        scratch.clear();
        if reader.read_until(b'\n', scratch).await? == 0 || !scratch.ends_with(b"\n") {
            return Ok(None);
        }
        scratch.pop();
        if scratch.is_empty() {
            break;
        }
        let (name, value): (&[u8], Vec<u8>) =
            if let Some(eq) = scratch.iter().position(|&b| b == b'=') {
                (&scratch[..eq], scratch[eq + 1..].to_vec())
            } else {
                let mut len = [0u8; 8];
                match reader.read_exact(&mut len).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                let len = usize::try_from(u64::from_le_bytes(len))
                    .map_err(|_| ExportError::Format("binary field too large".into()))?;
                let mut value = vec![0u8; len + 1];
                match reader.read_exact(&mut value).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                if value.pop() != Some(b'\n') {
                    return Err(ExportError::Format(
                        "binary field not followed by a newline".into(),
                    ));
                }
                (&scratch[..], value)
            };
        match name {
            b"__CURSOR" => cursor = Some(value),
            b"__REALTIME_TIMESTAMP" => realtime = Some(value),
            b"_SYSTEMD_UNIT" => unit = Some(value),
            b"MESSAGE" => match &mut message {
                // A field that occurs more than once: keep every value.
                Some(m) => {
                    m.push(b'\n');
                    m.extend_from_slice(&value);
                }
                None => message = Some(value),
            },
            _ => {}
        }
    }
    let text = |v: Vec<u8>| {
        String::from_utf8(v).map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    let cursor = cursor
        .map(text)
        .ok_or_else(|| ExportError::Format("an entry without __CURSOR".into()))?
        .map_err(|c| ExportError::Format(format!("a cursor that is not UTF-8: {c}")))?;
    let realtime_usec = realtime
        .and_then(|r| std::str::from_utf8(&r).ok()?.parse().ok())
        .ok_or_else(|| ExportError::Format(format!("no valid __REALTIME_TIMESTAMP at {cursor}")))?;
    let lossy = |v: Option<Vec<u8>>| text(v.unwrap_or_default()).unwrap_or_else(|lossy| lossy);
    Ok(Some(NewLine {
        realtime_usec,
        machine: machine.to_owned(),
        unit: lossy(unit),
        message: lossy(message),
        cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<NewLine>, ExportError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut reader = BufReader::new(input);
            let mut scratch = Vec::new();
            let mut out = Vec::new();
            while let Some(e) = read_export_entry(&mut reader, &mut scratch, "m").await? {
                out.push(e);
            }
            Ok(out)
        })
    }

    fn binary(name: &str, value: &[u8]) -> Vec<u8> {
        let mut v = format!("{name}\n").into_bytes();
        v.extend_from_slice(&(value.len() as u64).to_le_bytes());
        v.extend_from_slice(value);
        v.push(b'\n');
        v
    }

    #[test]
    fn parses_text_binary_and_repeated_fields() {
        let mut input = b"__CURSOR=s=1;i=2\n__REALTIME_TIMESTAMP=1700000000000001\n__MONOTONIC_TIMESTAMP=5\n_BOOT_ID=b\nMESSAGE=hello\n_SYSTEMD_UNIT=a.service\n\n".to_vec();
        input.extend_from_slice(b"__CURSOR=c2\n__REALTIME_TIMESTAMP=2\n");
        input.extend(binary("MESSAGE", b"hi\xff\n=!"));
        input.extend_from_slice(b"MESSAGE=again\n\n");
        let got = parse_all(&input).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].message.as_str(),
                got[0].unit.as_str(),
                got[0].realtime_usec
            ),
            ("hello", "a.service", 1_700_000_000_000_001)
        );
        assert_eq!(got[0].cursor, "s=1;i=2");
        assert_eq!(got[1].message, "hi\u{fffd}\n=!\nagain");
        assert_eq!(got[1].unit, "");
    }

    #[test]
    fn a_truncated_stream_yields_only_complete_entries() {
        let full = b"__CURSOR=c1\n__REALTIME_TIMESTAMP=1\nMESSAGE=a\n\n__CURSOR=c2\n__REALTIME_TIMESTAMP=2\nMESSAGE=b\n\n";
        let first_end = full.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        for cut in 0..=full.len() {
            let got = parse_all(&full[..cut]).unwrap();
            let complete = usize::from(cut >= first_end) + usize::from(cut == full.len());
            assert_eq!(got.len(), complete, "cut at {cut}");
        }
        let mut bin = b"__CURSOR=c\n__REALTIME_TIMESTAMP=1\n".to_vec();
        bin.extend(binary("MESSAGE", b"\x00\x01\x02"));
        bin.push(b'\n');
        for cut in 0..bin.len() {
            assert!(parse_all(&bin[..cut]).unwrap().is_empty(), "cut at {cut}");
        }
        assert_eq!(parse_all(&bin).unwrap()[0].message, "\0\u{1}\u{2}");
    }

    #[test]
    fn rejects_entries_without_cursor_or_with_bad_timestamps() {
        assert!(parse_all(b"__REALTIME_TIMESTAMP=1\nMESSAGE=x\n\n").is_err());
        assert!(parse_all(b"__CURSOR=c\n__REALTIME_TIMESTAMP=x\n\n").is_err());
        let mut bad = b"__CURSOR=c\n__REALTIME_TIMESTAMP=1\n".to_vec();
        let mut field = binary("MESSAGE", b"abc");
        *field.last_mut().unwrap() = b'X';
        bad.extend(field);
        bad.push(b'\n');
        assert!(parse_all(&bad).is_err());
    }
}

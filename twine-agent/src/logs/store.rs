//! The host log store of one job: append-only segment files under a byte budget.
//!
//! Layout: `DIR/seg-<first seq, 20 digits>.log`, one JSON object per line.
//! The first line of every segment is a header
//! `{"segment":{"first_seq":N,"cursors":{MACHINE:CURSOR,...}}}` holding the
//! resume cursor of every journal source as of the segment's start, so the
//! oldest segment can be deleted without losing a cursor. Every other line is a
//! record: `{"seq":..,"ts":..,"machine":..,"unit":..,"msg":..,"cursor":..}`.
//!
//! Durability: [`LogStore::append`] writes a batch with one `write` and one
//! `fdatasync`. After a crash the last segment may end in a torn record (a
//! line without its newline, or garbage such as zeros from a size update that
//! outran the data); [`LogStore::open`] truncates it away. Since each record
//! carries its own cursor, whatever prefix survived is consistent with the
//! resume point derived from it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LogError;

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".log";
const HEADER_PREFIX: &[u8] = b"{\"segment\":";

/// How much disk the store of one job may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBudget {
    /// The total size of all segments; the oldest segments are deleted (and
    /// their lines counted) when it is exceeded.
    pub max_bytes: u64,
    /// A segment is closed once it reaches this size, so rotation frees space
    /// in steps of about this much.
    pub segment_bytes: u64,
}

impl StoreBudget {
    /// A budget, checked: both sizes positive and `segment_bytes <= max_bytes`.
    pub fn new(max_bytes: u64, segment_bytes: u64) -> Result<StoreBudget, LogError> {
        if max_bytes == 0 || segment_bytes == 0 || segment_bytes > max_bytes {
            return Err(LogError::InvalidBudget {
                max_bytes,
                segment_bytes,
            });
        }
        Ok(StoreBudget {
            max_bytes,
            segment_bytes,
        })
    }
}

impl Default for StoreBudget {
    /// 64 MiB in segments of 8 MiB.
    fn default() -> Self {
        StoreBudget {
            max_bytes: 64 << 20,
            segment_bytes: 8 << 20,
        }
    }
}

/// A line to append: what the journal said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    /// The journal's `__REALTIME_TIMESTAMP` (µs since the epoch).
    pub realtime_usec: u64,
    /// The journal source: the machine-id subdirectory of the job's journal
    /// directory (one per container generation).
    pub machine: String,
    /// `_SYSTEMD_UNIT`.
    pub unit: String,
    /// `MESSAGE`. Non-UTF-8 bytes are replaced by U+FFFD (see the shipper).
    pub message: String,
    /// The journal cursor of the entry (`__CURSOR`): the resume point.
    pub cursor: String,
}

/// A stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The store sequence number: 1-based and consecutive within the store.
    pub seq: u64,
    /// The journal's realtime timestamp (µs since the epoch).
    #[serde(rename = "ts")]
    pub realtime_usec: u64,
    /// The journal source (machine-id subdirectory).
    pub machine: String,
    /// `_SYSTEMD_UNIT`.
    pub unit: String,
    /// `MESSAGE`.
    #[serde(rename = "msg")]
    pub message: String,
    /// The journal cursor.
    pub cursor: String,
}

/// Counters of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Lines deleted by rotation since the store began (all lines before the
    /// oldest retained one: sequence numbers start at 1).
    pub rotated_lines: u64,
    /// Lines still on disk.
    pub retained_lines: u64,
    /// Bytes of all segments on disk.
    pub bytes: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// The last sequence number assigned (0 when the store is empty).
    pub last_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    segment: SegmentHeader,
}

#[derive(Serialize, Deserialize)]
struct SegmentHeader {
    first_seq: u64,
    cursors: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    ts: u64,
    machine: &'a str,
    unit: &'a str,
    msg: &'a str,
    cursor: &'a str,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    bytes: u64,
    lines: u64,
}

/// The log store of one job, open for appending. One writer per directory
/// (the agent holds the state-dir lock); readers use [`LogStore::read`].
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    budget: StoreBudget,
    /// Closed segments, oldest first.
    closed: VecDeque<Segment>,
    /// The segment being appended to.
    current: Segment,
    file: File,
    next_seq: u64,
    cursors: BTreeMap<String, String>,
    last_cursor: Option<String>,
    buf: Vec<u8>,
    /// Set when a failed append could not be cut back: appending after the
    /// leftover bytes would bury them mid-file, so the store must be reopened
    /// (which truncates them).
    poisoned: bool,
}

fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The segments in `dir`, oldest first: (first seq from the name, path).
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("listing", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if let Ok(first) = num.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("syncing", dir, e))
}

fn parse_header(line: &[u8], path: &Path) -> Result<SegmentHeader, LogError> {
    if !line.starts_with(HEADER_PREFIX) {
        return Err(LogError::Corrupt {
            path: path.into(),
            offset: 0,
            reason: "the segment does not start with its header".into(),
        });
    }
    serde_json::from_slice::<HeaderLine>(line)
        .map(|h| h.segment)
        .map_err(|e| LogError::Corrupt {
            path: path.into(),
            offset: 0,
            reason: format!("segment header: {e}"),
        })
}

/// Where a segment's scan stopped.
struct Scan {
    header: SegmentHeader,
    /// Records, in order.
    records: u64,
    /// The end of the last complete, valid record.
    good_len: u64,
    /// Why the rest (if any) is not valid.
    torn: Option<String>,
    last: Option<LogLine>,
}

/// Reads a whole segment, calling `each` on every record in order.
fn scan_segment(
    path: &Path,
    expect_first: u64,
    mut each: impl FnMut(&LogLine),
) -> Result<Scan, LogError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| LogError::io("reading", path, e))?;
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return Err(LogError::Corrupt {
            path: path.into(),
            offset: 0,
            reason: "torn segment header".into(),
        });
    };
    let header = parse_header(&data[..nl], path)?;
    if header.first_seq != expect_first {
        return Err(LogError::Corrupt {
            path: path.into(),
            offset: 0,
            reason: format!(
                "the header says the first record is {} but the file name says {expect_first}",
                header.first_seq
            ),
        });
    }
    let mut pos = nl + 1;
    let mut expected = expect_first;
    let mut records = 0;
    let mut last = None;
    let mut torn = None;
    while pos < data.len() {
        let Some(len) = data[pos..].iter().position(|&b| b == b'\n') else {
            torn = Some("a record without its newline".to_owned());
            break;
        };
        let line: LogLine = match serde_json::from_slice(&data[pos..pos + len]) {
            Ok(l) => l,
            Err(e) => {
                torn = Some(format!("record does not parse: {e}"));
                break;
            }
        };
        if line.seq != expected {
            return Err(LogError::SequenceGap {
                path: path.into(),
                expected,
                found: line.seq,
            });
        }
        each(&line);
        expected = expected.checked_add(1).ok_or(LogError::SequenceExhausted {
            path: path.into(),
            last: line.seq,
        })?;
        records += 1;
        last = Some(line);
        pos += len + 1;
    }
    Ok(Scan {
        header,
        records,
        good_len: pos as u64,
        torn,
        last,
    })
}

impl LogStore {
    /// Opens (creating `dir` if needed) the store in `dir` for appending.
    ///
    /// Recovery after a crash: a torn record at the end of the last segment
    /// is truncated away; a segment whose header is torn (a crash while
    /// rotating) is removed, as it holds no record. Damage anywhere else is
    /// [`LogError::Corrupt`] or [`LogError::SequenceGap`], never repaired
    /// silently.
    pub fn open(dir: &Path, budget: StoreBudget) -> Result<LogStore, LogError> {
        let budget = StoreBudget::new(budget.max_bytes, budget.segment_bytes)?;
        fs::create_dir_all(dir).map_err(|e| LogError::io("creating", dir, e))?;
        let mut listed = list_segments(dir)?;
        // A crash while rotating may leave the newest segment with a torn header.
        if let Some((first, path)) = listed.last() {
            let mut head = Vec::new();
            File::open(path)
                .and_then(|f| BufReader::new(f).read_until(b'\n', &mut head))
                .map_err(|e| LogError::io("reading", path, e))?;
            let torn_header =
                !head.ends_with(b"\n") || parse_header(&head[..head.len() - 1], path).is_err();
            if torn_header && (listed.len() > 1 || *first == 1) {
                tracing::warn!(path = %path.display(), "removing a segment with a torn header");
                fs::remove_file(path).map_err(|e| LogError::io("removing", path, e))?;
                listed.pop();
            }
        }

        let mut segments = VecDeque::new();
        let mut cursors = BTreeMap::new();
        let mut last_cursor = None;
        let mut next_seq = listed.first().map_or(1, |(first, _)| *first);
        let count = listed.len();
        for (i, (first, path)) in listed.into_iter().enumerate() {
            if first != next_seq {
                return Err(LogError::SequenceGap {
                    path,
                    expected: next_seq,
                    found: first,
                });
            }
            let scan = scan_segment(&path, first, |line| {
                cursors.insert(line.machine.clone(), line.cursor.clone());
            })?;
            if i == 0 {
                // The oldest header carries the cursors of sources whose
                // records were rotated away; newer records override them.
                for (machine, cursor) in scan.header.cursors {
                    cursors.entry(machine).or_insert(cursor);
                }
            }
            let mut bytes = scan.good_len;
            if let Some(reason) = scan.torn {
                if i + 1 != count {
                    return Err(LogError::Corrupt {
                        path,
                        offset: scan.good_len,
                        reason,
                    });
                }
                tracing::warn!(path = %path.display(), offset = scan.good_len, %reason, "truncating a torn record");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| LogError::io("opening", &path, e))?;
                f.set_len(scan.good_len)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| LogError::io("truncating", &path, e))?;
            } else {
                bytes = fs::metadata(&path)
                    .map_err(|e| LogError::io("inspecting", &path, e))?
                    .len();
            }
            if let Some(last) = scan.last {
                last_cursor = Some(last.cursor);
            }
            next_seq = first + scan.records;
            segments.push_back(Segment {
                path,
                first_seq: first,
                bytes,
                lines: scan.records,
            });
        }
        let (current, file) = match segments.pop_back() {
            Some(seg) => {
                let file = open_append(&seg.path)?;
                (seg, file)
            }
            None => create_segment(dir, 1, &cursors)?,
        };
        let mut store = LogStore {
            dir: dir.into(),
            budget,
            closed: segments,
            current,
            file,
            next_seq,
            cursors,
            last_cursor,
            buf: Vec::new(),
            poisoned: false,
        };
        store.enforce_budget()?;
        Ok(store)
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `batch`, assigning consecutive sequence numbers, and makes it
    /// durable (`fdatasync`) before returning the last sequence number.
    ///
    /// On error nothing of the failing write remains (a partial record is
    /// truncated away) and the resume cursors stay at the last durable
    /// record; a batch that spans a rotation may have stored its first part,
    /// which [`LogStore::last_cursor`] then reflects.
    pub fn append(&mut self, batch: &[NewLine]) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(LogError::Corrupt {
                path: self.current.path.clone(),
                offset: self.current.bytes,
                reason: "an earlier failed append could not be cut back; reopen the store".into(),
            });
        }
        let mut rest = batch;
        while !rest.is_empty() {
            if self.current_full() {
                self.rotate()?;
            }
            let room = self.budget.segment_bytes.saturating_sub(self.current.bytes);
            self.buf.clear();
            let mut seq = self.next_seq;
            let mut taken = 0;
            for line in rest {
                let before = self.buf.len();
                let rec = RecordOut {
                    seq,
                    ts: line.realtime_usec,
                    machine: &line.machine,
                    unit: &line.unit,
                    msg: &line.message,
                    cursor: &line.cursor,
                };
                // Serializing plain strings and integers into a Vec cannot fail.
                if let Err(e) = serde_json::to_writer(&mut self.buf, &rec) {
                    return Err(LogError::io(
                        "encoding a record for",
                        self.current.path.clone(),
                        std::io::Error::other(e),
                    ));
                }
                self.buf.push(b'\n');
                // Always take one record into a segment, even an oversized one.
                if taken > 0 && self.buf.len() as u64 > room {
                    self.buf.truncate(before);
                    break;
                }
                taken += 1;
                seq = seq.checked_add(1).ok_or(LogError::SequenceExhausted {
                    path: self.dir.clone(),
                    last: seq,
                })?;
            }
            self.write_buf()?;
            self.current.bytes += self.buf.len() as u64;
            self.current.lines += taken as u64;
            for line in &rest[..taken] {
                self.cursors
                    .insert(line.machine.clone(), line.cursor.clone());
            }
            self.last_cursor = Some(rest[taken - 1].cursor.clone());
            self.next_seq = seq;
            rest = &rest[taken..];
            self.enforce_budget()?;
        }
        Ok(self.next_seq - 1)
    }

    /// Writes `self.buf` to the current segment and syncs it; on failure the
    /// segment is cut back to its previous length.
    fn write_buf(&mut self) -> Result<(), LogError> {
        let old_len = self.current.bytes;
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        let Err(e) = result else {
            return Ok(());
        };
        let path = self.current.path.clone();
        let err = LogError::io("appending to", path.clone(), e);
        if let Err(e) = self
            .file
            .set_len(old_len)
            .and_then(|()| self.file.sync_data())
        {
            self.poisoned = true;
            return Err(LogError::io("truncating a failed append of", path, e));
        }
        Err(err)
    }

    fn current_full(&self) -> bool {
        self.current.lines > 0 && self.current.bytes >= self.budget.segment_bytes
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let (seg, file) = create_segment(&self.dir, self.next_seq, &self.cursors)?;
        let old = std::mem::replace(&mut self.current, seg);
        self.closed.push_back(old);
        self.file = file;
        self.enforce_budget()
    }

    fn total_bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.bytes).sum::<u64>() + self.current.bytes
    }

    /// Deletes the oldest segments while over budget (never the current one).
    fn enforce_budget(&mut self) -> Result<(), LogError> {
        let mut removed = false;
        while !self.closed.is_empty() && self.total_bytes() > self.budget.max_bytes {
            let Some(old) = self.closed.pop_front() else {
                break;
            };
            tracing::info!(path = %old.path.display(), lines = old.lines, "log store over budget: deleting the oldest segment");
            fs::remove_file(&old.path).map_err(|e| LogError::io("removing", &old.path, e))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The cursor of the last stored line, from any source.
    pub fn last_cursor(&self) -> Option<&str> {
        self.last_cursor.as_deref()
    }

    /// The resume cursor of one journal source (machine-id subdirectory):
    /// the cursor of its last stored line.
    pub fn cursor_for(&self, machine: &str) -> Option<&str> {
        self.cursors.get(machine).map(String::as_str)
    }

    /// The resume cursor of every journal source.
    pub fn cursors(&self) -> &BTreeMap<String, String> {
        &self.cursors
    }

    /// Counters: lines rotated away, lines and bytes on disk.
    pub fn stats(&self) -> StoreStats {
        let first_retained = self
            .closed
            .front()
            .map_or(self.current.first_seq, |s| s.first_seq);
        StoreStats {
            rotated_lines: first_retained - 1,
            retained_lines: self.next_seq - first_retained,
            bytes: self.total_bytes(),
            segments: self.closed.len() as u64 + 1,
            last_seq: self.next_seq - 1,
        }
    }

    /// Reads the store in `dir` from sequence number `from_seq` on (or from
    /// the oldest retained line, when older ones were rotated away). Read-only:
    /// safe while another process appends.
    pub fn read(dir: &Path, from_seq: u64) -> Result<LogReader, LogError> {
        if !dir.is_dir() {
            return Err(LogError::io(
                "reading",
                dir,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(LogReader {
            dir: dir.into(),
            next_seq: from_seq.max(1),
            current: None,
            pending: Vec::new(),
            skipped: 0,
        })
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| LogError::io("opening", path, e))
}

/// Creates a segment holding only its header, durably (file and directory).
fn create_segment(
    dir: &Path,
    first_seq: u64,
    cursors: &BTreeMap<String, String>,
) -> Result<(Segment, File), LogError> {
    let path = dir.join(segment_name(first_seq));
    let mut head = serde_json::to_vec(&HeaderLine {
        segment: SegmentHeader {
            first_seq,
            cursors: cursors.clone(),
        },
    })
    .map_err(|e| LogError::io("encoding the header of", &path, std::io::Error::other(e)))?;
    head.push(b'\n');
    let written = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&head)?;
            f.sync_data()?;
            Ok(f)
        });
    let file = match written {
        Ok(f) => f,
        Err(e) => {
            // Leave no half-written segment behind (best effort: the next open
            // also removes a torn header).
            let _ = fs::remove_file(&path);
            return Err(LogError::io("creating", &path, e));
        }
    };
    sync_dir(dir)?;
    Ok((
        Segment {
            path,
            first_seq,
            bytes: head.len() as u64,
            lines: 0,
        },
        file,
    ))
}

/// Reads a store in sequence order. [`Iterator::next`] returns `None` at the
/// current end of the store; calling it again later returns lines appended
/// since (it is not fused), which is how `--follow` tails a live store.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    next_seq: u64,
    /// The open segment: reader, path, first sequence number.
    current: Option<(BufReader<File>, PathBuf, u64)>,
    /// A record read without its newline yet (the writer is mid-append).
    pending: Vec<u8>,
    skipped: u64,
}

impl LogReader {
    /// The sequence number the next line will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Lines asked for but already rotated away when the reader got there.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Opens the segment holding `next_seq` (or the oldest, after rotation).
    fn open_segment(&mut self) -> Result<bool, LogError> {
        let segments = list_segments(&self.dir)?;
        let Some(idx) = segments
            .iter()
            .rposition(|(first, _)| *first <= self.next_seq)
            .or(if segments.is_empty() { None } else { Some(0) })
        else {
            return Ok(false);
        };
        let (first, path) = &segments[idx];
        if *first > self.next_seq {
            self.skipped += first - self.next_seq;
            self.next_seq = *first;
        }
        let file = match File::open(path) {
            Ok(f) => f,
            // Rotated away between listing and opening: list again next time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(LogError::io("opening", path, e)),
        };
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut head = Vec::new();
        reader
            .read_until(b'\n', &mut head)
            .map_err(|e| LogError::io("reading", path, e))?;
        if !head.ends_with(b"\n") {
            // The writer is creating this segment right now.
            return Ok(false);
        }
        parse_header(&head[..head.len() - 1], path)?;
        self.current = Some((reader, path.clone(), *first));
        self.pending.clear();
        Ok(true)
    }

    /// Whether a segment newer than the one starting at `current_first`
    /// starts exactly at `next_seq` (the current one is then complete).
    fn next_segment_exists(&self, current_first: u64) -> Result<bool, LogError> {
        Ok(list_segments(&self.dir)?
            .iter()
            .any(|(first, _)| *first == self.next_seq && *first > current_first))
    }

    fn next_line(&mut self) -> Result<Option<LogLine>, LogError> {
        if self.current.is_none() && !self.open_segment()? {
            return Ok(None);
        }
        loop {
            let Some((reader, path, current_first)) = self.current.as_mut() else {
                return Ok(None);
            };
            let (path, current_first) = (path.clone(), *current_first);
            reader
                .read_until(b'\n', &mut self.pending)
                .map_err(|e| LogError::io("reading", &path, e))?;
            if !self.pending.ends_with(b"\n") {
                // The end of this segment for now: move on if a newer one
                // starts where we are, else wait for the writer.
                if self.pending.is_empty() && self.next_segment_exists(current_first)? {
                    self.current = None;
                    if !self.open_segment()? {
                        return Ok(None);
                    }
                    continue;
                }
                return Ok(None);
            }
            let line: LogLine = serde_json::from_slice(&self.pending[..self.pending.len() - 1])
                .map_err(|e| LogError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("record does not parse: {e}"),
                })?;
            self.pending.clear();
            if line.seq < self.next_seq {
                continue;
            }
            if line.seq != self.next_seq {
                return Err(LogError::SequenceGap {
                    path,
                    expected: self.next_seq,
                    found: line.seq,
                });
            }
            self.next_seq += 1;
            return Ok(Some(line));
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<LogLine, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u64) -> NewLine {
        NewLine {
            realtime_usec: 1_000 + i,
            machine: "m1".into(),
            unit: "a.service".into(),
            message: format!("line {i}"),
            cursor: format!("c{i}"),
        }
    }

    #[test]
    fn budget_is_validated() {
        assert!(StoreBudget::new(0, 0).is_err());
        assert!(StoreBudget::new(10, 11).is_err());
        assert!(StoreBudget::new(10, 0).is_err());
        assert!(StoreBudget::new(10, 10).is_ok());
        let d = tempfile::tempdir().unwrap();
        let bad = StoreBudget {
            max_bytes: 1,
            segment_bytes: 2,
        };
        assert!(matches!(
            LogStore::open(d.path(), bad),
            Err(LogError::InvalidBudget { .. })
        ));
    }

    #[test]
    fn segment_names_sort_numerically() {
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(segment_name(1), "seg-00000000000000000001.log");
    }

    #[test]
    fn a_gap_between_segments_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let budget = StoreBudget::new(1 << 20, 200).unwrap();
        {
            let mut s = LogStore::open(d.path(), budget).unwrap();
            let batch: Vec<_> = (1..=20).map(line).collect();
            s.append(&batch).unwrap();
            assert!(s.stats().segments >= 3);
        }
        // Remove a middle segment by hand.
        let segs = list_segments(d.path()).unwrap();
        fs::remove_file(&segs[1].1).unwrap();
        match LogStore::open(d.path(), budget) {
            Err(LogError::SequenceGap { path, .. }) => assert_eq!(path, segs[2].1),
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    #[test]
    fn cursors_survive_rotation_of_their_records() {
        let d = tempfile::tempdir().unwrap();
        let budget = StoreBudget::new(600, 300).unwrap();
        let mut s = LogStore::open(d.path(), budget).unwrap();
        let mut first = line(0);
        first.machine = "old".into();
        first.cursor = "old-cursor".into();
        s.append(&[first]).unwrap();
        let batch: Vec<_> = (1..=40).map(line).collect();
        s.append(&batch).unwrap();
        assert!(s.stats().rotated_lines > 0);
        drop(s);
        let s = LogStore::open(d.path(), budget).unwrap();
        assert_eq!(s.cursor_for("old"), Some("old-cursor"));
        assert_eq!(s.cursor_for("m1"), Some("c40"));
    }
}

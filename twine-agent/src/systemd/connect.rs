//! Reaching a container's systemd: the socket connected from inside the
//! container's PID namespace, the SASL `EXTERNAL` handshake done by hand, and
//! the stream handed to zbus as an already authenticated socket.
//!
//! Why each step (all seen against systemd 252 in an nspawn container):
//! * systemd refuses a private-socket connection whose peer PID it cannot see
//!   ("Incoming private connection from unprivileged client, refusing: No data
//!   available": `getpeercred()` yields `ENODATA` for PID 0, which is what
//!   `SO_PEERCRED` reports for a peer outside its PID namespace). So the
//!   `connect(2)` is made by a short-lived grandchild that has joined the
//!   container's PID namespace; the socket itself was created by the caller and
//!   stays with it, and `SO_PEERCRED` keeps the credentials of the process
//!   that connected.
//! * This workspace builds zbus without its `p2p` feature, so every zbus
//!   connection counts as a bus connection: zbus's own handshake would send
//!   `Hello`, which systemd answers by dropping the connection (there is no bus
//!   daemon). The handshake here sends only `AUTH EXTERNAL <uid>` and `BEGIN`,
//!   in one write: when `BEGIN` came on its own and the first message right
//!   behind it, a busy systemd read both at once and never answered the message.
//! * systemd stamps every message on its private bus with the sender
//!   `org.freedesktop.systemd1`, which zbus 6 refuses as not a unique name and
//!   closes the connection over; [`PeerReader`] rewrites it before zbus parses.

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use std::os::fd::AsRawFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};

use super::BusError;

/// How long the SASL handshake may take once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line the server may answer in the handshake.
const MAX_AUTH_LINE: usize = 512;

/// Child exit codes that are not an errno of `connect(2)` (errnos stay below 200).
const EXIT_SETNS_FAILED: i32 = 254;
const EXIT_FORK_FAILED: i32 = 253;
const EXIT_GRANDCHILD_LOST: i32 = 252;

/// Connects to `socket` from the caller's own process.
pub(super) async fn connect_direct(socket: &Path) -> Result<UnixStream, BusError> {
    UnixStream::connect(socket)
        .await
        .map_err(|source| BusError::Connect {
            path: socket.to_path_buf(),
            source,
        })
}

/// Connects to `socket` from a process in the PID namespace `pid_ns` (a
/// `/proc/PID/ns/pid` file), so that the listener can see the peer's PID.
pub(super) async fn connect_from_namespace(
    socket: &Path,
    pid_ns: &Path,
) -> Result<UnixStream, BusError> {
    let ns = File::open(pid_ns).map_err(|source| BusError::Namespace {
        path: pid_ns.to_path_buf(),
        source,
    })?;
    let addr = UnixAddr::new(socket).map_err(|e| BusError::Connect {
        path: socket.to_path_buf(),
        source: e.into(),
    })?;
    let fd = socket_fd().map_err(|source| BusError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let path = socket.to_path_buf();
    let joined = tokio::task::spawn_blocking(move || connect_via_grandchild(&ns, fd, &addr)).await;
    let fd = match joined {
        Ok(result) => result.map_err(|source| BusError::Connect {
            path: path.clone(),
            source,
        })?,
        Err(e) => {
            return Err(BusError::Connect {
                path,
                source: io::Error::other(format!("the connecting task failed: {e}")),
            });
        }
    };
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(std_stream))
        .map_err(|source| BusError::Connect {
            path: socket.to_path_buf(),
            source,
        })
}

fn socket_fd() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// Forks a child that joins `ns` and forks again (joining a PID namespace only
/// applies to children); the grandchild connects `fd` to `addr`. Returns `fd`,
/// connected, or the grandchild's `connect(2)` error.
#[allow(unsafe_code)]
fn connect_via_grandchild(ns: &File, fd: OwnedFd, addr: &UnixAddr) -> io::Result<OwnedFd> {
    // SAFETY: the child runs only async-signal-safe system calls (setns, fork,
    // connect, waitpid, _exit) on values prepared before the fork; it allocates
    // nothing, takes no lock and never returns into Rust code that could.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => exit_now(in_child(ns, &fd, addr)),
        ForkResult::Parent { child } => match wait(child)? {
            WaitStatus::Exited(_, 0) => Ok(fd),
            WaitStatus::Exited(_, EXIT_SETNS_FAILED) => Err(io::Error::other(
                "could not join the container's PID namespace (setns)",
            )),
            WaitStatus::Exited(_, EXIT_FORK_FAILED) => Err(io::Error::other(
                "could not fork inside the container's PID namespace",
            )),
            WaitStatus::Exited(_, code) if code < EXIT_GRANDCHILD_LOST => {
                Err(io::Error::from_raw_os_error(code))
            }
            other => Err(io::Error::other(format!(
                "the connecting child ended unexpectedly: {other:?}"
            ))),
        },
    }
}

/// Runs in the forked child; returns its exit code.
#[allow(unsafe_code)]
fn in_child(ns: &File, fd: &OwnedFd, addr: &UnixAddr) -> i32 {
    if setns(ns, CloneFlags::CLONE_NEWPID).is_err() {
        return EXIT_SETNS_FAILED;
    }
    // SAFETY: as for the first fork; this process is single-threaded anyway.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => exit_now(match connect(fd.as_raw_fd(), addr) {
            Ok(()) => 0,
            Err(errno) => errno as i32,
        }),
        Ok(ForkResult::Parent { child }) => match wait(child) {
            Ok(WaitStatus::Exited(_, code)) => code,
            _ => EXIT_GRANDCHILD_LOST,
        },
        Err(_) => EXIT_FORK_FAILED,
    }
}

/// Ends the forked process without running exit handlers or destructors.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit(2)` is async-signal-safe and takes no pointers.
    unsafe { nix::libc::_exit(code) }
}

fn wait(child: Pid) -> io::Result<WaitStatus> {
    loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The client side of SASL `EXTERNAL` without `Hello`; returns the server GUID.
pub(super) async fn authenticate(
    stream: &mut UnixStream,
    socket: &Path,
) -> Result<String, BusError> {
    let handshake = async {
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        // AUTH and BEGIN in one write, as sd-bus's own client does. Sending
        // BEGIN after the OK lets it share a read with the first message on a
        // busy systemd, and systemd 252 then never processes that message.
        stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\nBEGIN\r\n").as_bytes())
            .await
            .map_err(|e| format!("sending AUTH: {e}"))?;
        let line = read_line(stream).await?;
        let guid = match line.strip_prefix("OK ") {
            Some(guid) => guid.trim().to_owned(),
            None => {
                return Err(format!(
                    "EXTERNAL authentication as uid {uid} refused: {line:?}"
                ));
            }
        };
        Ok(guid)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(guid)) => Ok(guid),
        Ok(Err(reason)) => Err(BusError::Handshake {
            path: socket.to_path_buf(),
            reason,
        }),
        Err(_) => Err(BusError::Handshake {
            path: socket.to_path_buf(),
            reason: format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
        }),
    }
}

/// Reads one `\r\n`-terminated line byte by byte, so nothing after it is consumed.
async fn read_line(stream: &mut UnixStream) -> Result<String, String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > MAX_AUTH_LINE {
            return Err("over-long answer to AUTH".into());
        }
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("reading the answer to AUTH: {e}"))?;
        line.push(byte);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| format!("answer to AUTH is not UTF-8: {e}"))
}

/// An authenticated stream, for `zbus::connection::Builder::authenticated_socket`.
#[derive(Debug)]
pub(super) struct PeerStream(pub(super) UnixStream);

impl Socket for PeerStream {
    type ReadHalf = PeerReader;
    type WriteHalf = PeerWriter;

    fn split(self) -> Split<PeerReader, PeerWriter> {
        let (read, write) = self.0.into_split();
        Split::new(PeerReader::new(read), PeerWriter(write))
    }
}

/// The receiving half of a [`PeerStream`]; passes no file descriptors.
///
/// It reads whole messages and hands them to zbus with the sender field made
/// acceptable (see [`patch_sender`]).
#[derive(Debug)]
pub(super) struct PeerReader {
    half: OwnedReadHalf,
    /// The message being read, then handed out.
    buf: Vec<u8>,
    /// How much of `buf` has been read from the socket.
    filled: usize,
    /// Whether `buf` holds a whole, patched message.
    ready: bool,
    /// How much of a ready `buf` has been handed out.
    offset: usize,
}

#[zbus::export::async_trait::async_trait]
impl ReadHalf for PeerReader {
    async fn recvmsg(&mut self, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if !self.ready && !self.fill().await? {
            return Ok((0, Vec::new()));
        }
        let n = buffer.len().min(self.buf.len() - self.offset);
        buffer[..n].copy_from_slice(&self.buf[self.offset..self.offset + n]);
        self.offset += n;
        if self.offset == self.buf.len() {
            self.buf.clear();
            self.filled = 0;
            self.offset = 0;
            self.ready = false;
        }
        Ok((n, Vec::new()))
    }
}

impl PeerReader {
    fn new(half: OwnedReadHalf) -> PeerReader {
        PeerReader {
            half,
            buf: Vec::new(),
            filled: 0,
            ready: false,
            offset: 0,
        }
    }

    /// Reads until `buf` holds one whole message, then patches it. All progress
    /// is kept in `self`, so a dropped call loses no bytes. `false` on a clean
    /// end of stream (between messages).
    async fn fill(&mut self) -> io::Result<bool> {
        loop {
            let want = match self.buf.get(..FIXED_HEADER) {
                Some(fixed) if self.filled >= FIXED_HEADER => {
                    let mut header = [0u8; FIXED_HEADER];
                    header.copy_from_slice(fixed);
                    message_len(&header)?
                }
                _ => FIXED_HEADER,
            };
            if self.filled >= FIXED_HEADER && self.filled >= want {
                self.buf.truncate(want);
                patch_sender(&mut self.buf);
                self.ready = true;
                return Ok(true);
            }
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let read = self.half.read(&mut self.buf[self.filled..want]).await?;
            if read == 0 {
                if self.filled == 0 {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection within a message",
                ));
            }
            self.filled += read;
        }
    }
}

/// Length of the fixed part of a D-Bus message header.
const FIXED_HEADER: usize = 16;
/// The protocol's limit on a message (2^27 bytes).
const MAX_MESSAGE: usize = 1 << 27;
/// Header field code of `SENDER`.
const FIELD_SENDER: u8 = 7;

fn read_u32(bytes: &[u8], at: usize, little: bool) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if little {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    })
}

/// The whole length of a message from its fixed header.
fn message_len(fixed: &[u8; FIXED_HEADER]) -> io::Result<usize> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let little = match fixed[0] {
        b'l' => true,
        b'B' => false,
        _ => return Err(invalid("not a D-Bus message (bad endianness mark)")),
    };
    let body = read_u32(fixed, 4, little).ok_or_else(|| invalid("short header"))?;
    let fields = read_u32(fixed, 12, little).ok_or_else(|| invalid("short header"))?;
    let fields = usize::try_from(fields).map_err(|_| invalid("header too long"))?;
    let body = usize::try_from(body).map_err(|_| invalid("body too long"))?;
    let total = (FIXED_HEADER + fields).next_multiple_of(8) + body;
    if total > MAX_MESSAGE {
        return Err(invalid("message over the protocol's size limit"));
    }
    Ok(total)
}

/// Rewrites, in place, a `SENDER` header field that is not a unique name.
///
/// systemd's private bus stamps every message with the sender
/// `org.freedesktop.systemd1` (sd-bus `patch_sender`), a well-known name; zbus
/// 6 insists that a sender is a unique name (`:x.y`) and drops the connection
/// over it. The replacement has the same length, so no offset moves:
/// `:1.` followed by the rest of the name with dots made underscores
/// (`:1._freedesktop_systemd1`). Nothing in this client reads the sender.
fn patch_sender(msg: &mut [u8]) {
    let little = msg.first() == Some(&b'l');
    let Some(fields_len) = read_u32(msg, 12, little) else {
        return;
    };
    let end = FIXED_HEADER
        .saturating_add(fields_len as usize)
        .min(msg.len());
    let mut at = FIXED_HEADER;
    while at < end {
        // Each field is a struct (yv): 8-aligned code, then a variant.
        let code = msg[at];
        let Some(&sig_len) = msg.get(at + 1) else {
            return;
        };
        let sig_len = usize::from(sig_len);
        let Some(sig) = msg.get(at + 2..at + 2 + sig_len) else {
            return;
        };
        let sig = sig.first().copied();
        let value = at + 2 + sig_len + 1;
        let next = match sig {
            Some(b's' | b'o') => {
                let start = value.next_multiple_of(4);
                let Some(len) = read_u32(msg, start, little) else {
                    return;
                };
                let text = start + 4;
                let text_end = text + len as usize;
                if text_end > end {
                    return;
                }
                if code == FIELD_SENDER && sig == Some(b's') {
                    let name = &mut msg[text..text_end];
                    if name.first() != Some(&b':') && name.len() >= 4 {
                        for b in name[3..].iter_mut() {
                            if !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-') {
                                *b = b'_';
                            }
                        }
                        name[..3].copy_from_slice(b":1.");
                    }
                }
                text_end + 1
            }
            Some(b'g') => {
                let Some(&len) = msg.get(value) else {
                    return;
                };
                value + 1 + usize::from(len) + 1
            }
            Some(b'u') => value.next_multiple_of(4) + 4,
            _ => return,
        };
        at = next.next_multiple_of(8);
    }
}

/// The sending half of a [`PeerStream`].
#[derive(Debug)]
pub(super) struct PeerWriter(OwnedWriteHalf);

#[zbus::export::async_trait::async_trait]
impl WriteHalf for PeerWriter {
    async fn sendmsg(&mut self, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this connection does not pass file descriptors",
            ));
        }
        self.0.write(buffer).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method return from systemd's private bus as sd-bus writes it: fields
    /// REPLY_SERIAL (5, u), SENDER (7, s), SIGNATURE (8, g), body `o`.
    fn reply_from_systemd(sender: &str) -> Vec<u8> {
        let mut fields = Vec::new();
        fields.extend_from_slice(&[5, 1, b'u', 0]);
        fields.extend_from_slice(&9u32.to_le_bytes());
        fields.extend_from_slice(&[7, 1, b's', 0]);
        fields.extend_from_slice(&u32::try_from(sender.len()).unwrap().to_le_bytes());
        fields.extend_from_slice(sender.as_bytes());
        fields.push(0);
        while fields.len() % 8 != 0 {
            fields.push(0);
        }
        fields.extend_from_slice(&[8, 1, b'g', 0, 1, b'o', 0]);
        let fields_len = fields.len();
        while fields.len() % 8 != 0 {
            fields.push(0);
        }
        let body = b"\x01\0\0\0/\0";
        let mut msg = vec![b'l', 2, 1, 1];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        msg.extend_from_slice(&7u32.to_le_bytes());
        msg.extend_from_slice(&u32::try_from(fields_len).unwrap().to_le_bytes());
        msg.extend_from_slice(&fields);
        msg.extend_from_slice(body);
        msg
    }

    #[test]
    fn a_well_known_sender_becomes_a_unique_name_of_the_same_length() {
        let mut msg = reply_from_systemd("org.freedesktop.systemd1");
        let len = msg.len();
        let fixed: [u8; FIXED_HEADER] = msg[..FIXED_HEADER].try_into().unwrap();
        assert_eq!(message_len(&fixed).unwrap(), len);
        patch_sender(&mut msg);
        assert_eq!(msg.len(), len);
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains(":1._freedesktop_systemd1"), "{text:?}");
        assert!(!text.contains("org.freedesktop.systemd1"), "{text:?}");
        // Everything after the sender is untouched.
        assert_eq!(
            msg[len - 6..],
            reply_from_systemd("org.freedesktop.systemd1")[len - 6..]
        );
    }

    #[test]
    fn a_unique_sender_is_left_alone() {
        let original = reply_from_systemd(":1.42");
        let mut msg = original.clone();
        patch_sender(&mut msg);
        assert_eq!(msg, original);
    }

    #[test]
    fn garbage_is_not_a_message() {
        let fixed = [b'x'; FIXED_HEADER];
        assert_eq!(
            message_len(&fixed).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Truncated input must not panic.
        let mut short = reply_from_systemd("org.freedesktop.systemd1");
        short.truncate(30);
        patch_sender(&mut short);
    }
}

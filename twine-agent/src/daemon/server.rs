//! The server side: binding the socket, accepting, answering.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use twine_spec::JobSpec;

use super::{JobEvent, JobStatus, MAX_REQUEST_LEN, Request, RequestError, Response};

/// What the daemon does with requests; the agent implements it.
pub trait Handler: Send + Sync + 'static {
    /// Runs (or updates) the job; returns its name.
    fn submit(&self, spec: JobSpec) -> impl Future<Output = Result<String, HandlerError>> + Send;

    /// Starts a graceful stop of the job.
    fn stop(&self, job: String) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The status of one job (an unknown one is [`HandlerError::UnknownJob`]),
    /// or of all when `job` is `None`.
    fn status(
        &self,
        job: Option<String>,
    ) -> impl Future<Output = Result<Vec<JobStatus>, HandlerError>> + Send;

    /// A new subscription to every job's events; the server filters by job.
    fn events(&self) -> broadcast::Receiver<JobEvent>;
}

/// A handler's refusal, sent to the client as `{"ok":false,"error":...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// No job of that name.
    #[error("no job named {job:?}")]
    UnknownJob {
        /// The name asked for.
        job: String,
    },
    /// The request is understood but refused (an invalid spec, a job already
    /// stopping).
    #[error("{message}")]
    Refused {
        /// Why, as a sentence.
        message: String,
    },
    /// The agent tried and failed.
    #[error("{message}")]
    Failed {
        /// What failed, as a sentence.
        message: String,
    },
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A live daemon answers on the path.
    #[error("{path}: another daemon is listening here", path = path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{path}: exists and is not a socket", path = path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file system or socket operation failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: String,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        action: action.to_owned(),
        path: path.to_owned(),
        source,
    }
}

/// Binds the daemon's socket at `path`, mode 0600. A socket nobody answers on
/// (left by a dead daemon) is replaced; one a live daemon answers on is
/// [`BindError::InUse`]. The socket is bound under a temporary name, made
/// 0600, then renamed into place, so it is never reachable with looser
/// permissions. Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path).map_err(io("removing the stale socket", path))?;
            }
            Err(e) => return Err(io("probing", path)(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", path)(e)),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = dir.join(format!(".twine-{}.sock", std::process::id()));
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", &temp)(e));
        }
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&temp).map_err(io("binding", &temp))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .map_err(io("setting mode 0600 on", &temp))
        .and_then(|()| std::fs::rename(&temp, path).map_err(io("renaming the socket to", path)));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    listener
        .set_nonblocking(true)
        .map_err(io("configuring", path))?;
    UnixListener::from_std(listener).map_err(io("registering", path))
}

/// Accepts connections on `listener` and answers them with `handler`, each
/// connection in its own task. Runs until the task running it is dropped.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, Arc::clone(&handler)));
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Line {
    Eof,
    Complete,
    TooLong,
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let limit = u64::try_from(MAX_REQUEST_LEN).unwrap_or(u64::MAX);
    let n = (&mut *reader)
        .take(limit + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_REQUEST_LEN {
        return Ok(Line::TooLong);
    }
    Ok(Line::Complete)
}

async fn connection<H: Handler>(stream: UnixStream, handler: Arc<H>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        let response = match read_request(&mut reader, &mut buf).await {
            Ok(Line::Eof) => return,
            Ok(Line::TooLong) => {
                let error = RequestError::TooLong {
                    limit: MAX_REQUEST_LEN,
                };
                let _ = send(
                    &mut write,
                    &Response::Error {
                        error: error.to_string(),
                    },
                )
                .await;
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "reading a request");
                return;
            }
            Ok(Line::Complete) => match std::str::from_utf8(&buf) {
                Err(_) => Response::Error {
                    error: RequestError::NotUtf8.to_string(),
                },
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => match Request::from_line(text) {
                    Err(error) => Response::Error {
                        error: error.to_string(),
                    },
                    Ok(Request::Events { job }) => {
                        stream_events(&mut reader, &mut write, handler.as_ref(), job).await;
                        return;
                    }
                    Ok(request) => answer(handler.as_ref(), request).await,
                },
            },
        };
        if send(&mut write, &response).await.is_err() {
            return;
        }
    }
}

async fn answer<H: Handler>(handler: &H, request: Request) -> Response {
    let result = match request {
        Request::Submit { spec } => handler
            .submit(*spec)
            .await
            .map(|job| Response::Submitted { job }),
        Request::Stop { job } => handler
            .stop(job.clone())
            .await
            .map(|()| Response::Stopping { job }),
        Request::Status { job } => handler
            .status(job)
            .await
            .map(|jobs| Response::Status { jobs }),
        Request::Events { .. } => Err(HandlerError::Refused {
            message: "events cannot be answered with one line".to_owned(),
        }),
    };
    result.unwrap_or_else(|error| Response::Error {
        error: error.to_string(),
    })
}

/// Streams events until the client hangs up or the handler's channel closes.
async fn stream_events<H: Handler, R, W>(
    reader: &mut R,
    write: &mut W,
    handler: &H,
    job: Option<String>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Subscribe before answering, so nothing published after `subscribed` is lost.
    let mut events = handler.events();
    if let Some(job) = &job
        && let Err(error) = handler.status(Some(job.clone())).await
    {
        let _ = send(
            write,
            &Response::Error {
                error: error.to_string(),
            },
        )
        .await;
        return;
    }
    if send(write, &Response::Subscribed).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 512];
    loop {
        let response = tokio::select! {
            received = events.recv() => match received {
                Ok(event) if job.as_ref().is_none_or(|j| *j == event.job) => Response::Event { event },
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => Response::Lagged { missed },
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Anything the client sends now is ignored; end of input is a hang-up.
            read = reader.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        if send(write, &response).await.is_err() {
            return;
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(write: &mut W, response: &Response) -> std::io::Result<()> {
    write.write_all(response.to_line().as_bytes()).await?;
    write.flush().await
}

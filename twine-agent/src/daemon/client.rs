//! The client side, as `twine agent ctl` uses it.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use twine_spec::JobSpec;

use super::{JobEvent, JobStatus, Request, Response};

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nobody answers on the socket.
    #[error("connecting to {path}: {source}", path = path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("talking to {path}: {source}", path = path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon hung up before answering.
    #[error("{path}: the daemon closed the connection", path = path.display())]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// The daemon sent something that is not a response.
    #[error("{path}: bad response {line:?}: {message}", path = path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// The line received.
        line: String,
        /// What is wrong with it.
        message: String,
    },
    /// The daemon answered `ok:false`.
    #[error("{message}")]
    Refused {
        /// The daemon's error message.
        message: String,
    },
    /// The daemon answered with a reply that does not fit the request.
    #[error("{path}: unexpected reply to {op}: {reply:?}", path = path.display())]
    Unexpected {
        /// The socket path.
        path: PathBuf,
        /// The request's op.
        op: &'static str,
        /// The reply received.
        reply: Response,
    },
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects to the daemon's socket.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref().to_owned();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.clone(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Client {
            path,
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Sends one request and reads one response line (an `ok:false` response
    /// is returned as [`Response::Error`], not as an error).
    pub async fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_string(request).map_err(|e| ClientError::BadResponse {
            path: self.path.clone(),
            line: String::new(),
            message: format!("encoding the request: {e}"),
        })?;
        line.push('\n');
        self.send_raw(&line).await?;
        self.read_response()
            .await?
            .ok_or_else(|| ClientError::Closed {
                path: self.path.clone(),
            })
    }

    /// Writes `line` as is (for tests and tools that speak raw JSON).
    pub async fn send_raw(&mut self, line: &str) -> Result<(), ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        self.writer.write_all(line.as_bytes()).await.map_err(io)?;
        self.writer.flush().await.map_err(|source| ClientError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Reads one response line; `None` when the daemon hung up.
    pub async fn read_response(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|e| ClientError::BadResponse {
                path: self.path.clone(),
                line: line.trim_end().to_owned(),
                message: e.to_string(),
            })
    }

    /// A request whose `ok:false` answer is [`ClientError::Refused`].
    async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        match self.request(request).await? {
            Response::Error { error } => Err(ClientError::Refused { message: error }),
            reply => Ok(reply),
        }
    }

    fn unexpected(&self, op: &'static str, reply: Response) -> ClientError {
        ClientError::Unexpected {
            path: self.path.clone(),
            op,
            reply,
        }
    }

    /// Submits a job; returns its name.
    pub async fn submit(&mut self, spec: &JobSpec) -> Result<String, ClientError> {
        let request = Request::Submit {
            spec: Box::new(spec.clone()),
        };
        match self.call(&request).await? {
            Response::Submitted { job } => Ok(job),
            other => Err(self.unexpected("submit", other)),
        }
    }

    /// Asks for a graceful stop of `job`.
    pub async fn stop(&mut self, job: &str) -> Result<(), ClientError> {
        let request = Request::Stop {
            job: job.to_owned(),
        };
        match self.call(&request).await? {
            Response::Stopping { .. } => Ok(()),
            other => Err(self.unexpected("stop", other)),
        }
    }

    /// The status of `job`, or of every job.
    pub async fn status(&mut self, job: Option<&str>) -> Result<Vec<JobStatus>, ClientError> {
        let request = Request::Status {
            job: job.map(str::to_owned),
        };
        match self.call(&request).await? {
            Response::Status { jobs } => Ok(jobs),
            other => Err(self.unexpected("status", other)),
        }
    }

    /// Subscribes to events (of `job`, or of every job); the connection
    /// becomes the stream.
    pub async fn events(mut self, job: Option<&str>) -> Result<EventStream, ClientError> {
        let request = Request::Events {
            job: job.map(str::to_owned),
        };
        match self.call(&request).await? {
            Response::Subscribed => Ok(EventStream { client: self }),
            other => Err(self.unexpected("events", other)),
        }
    }
}

/// One item of an [`EventStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamItem {
    /// An event.
    Event(JobEvent),
    /// This many events were dropped because the reader was too slow.
    Lagged(u64),
}

/// The events of a subscription; dropping it hangs up.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
}

impl EventStream {
    /// The next item; `None` when the daemon ended the stream.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        match self.client.read_response().await? {
            None => Ok(None),
            Some(Response::Event { event }) => Ok(Some(StreamItem::Event(event))),
            Some(Response::Lagged { missed }) => Ok(Some(StreamItem::Lagged(missed))),
            Some(Response::Error { error }) => Err(ClientError::Refused { message: error }),
            Some(other) => Err(self.client.unexpected("events", other)),
        }
    }
}

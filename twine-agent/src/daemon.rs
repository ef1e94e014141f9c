//! The local protocol of `twine agent daemon`: newline-delimited JSON over a
//! Unix socket (mode 0600, so only its owner, root, may drive the agent).
//!
//! Each request is one line, answered by one line:
//!
//! ```text
//! {"op":"submit","spec":{...JobSpec...}}   -> {"ok":true,"reply":"submitted","job":"web"}
//! {"op":"stop","job":"web"}                -> {"ok":true,"reply":"stopping","job":"web"}
//! {"op":"status"} / {"op":"status","job":"web"}
//!                                          -> {"ok":true,"reply":"status","jobs":[{"job":"web","state":{"state":"running"},...}]}
//! {"op":"events"} / {"op":"events","job":"web"}
//!                                          -> {"ok":true,"reply":"subscribed"}, then one line per event:
//!                                             {"ok":true,"reply":"event","event":{"job":"web","seq":3,"event":"state_changed",...}}
//!                                             {"ok":true,"reply":"lagged","missed":12} if the reader fell behind
//! anything wrong                           -> {"ok":false,"error":"message"}
//! ```
//!
//! A bad request (malformed JSON, an unknown op, a spec with an unknown key) is
//! answered with an error naming the problem and the connection stays usable.
//! An `events` request turns the connection into a stream until the client
//! hangs up. Events published after the `subscribed` line are never missed
//! unless reported by a `lagged` line. Subscribing to the events of a job the
//! agent does not know is refused (a typo would otherwise wait forever);
//! subscribe to all jobs to watch one come up.
//!
//! The server ([`serve`]) is generic over a [`Handler`], which the agent
//! implements; [`Client`] is what `twine agent ctl` uses.

mod client;
mod server;

use serde::{Deserialize, Serialize};
use twine_spec::JobSpec;

pub use client::{Client, ClientError, EventStream, StreamItem};
pub use server::{BindError, Handler, HandlerError, bind, serve};

use crate::lifecycle::{Event, TaskState};

/// The longest request line the server reads (1 MiB); a longer one is
/// refused and the connection closed, since it cannot be resynchronised.
pub const MAX_REQUEST_LEN: usize = 1 << 20;

/// A request, one JSON line with an `op` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// Run a job (or update it: a new spec restarts it on a fresh container).
    Submit {
        /// The job spec, as JSON.
        spec: Box<JobSpec>,
    },
    /// Stop a job gracefully, following its kill policy.
    Stop {
        /// The job's name.
        job: String,
    },
    /// The status of one job, or of all.
    Status {
        /// The job's name; all jobs when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
    /// Stream events (of one job, or of all) until the client hangs up.
    Events {
        /// The job's name; all jobs when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The line is not JSON.
    #[error("malformed JSON: {message}")]
    Json {
        /// What the parser said, with line and column.
        message: String,
    },
    /// The line is JSON but not an object with a string `op`.
    #[error("a request is a JSON object with a string \"op\"")]
    NoOp,
    /// An `op` this server does not know.
    #[error("unknown op {op:?} (expected submit, stop, status or events)")]
    UnknownOp {
        /// The op as sent.
        op: String,
    },
    /// The spec of a submit does not parse.
    #[error("spec: {message}")]
    Spec {
        /// twine-spec's `field: message`.
        message: String,
    },
    /// A known op with missing, unknown or mistyped fields.
    #[error("{op}: {message}")]
    Fields {
        /// The op.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// The line is longer than [`MAX_REQUEST_LEN`].
    #[error("request longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The line is not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
}

impl Request {
    /// Parses one request line. Spec problems are reported with twine-spec's
    /// field path (`spec: task.kill.mode: unknown variant ...`).
    pub fn from_line(line: &str) -> Result<Request, RequestError> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| RequestError::Json {
                message: e.to_string(),
            })?;
        let Some(object) = value.as_object() else {
            return Err(RequestError::NoOp);
        };
        let Some(op) = object.get("op").and_then(|op| op.as_str()) else {
            return Err(RequestError::NoOp);
        };
        let fields = |message: String| RequestError::Fields {
            op: op.to_owned(),
            message,
        };
        match op {
            "submit" => {
                if let Some(extra) = object.keys().find(|k| !matches!(k.as_str(), "op" | "spec")) {
                    return Err(fields(format!("unknown field {extra:?}")));
                }
                let spec = object
                    .get("spec")
                    .ok_or_else(|| fields("missing field \"spec\"".to_owned()))?;
                // Through twine-spec's own reader, which names the field path.
                let spec =
                    JobSpec::from_json(&spec.to_string()).map_err(|e| RequestError::Spec {
                        message: e.to_string(),
                    })?;
                Ok(Request::Submit {
                    spec: Box::new(spec),
                })
            }
            "stop" | "status" | "events" => {
                serde_json::from_value(value.clone()).map_err(|e| fields(e.to_string()))
            }
            other => Err(RequestError::UnknownOp {
                op: other.to_owned(),
            }),
        }
    }
}

/// One job's status, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// The state of its task.
    pub state: TaskState,
    /// How many times systemd restarted the main service.
    pub restarts: u32,
    /// The container generation running it (each update gets a fresh one).
    pub generation: u64,
    /// The sequence number of the task's last event.
    pub last_seq: u64,
}

/// A task event with the job it belongs to:
/// `{"job":"web","seq":3,"event":"restarted","count":1,...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job's name.
    pub job: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// A response line. On the wire every response carries `"ok"`: errors are
/// `{"ok":false,"error":"..."}`, the rest `{"ok":true,"reply":"...",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "serde_json::Value", try_from = "serde_json::Value")]
#[non_exhaustive]
pub enum Response {
    /// The job was accepted.
    Submitted {
        /// Its name.
        job: String,
    },
    /// The stop was started.
    Stopping {
        /// The job's name.
        job: String,
    },
    /// The jobs asked about.
    Status {
        /// Their status, sorted by name.
        jobs: Vec<JobStatus>,
    },
    /// The events stream starts after this line.
    Subscribed,
    /// One event of the stream.
    Event {
        /// The event.
        event: JobEvent,
    },
    /// The stream dropped events because the reader was too slow.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// The request failed.
    Error {
        /// Why, as a sentence.
        error: String,
    },
}

/// The `ok:true` replies as they are tagged on the wire.
#[derive(Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
enum Reply {
    Submitted { job: String },
    Stopping { job: String },
    Status { jobs: Vec<JobStatus> },
    Subscribed,
    Event { event: JobEvent },
    Lagged { missed: u64 },
}

impl From<Response> for serde_json::Value {
    fn from(response: Response) -> serde_json::Value {
        let reply = match response {
            Response::Error { error } => {
                return serde_json::json!({ "ok": false, "error": error });
            }
            Response::Submitted { job } => Reply::Submitted { job },
            Response::Stopping { job } => Reply::Stopping { job },
            Response::Status { jobs } => Reply::Status { jobs },
            Response::Subscribed => Reply::Subscribed,
            Response::Event { event } => Reply::Event { event },
            Response::Lagged { missed } => Reply::Lagged { missed },
        };
        let mut object = serde_json::Map::new();
        object.insert("ok".into(), serde_json::Value::Bool(true));
        // Serializing plain data into a Value cannot fail; an empty reply
        // would be refused by the reader rather than panic here.
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(reply) {
            object.extend(fields);
        }
        serde_json::Value::Object(object)
    }
}

impl TryFrom<serde_json::Value> for Response {
    type Error = String;

    fn try_from(mut value: serde_json::Value) -> Result<Response, String> {
        let object = value
            .as_object_mut()
            .ok_or_else(|| "a response is a JSON object".to_owned())?;
        match object.remove("ok") {
            Some(serde_json::Value::Bool(false)) => {
                let error = object
                    .get("error")
                    .and_then(|e| e.as_str())
                    .ok_or_else(|| "an error response without \"error\"".to_owned())?;
                Ok(Response::Error {
                    error: error.to_owned(),
                })
            }
            Some(serde_json::Value::Bool(true)) => {
                let reply: Reply = serde_json::from_value(value).map_err(|e| e.to_string())?;
                Ok(match reply {
                    Reply::Submitted { job } => Response::Submitted { job },
                    Reply::Stopping { job } => Response::Stopping { job },
                    Reply::Status { jobs } => Response::Status { jobs },
                    Reply::Subscribed => Response::Subscribed,
                    Reply::Event { event } => Response::Event { event },
                    Reply::Lagged { missed } => Response::Lagged { missed },
                })
            }
            _ => Err("a response has a boolean \"ok\"".to_owned()),
        }
    }
}

impl Response {
    /// The response as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::Value::from(self.clone()).to_string();
        line.push('\n');
        line
    }
}

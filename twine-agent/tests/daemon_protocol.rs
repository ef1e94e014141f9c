//! The daemon's protocol over a real Unix socket, with an in-test handler.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use twine_agent::daemon::{
    BindError, Client, ClientError, Handler, HandlerError, JobEvent, JobStatus, Request, Response,
    StreamItem, bind, serve,
};
use twine_agent::lifecycle::{Event, EventKind, TaskState};
use twine_spec::JobSpec;

/// Jobs in a map; every state change is published.
struct FakeAgent {
    jobs: Mutex<BTreeMap<String, JobStatus>>,
    events: broadcast::Sender<JobEvent>,
}

impl FakeAgent {
    fn new() -> FakeAgent {
        FakeAgent {
            jobs: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
        }
    }

    fn set(&self, job: &str, to: TaskState) {
        let mut jobs = self.jobs.lock().expect("lock");
        let status = jobs.entry(job.to_owned()).or_insert_with(|| JobStatus {
            job: job.to_owned(),
            state: TaskState::Pending,
            restarts: 0,
            generation: 1,
            last_seq: 0,
        });
        status.last_seq += 1;
        let from = std::mem::replace(&mut status.state, to.clone());
        let _ = self.events.send(JobEvent {
            job: job.to_owned(),
            event: Event {
                seq: status.last_seq,
                kind: EventKind::StateChanged { from, to },
            },
        });
    }
}

impl Handler for FakeAgent {
    async fn submit(&self, spec: JobSpec) -> Result<String, HandlerError> {
        let job = spec.validate().map_err(|e| HandlerError::Refused {
            message: e.to_string(),
        })?;
        self.set(&job.name, TaskState::Starting);
        self.set(&job.name, TaskState::Running);
        Ok(job.name)
    }

    async fn stop(&self, job: String) -> Result<(), HandlerError> {
        if !self.jobs.lock().expect("lock").contains_key(&job) {
            return Err(HandlerError::UnknownJob { job });
        }
        self.set(&job, TaskState::Stopping);
        self.set(&job, TaskState::Exited { code: 0 });
        Ok(())
    }

    async fn status(&self, job: Option<String>) -> Result<Vec<JobStatus>, HandlerError> {
        let jobs = self.jobs.lock().expect("lock");
        match job {
            None => Ok(jobs.values().cloned().collect()),
            Some(job) => match jobs.get(&job) {
                Some(status) => Ok(vec![status.clone()]),
                None => Err(HandlerError::UnknownJob { job }),
            },
        }
    }

    fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }
}

fn spec(name: &str) -> JobSpec {
    JobSpec::from_json(&format!(
        r#"{{"name":"{name}","entitlement":"ads","task":{{"command":["/usr/bin/server"]}}}}"#
    ))
    .expect("spec")
}

async fn start(dir: &Path) -> (std::path::PathBuf, tokio::task::JoinHandle<()>) {
    let path = dir.join("agent.sock");
    let listener = bind(&path).expect("bind");
    let server = tokio::spawn(serve(listener, Arc::new(FakeAgent::new())));
    (path, server)
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_status_stop_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, server) = start(tmp.path()).await;
    within(async {
        let mut client = Client::connect(&path).await.expect("connect");
        assert_eq!(client.submit(&spec("web")).await.expect("submit"), "web");
        let jobs = client.status(Some("web")).await.expect("status");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].state, TaskState::Running);
        client.stop("web").await.expect("stop");
        let jobs = client.status(None).await.expect("status");
        assert_eq!(jobs[0].state, TaskState::Exited { code: 0 });

        let error = client.stop("nope").await.expect_err("unknown job");
        assert!(matches!(&error, ClientError::Refused { message } if message == "no job named \"nope\""), "{error:?}");
        // An invalid spec is refused with validation's field path.
        let mut bad = spec("web");
        bad.task.command = vec!["relative".into()];
        let error = client.submit(&bad).await.expect_err("invalid spec");
        assert!(error.to_string().contains("task.command[0]"), "{error}");
    })
    .await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_naming_the_problem_and_the_connection_survives() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, server) = start(tmp.path()).await;
    within(async {
        let mut client = Client::connect(&path).await.expect("connect");
        let cases = [
            ("{\"op\":\"status\"", "malformed JSON: EOF while parsing an object at line 1 column 14"),
            ("[1,2]", "a request is a JSON object with a string \"op\""),
            ("{\"op\":\"frobnicate\"}", "unknown op \"frobnicate\" (expected submit, stop, status or events)"),
            ("{\"op\":\"stop\"}", "stop: missing field `job`"),
            ("{\"op\":\"status\",\"jbo\":\"web\"}", "status: unknown field `jbo`, expected `job`"),
            ("{\"op\":\"submit\"}", "submit: missing field \"spec\""),
        ];
        for (line, expected) in cases {
            client.send_raw(&format!("{line}\n")).await.expect("send");
            let response = client.read_response().await.expect("read").expect("a response");
            assert_eq!(response, Response::Error { error: expected.to_owned() }, "for {line}");
        }
        // An unknown key inside the spec is named with its path.
        client
            .send_raw(
                "{\"op\":\"submit\",\"spec\":{\"name\":\"web\",\"entitlement\":\"ads\",\"task\":{\"command\":[\"/bin/x\"],\"bogus\":1}}}\n",
            )
            .await
            .expect("send");
        match client.read_response().await.expect("read") {
            Some(Response::Error { error }) => {
                assert!(error.starts_with("spec: task.bogus: unknown field `bogus`"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        // A NUL byte, then blank lines (ignored), then a good request.
        client.send_raw("\u{0}\n\n\n").await.expect("send");
        match client.read_response().await.expect("read") {
            Some(Response::Error { error }) => assert!(error.starts_with("malformed JSON: "), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(client.status(None).await.expect("still usable"), Vec::<JobStatus>::new());
    })
    .await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_format_is_ok_plus_reply() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, server) = start(tmp.path()).await;
    within(async {
        let stream = tokio::net::UnixStream::connect(&path).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(read));
        use tokio::io::AsyncWriteExt;
        write
            .write_all(b"\xff\xfe\n{\"op\":\"nope\"}\n{\"op\":\"status\"}\n")
            .await
            .expect("write");
        let line = lines.next_line().await.expect("read").expect("line");
        assert_eq!(line, r#"{"error":"request is not UTF-8","ok":false}"#);
        let first: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.expect("read").expect("line")).expect("json");
        assert_eq!(
            first,
            serde_json::json!({"ok": false, "error": "unknown op \"nope\" (expected submit, stop, status or events)"})
        );
        let second: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.expect("read").expect("line")).expect("json");
        assert_eq!(second, serde_json::json!({"ok": true, "reply": "status", "jobs": []}));
    })
    .await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_one_streams_events_while_the_other_drives() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, server) = start(tmp.path()).await;
    within(async {
        let mut driver = Client::connect(&path).await.expect("connect");
        driver.submit(&spec("web")).await.expect("submit web");
        let mut all = Client::connect(&path)
            .await
            .expect("connect")
            .events(None)
            .await
            .expect("subscribe to all");
        let mut stream = Client::connect(&path)
            .await
            .expect("connect")
            .events(Some("web"))
            .await
            .expect("subscribe to web");
        driver.submit(&spec("other")).await.expect("submit other");
        driver.stop("web").await.expect("stop web");

        let mut seen = Vec::new();
        while seen.len() < 2 {
            match stream.next().await.expect("next") {
                Some(StreamItem::Event(event)) => {
                    assert_eq!(event.job, "web", "the filter let another job through");
                    let EventKind::StateChanged { to, .. } = event.event.kind else {
                        panic!("{event:?}");
                    };
                    seen.push((event.event.seq, to.name()));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, [(3, "stopping"), (4, "exited")]);
        let mut jobs = Vec::new();
        while jobs.len() < 4 {
            match all.next().await.expect("next") {
                Some(StreamItem::Event(event)) => jobs.push((event.job, event.event.seq)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            jobs,
            [
                ("other".into(), 1),
                ("other".into(), 2),
                ("web".into(), 3),
                ("web".into(), 4)
            ]
        );
        // The streaming connection does not block the other client.
        assert_eq!(driver.status(None).await.expect("status").len(), 2);

        let error = Client::connect(&path)
            .await
            .expect("connect")
            .events(Some("ghost"))
            .await
            .expect_err("unknown job");
        assert!(
            error.to_string().contains("no job named \"ghost\""),
            "{error}"
        );
    })
    .await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_private_stale_ones_are_replaced_live_ones_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("agent.sock");

    // A stale socket: bound, then its owner went away.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let listener = bind(&path).expect("a stale socket is replaced");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    let server = tokio::spawn(serve(listener, Arc::new(FakeAgent::new())));
    let error = bind(&path).expect_err("a live daemon is not replaced");
    assert!(
        matches!(&error, BindError::InUse { path: p } if *p == path),
        "{error:?}"
    );
    within(async {
        let mut client = Client::connect(&path)
            .await
            .expect("the first daemon still answers");
        client.status(None).await.expect("status");
    })
    .await;
    server.abort();

    let file = tmp.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").expect("write");
    let error = bind(&file).expect_err("a regular file");
    assert!(matches!(error, BindError::NotASocket { .. }), "{error:?}");
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_request_is_refused_and_the_connection_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, server) = start(tmp.path()).await;
    within(async {
        let mut client = Client::connect(&path).await.expect("connect");
        let long = "x".repeat(twine_agent::daemon::MAX_REQUEST_LEN + 10);
        // The server may hang up before reading it all; the write may fail.
        let _ = client.send_raw(&long).await;
        let response = client.read_response().await.expect("read");
        assert_eq!(
            response,
            Some(Response::Error {
                error: "request longer than 1048576 bytes".into()
            })
        );
        assert_eq!(
            client.read_response().await.expect("read"),
            None,
            "not closed"
        );
    })
    .await;
    server.abort();
}

#[test]
fn requests_serialize_as_the_protocol_says() {
    let stop = Request::Stop { job: "web".into() };
    assert_eq!(
        serde_json::to_string(&stop).expect("json"),
        r#"{"op":"stop","job":"web"}"#
    );
    let status = Request::Status { job: None };
    assert_eq!(
        serde_json::to_string(&status).expect("json"),
        r#"{"op":"status"}"#
    );
    let submit = Request::Submit {
        spec: Box::new(spec("web")),
    };
    let line = serde_json::to_string(&submit).expect("json");
    assert_eq!(Request::from_line(&line).expect("parse"), submit);
}

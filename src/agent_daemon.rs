//! `twine agent daemon` and `twine agent ctl`: the agent on a local Unix socket,
//! and its client. Both print JSON, one object per line.

use std::io::Write as _;
use std::path::Path;

use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use twine_agent::agent::{Agent, AgentService, AgentSettings};
use twine_agent::daemon::{Client, StreamItem, bind, serve};
use twine_agent::state::StateDir;

use crate::agent::{CtlOp, read_spec, runtime};
use crate::{Problems, problem};

fn print_json(value: &serde_json::Value) -> bool {
    writeln!(std::io::stdout().lock(), "{value}").is_ok()
}

/// Serves the agent's protocol until SIGINT or SIGTERM, then stops every job
/// (by its kill policy) and exits. Killed (SIGKILL), it leaves the jobs
/// running; the next daemon on the same state directory reattaches to them.
pub(crate) fn daemon(state_dir: &Path, socket: &Path, rootfs: &Path) -> Result<(), Problems> {
    runtime()?.block_on(async {
        let agent =
            Agent::open(StateDir::new(state_dir), AgentSettings::new(rootfs)).map_err(problem)?;
        let mut sigint =
            signal(SignalKind::interrupt()).map_err(|e| problem(format!("SIGINT handler: {e}")))?;
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|e| problem(format!("SIGTERM handler: {e}")))?;
        let service = AgentService::start(agent).await.map_err(problem)?;
        let listener = bind(socket).map_err(problem)?;
        tracing::info!("listening on {}", socket.display());
        let server = tokio::spawn(serve(listener, std::sync::Arc::clone(&service)));
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        server.abort();
        let _ = std::fs::remove_file(socket);
        service.stop_all().await;
        Ok(())
    })
}

/// One request to the daemon; the reply is printed as JSON.
pub(crate) fn ctl(socket: &Path, op: CtlOp) -> Result<(), Problems> {
    runtime()?.block_on(async {
        let mut client = Client::connect(socket).await.map_err(problem)?;
        match op {
            CtlOp::Submit { spec } => {
                let spec = read_spec(&spec)?;
                let job = client.submit(&spec).await.map_err(problem)?;
                print_json(&json!({"submitted": job}));
            }
            CtlOp::Stop { job } => {
                client.stop(&job).await.map_err(problem)?;
                print_json(&json!({"stopping": job}));
            }
            CtlOp::Status { job } => {
                let jobs = client.status(job.as_deref()).await.map_err(problem)?;
                print_json(&json!({"jobs": jobs}));
            }
            CtlOp::Events { job } => {
                let mut stream = client.events(job.as_deref()).await.map_err(problem)?;
                while let Some(item) = stream.next().await.map_err(problem)? {
                    let line = match item {
                        StreamItem::Event(event) => {
                            serde_json::to_value(&event).map_err(problem)?
                        }
                        StreamItem::Lagged(missed) => json!({"lagged": missed}),
                        _ => continue,
                    };
                    if !print_json(&line) {
                        break;
                    }
                }
            }
        }
        Ok(())
    })
}

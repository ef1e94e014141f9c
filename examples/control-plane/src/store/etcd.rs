//! etcd v3 through `etcd-client` (gRPC).
//!
//! Every call goes through one shared [`etcd_client::Client`] (a balanced channel over
//! the endpoints) with `require_leader`, so a member cut off from the quorum fails the
//! call instead of serving stale data or stalling a watch. Each watch gets its own
//! gRPC stream, read by a task that forwards into the [`WatchStream`]'s channel and
//! cancels the etcd watch once the receiver is dropped.

use std::time::Duration;

use etcd_client as ec;

use super::*;

/// How long a best-effort lookup of the compaction revision may take after a read
/// failed with "compacted".
const COMPACT_LOOKUP: Duration = Duration::from_secs(2);

/// A handle on an etcd cluster; clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    // Boxed behind an `Arc`: the client is large, and every call clones it anyway
    // (etcd-client's methods take `&mut self`).
    client: std::sync::Arc<ec::Client>,
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// How many times a call that never reached a member (connection refused) is retried:
/// the balanced channel may pick a dead endpoint before it notices it is down.
const CONNECT_RETRIES: u32 = 10;

/// Whether the request failed before reaching any member, so retrying it is safe even
/// for a write.
fn not_sent(e: &ec::Error) -> bool {
    match e {
        ec::Error::GRpcStatus(s) => {
            // gRPC code 14 = UNAVAILABLE (tonic is not a direct dependency).
            i32::from(s.code()) == 14 && s.message().contains("connect error")
        }
        ec::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Maps an etcd-client error to a [`StoreError`] (compaction is handled by the callers
/// that can look the compaction revision up).
fn map_err(e: ec::Error) -> StoreError {
    let msg = match &e {
        ec::Error::GRpcStatus(s) => s.message().to_owned(),
        other => other.to_string(),
    };
    if msg.contains("too many operations in txn request")
        || msg.contains("duplicate key given in txn request")
    {
        return StoreError::InvalidTxn(msg);
    }
    if msg.contains("required revision has been compacted") {
        return StoreError::Compacted {
            requested: 0,
            compacted: 0,
        };
    }
    if msg.contains("future revision") {
        return StoreError::FutureRevision {
            requested: 0,
            current: 0,
        };
    }
    StoreError::Backend(e.to_string())
}

fn is_lease_not_found(e: &ec::Error) -> bool {
    let msg = match e {
        ec::Error::GRpcStatus(s) => s.message().to_owned(),
        other => other.to_string(),
    };
    msg.contains("lease not found")
}

fn convert_kv(kv: &ec::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv
        .key_str()
        .map_err(|_| StoreError::NotUtf8 {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
        })?
        .to_owned();
    let value = match kv.value_str() {
        Ok(v) => v.to_owned(),
        Err(_) => return Err(StoreError::NotUtf8 { key }),
    };
    Ok(KeyValue {
        key,
        value,
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    })
}

fn convert_event(e: &ec::Event) -> Result<Option<Event>, StoreError> {
    let Some(kv) = e.kv() else { return Ok(None) };
    Ok(Some(match e.event_type() {
        ec::EventType::Put => Event::Put(convert_kv(kv)?),
        ec::EventType::Delete => Event::Delete {
            key: kv
                .key_str()
                .map_err(|_| StoreError::NotUtf8 {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                })?
                .to_owned(),
            mod_revision: kv.mod_revision(),
        },
    }))
}

fn get_options(prefix: bool) -> Option<ec::GetOptions> {
    prefix.then(|| ec::GetOptions::new().with_prefix())
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

fn convert_compare(c: &Compare) -> ec::Compare {
    let op = match c.op {
        CmpOp::Equal => ec::CompareOp::Equal,
        CmpOp::NotEqual => ec::CompareOp::NotEqual,
        CmpOp::Greater => ec::CompareOp::Greater,
        CmpOp::Less => ec::CompareOp::Less,
    };
    let key = c.key.as_str();
    match &c.target {
        Target::Value(v) => ec::Compare::value(key, op, v.as_str()),
        Target::Version(v) => ec::Compare::version(key, op, *v),
        Target::CreateRevision(r) => ec::Compare::create_revision(key, op, *r),
        Target::ModRevision(r) => ec::Compare::mod_revision(key, op, *r),
        Target::Lease(l) => ec::Compare::lease(key, op, *l),
    }
}

fn convert_op(op: &Op) -> ec::TxnOp {
    match op {
        Op::Put { key, value, lease } => ec::TxnOp::put(
            key.as_str(),
            value.as_str(),
            lease
                .filter(|l| *l != 0)
                .map(|l| ec::PutOptions::new().with_lease(l)),
        ),
        Op::Delete { key, prefix } => ec::TxnOp::delete(
            key.as_str(),
            prefix.then(|| ec::DeleteOptions::new().with_prefix()),
        ),
        Op::Get { key, prefix } => ec::TxnOp::get(key.as_str(), get_options(*prefix)),
    }
}

/// The lease a txn branch puts keys on, if any (to name it in `LeaseNotFound`).
fn first_lease(ops: &[Op]) -> LeaseId {
    ops.iter()
        .find_map(|op| match op {
            Op::Put { lease: Some(l), .. } if *l != 0 => Some(*l),
            _ => None,
        })
        .unwrap_or(0)
}

impl EtcdStore {
    /// Connects to `endpoints` (URLs such as `http://127.0.0.1:2379`) and checks with
    /// one read that a member with a leader answers; fails with
    /// [`StoreError::Unreachable`] naming the endpoints if none does within `timeout`.
    /// `timeout` is also the deadline of every later unary call.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<EtcdStore, StoreError> {
        let joined = endpoints.join(",");
        let unreachable = |reason: String| StoreError::Unreachable {
            endpoints: joined.clone(),
            reason,
        };
        if endpoints.is_empty() {
            return Err(unreachable("no endpoint given".into()));
        }
        let options = ec::ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_require_leader(true);
        // The last error seen, for the message if the timeout ends the attempt.
        let last = std::sync::Mutex::new(String::new());
        let note = |e: &ec::Error| {
            if let Ok(mut l) = last.lock() {
                *l = e.to_string();
            }
        };
        let attempt = async {
            let mut client = ec::Client::connect(endpoints, Some(options))
                .await
                .map_err(|e| e.to_string())?;
            // The balancer may try a dead endpoint first: retry what never reached a
            // member until one answers or the timeout ends the attempt.
            loop {
                match client.get("/", None).await {
                    Ok(_) => return Ok::<_, String>(client),
                    Err(e) if not_sent(&e) => note(&e),
                    Err(e) => return Err(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let client = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(client)) => client,
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Err(_) => {
                let last = last.lock().map(|l| l.clone()).unwrap_or_default();
                return Err(unreachable(if last.is_empty() {
                    format!("no answer within {timeout:?}")
                } else {
                    format!("no answer within {timeout:?}; last error: {last}")
                }));
            }
        };
        Ok(EtcdStore {
            client: std::sync::Arc::new(client),
            endpoints: joined,
        })
    }

    /// Runs `call` on the shared client, again (with a short backoff) while it fails
    /// before reaching any member.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ec::Error>
    where
        F: FnMut(ec::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ec::Error>>,
    {
        let mut attempt = 0;
        loop {
            match call(ec::Client::clone(&self.client)).await {
                Err(e) if attempt < CONNECT_RETRIES && not_sent(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    /// The endpoints this store was connected to (comma-separated).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The compaction revision, found by opening a watch at revision 1 (etcd cancels it
    /// with the compaction revision); 0 if that does not answer in time. Only called
    /// after etcd said "compacted".
    async fn compact_revision(&self) -> Revision {
        let mut client = ec::Client::clone(&self.client);
        let lookup = async move {
            let opts = ec::WatchOptions::new().with_start_revision(1);
            let mut stream = client.watch("\0compact-probe", Some(opts)).await.ok()?;
            // etcd answers `created`, then `canceled` with the compaction revision.
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() {
                    break;
                }
            }
            None
        };
        tokio::time::timeout(COMPACT_LOOKUP, lookup)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Fills in the revisions of a `Compacted` / `FutureRevision` error.
    async fn revision_error(&self, e: ec::Error, requested: Revision) -> StoreError {
        match map_err(e) {
            StoreError::Compacted { .. } => StoreError::Compacted {
                requested,
                compacted: self.compact_revision().await,
            },
            StoreError::FutureRevision { .. } => {
                let current = self
                    .retry(|mut c| async move { c.get("/", None).await })
                    .await
                    .map(|r| header_revision(r.header()))
                    .unwrap_or(0);
                StoreError::FutureRevision { requested, current }
            }
            other => other,
        }
    }
}

/// Reads the etcd watch and forwards into `tx` until the watch ends or `tx`'s
/// receiver is gone (then cancels the etcd watch).
async fn forward_watch(
    mut stream: ec::WatchStream,
    tx: mpsc::UnboundedSender<Result<WatchMessage, StoreError>>,
) {
    let mut watch_id = None;
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            () = tx.closed() => break,
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(map_err(e)));
                return;
            }
        };
        if resp.created() {
            watch_id = Some(resp.watch_id());
        }
        if resp.canceled() {
            let compact_revision = resp.compact_revision();
            if compact_revision > 0 {
                let _ = tx.send(Ok(WatchMessage::Canceled { compact_revision }));
            } else if !resp.cancel_reason().is_empty() {
                let _ = tx.send(Err(StoreError::Backend(format!(
                    "watch canceled: {}",
                    resp.cancel_reason()
                ))));
            }
            return;
        }
        if resp.events().is_empty() {
            if !resp.created() {
                let _ = tx.send(Ok(WatchMessage::Progress(header_revision(resp.header()))));
            }
            continue;
        }
        // Forward each response whole (a fragment of a large one is a response of its own).
        let mut events = Vec::with_capacity(resp.events().len());
        for e in resp.events() {
            match convert_event(e) {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => {}
                Err(err) => {
                    let _ = tx.send(Err(err));
                    return;
                }
            }
        }
        if tx.send(Ok(WatchMessage::Events(events))).is_err() {
            break;
        }
    }
    if let Some(id) = watch_id {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.cancel(id)).await;
    }
}

/// Keys per page of a prefix read.
const PAGE: i64 = 2000;

/// The end of the key range `[prefix, end)` that holds exactly the keys starting with
/// `prefix` (etcd's rule: the prefix with its last byte below 0xff incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An empty prefix or all 0xff bytes: every key from the prefix on (etcd's "\0").
    vec![0]
}

impl Store for EtcdStore {
    async fn get(
        &self,
        key: &str,
        prefix: bool,
        revision: Option<Revision>,
    ) -> Result<Range, StoreError> {
        // A prefix is read in pages of PAGE keys, all at the revision of the first
        // page, so the read stays one snapshot while no response passes gRPC's 4 MiB
        // message limit (a 10K-host fleet is already 6 MB).
        let end = prefix.then(|| prefix_end(key.as_bytes()));
        let mut from = key.as_bytes().to_vec();
        let mut pinned = revision.filter(|r| *r > 0);
        let mut kvs = Vec::new();
        let mut header = None;
        loop {
            let mut opts = ec::GetOptions::new();
            if let Some(end) = &end {
                opts = opts.with_range(end.clone()).with_limit(PAGE);
            }
            if let Some(r) = pinned {
                opts = opts.with_revision(r);
            }
            let start = from.clone();
            let resp = match self
                .retry(|mut c| {
                    let (opts, start) = (opts.clone(), start.clone());
                    async move { c.get(start, Some(opts)).await }
                })
                .await
            {
                Ok(resp) => resp,
                Err(e) => return Err(self.revision_error(e, pinned.unwrap_or(0)).await),
            };
            let rev = header_revision(resp.header());
            header.get_or_insert(rev);
            pinned.get_or_insert(rev);
            for kv in resp.kvs() {
                kvs.push(convert_kv(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if end.is_some() && resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Range {
            revision: header.unwrap_or(0),
            kvs,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let etxn = ec::Txn::new()
            .when(txn.when.iter().map(convert_compare).collect::<Vec<_>>())
            .and_then(txn.then.iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.otherwise.iter().map(convert_op).collect::<Vec<_>>());
        let resp = match self
            .retry(|mut c| {
                let etxn = etxn.clone();
                async move { c.txn(etxn).await }
            })
            .await
        {
            Ok(resp) => resp,
            Err(e) if is_lease_not_found(&e) => {
                let lease = match first_lease(&txn.then) {
                    0 => first_lease(&txn.otherwise),
                    l => l,
                };
                return Err(StoreError::LeaseNotFound(lease));
            }
            Err(e) => return Err(map_err(e)),
        };
        let mut responses = Vec::new();
        for r in resp.op_responses() {
            responses.push(match r {
                ec::TxnOpResponse::Get(g) => g
                    .kvs()
                    .iter()
                    .map(convert_kv)
                    .collect::<Result<Vec<_>, _>>()?,
                _ => Vec::new(),
            });
        }
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
            responses,
        })
    }

    async fn lease_grant(&self, ttl: i64) -> Result<Lease, StoreError> {
        let resp = self
            .retry(|mut c| async move { c.lease_grant(ttl.max(MIN_LEASE_TTL), None).await })
            .await
            .map_err(map_err)?;
        Ok(Lease {
            id: resp.id(),
            ttl: resp.ttl(),
        })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let (mut keeper, mut stream) = self
            .retry(|mut c| async move { c.lease_keep_alive(id).await })
            .await
            .map_err(|e| {
                if is_lease_not_found(&e) {
                    StoreError::LeaseNotFound(id)
                } else {
                    map_err(e)
                }
            })?;
        keeper.keep_alive().await.map_err(map_err)?;
        match stream.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(resp.ttl()),
            Ok(Some(_)) => Err(StoreError::LeaseNotFound(id)),
            Ok(None) => Err(StoreError::Backend(
                "lease keep-alive stream ended without an answer".into(),
            )),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(id)),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        match self
            .retry(|mut c| async move { c.lease_revoke(id).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(id)),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        // Fragmented: etcd splits a response past its request size limit (a replay of
        // history can be tens of MB) instead of sending one gRPC's 4 MiB limit refuses.
        let mut opts = ec::WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_fragment();
        if start > 0 {
            opts = opts.with_start_revision(start);
        }
        let stream = self
            .retry(|mut c| {
                let opts = opts.clone();
                async move { c.watch(prefix, Some(opts)).await }
            })
            .await
            .map_err(map_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_watch(stream, tx));
        Ok(WatchStream::new(rx))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let opts = ec::CompactionOptions::new().with_physical();
        match self
            .retry(|mut c| {
                let opts = opts.clone();
                async move { c.compact(revision, Some(opts)).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.revision_error(e, revision).await),
        }
    }
}

//! One conformance suite for the [`Store`] trait, run on both backends: every check is
//! a generic `async fn` over `S: Store`, and [`conformance!`] makes a `memory_*` test
//! (a fresh [`MemoryStore`]) and an `etcd_*` test (a fresh single-member etcd from
//! `common::etcd`) of it, so the in-memory twin cannot drift from etcd.
//!
//! Plus etcd-only tests: an unreachable endpoint, a 3-member cluster losing a member,
//! a member restarted from its data dir, and the harness leaving no process behind.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod common;

use std::time::Duration;

use common::etcd::{EtcdCluster, require_etcd};
use twine_control::store::{
    CmpOp, Compare, EtcdStore, Event, MAX_TXN_OPS, MIN_LEASE_TTL, MemoryStore, Op, Store,
    StoreError, Txn, WatchMessage, WatchStream,
};

/// Makes `memory_<name>` and `etcd_<name>` tests of the generic check `<name>`.
/// `paused` runs the memory variant on tokio's paused clock (lease tests).
macro_rules! conformance {
    ($($name:ident $(($paused:ident))?),* $(,)?) => {
        mod memory {
            $(conformance!(@memory $name $($paused)?);)*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if require_etcd().is_none() {
                        return;
                    }
                    let cluster = super::EtcdCluster::start(1).await.unwrap();
                    let store = cluster.store().await.unwrap();
                    super::$name(&store).await;
                }
            )*
            use super::require_etcd;
        }
    };
    (@memory $name:ident paused) => {
        #[tokio::test(start_paused = true)]
        async fn $name() {
            super::$name(&super::MemoryStore::new()).await;
        }
    };
    (@memory $name:ident) => {
        #[tokio::test]
        async fn $name() {
            super::$name(&super::MemoryStore::new()).await;
        }
    };
}

conformance!(
    revisions_and_key_metadata,
    txn_compares_and_branches,
    invalid_txns,
    reads_at_old_revisions,
    compaction,
    watch_replays_then_streams,
    lease_expiry_deletes_keys_in_one_revision(paused),
    lease_revoke_and_unknown_leases,
);

/// The next batch of events (skipping progress notifications), within 10 s.
async fn next_events(w: &mut WatchStream) -> Vec<Event> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("no watch message within 10 s")
            .expect("watch ended")
            .unwrap();
        match msg {
            WatchMessage::Events(events) => return events,
            WatchMessage::Progress(_) => continue,
            other => panic!("expected events, got {other:?}"),
        }
    }
}

/// The next message that is not a progress notification.
async fn next_non_progress(w: &mut WatchStream) -> Option<WatchMessage> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("no watch message within 10 s")?
            .unwrap();
        if !matches!(msg, WatchMessage::Progress(_)) {
            return Some(msg);
        }
    }
}

async fn revision<S: Store>(s: &S) -> i64 {
    s.get("/", false, None).await.unwrap().revision
}

async fn revisions_and_key_metadata<S: Store>(s: &S) {
    assert_eq!(revision(s).await, 1, "a fresh store is at revision 1");
    assert_eq!(s.put("/k", "a").await.unwrap(), 2);
    let kv = &s.get("/k", false, None).await.unwrap().kvs[0];
    assert_eq!(
        (
            kv.value.as_str(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        ),
        ("a", 2, 2, 1, 0)
    );
    assert_eq!(s.put("/k", "b").await.unwrap(), 3);
    let kv = &s.get("/k", false, None).await.unwrap().kvs[0];
    assert_eq!(
        (
            kv.value.as_str(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        ("b", 2, 3, 2)
    );
    // Delete: one revision; gone.
    let r = s
        .txn(Txn::new().and_then([Op::delete("/k")]))
        .await
        .unwrap();
    assert_eq!(r.revision, 4);
    assert!(s.get("/k", false, None).await.unwrap().kvs.is_empty());
    // Deleting a missing key writes nothing: no new revision.
    let r = s
        .txn(Txn::new().and_then([Op::delete("/k")]))
        .await
        .unwrap();
    assert_eq!(r.revision, 4);
    // A read-only txn spends no revision either.
    let r = s.txn(Txn::new().and_then([Op::get("/k")])).await.unwrap();
    assert_eq!(r.revision, 4);
    // Re-creation: new create_revision, version back to 1.
    assert_eq!(s.put("/k", "c").await.unwrap(), 5);
    let kv = &s.get("/k", false, None).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // Prefix reads are sorted and see only the prefix.
    s.put("/p/b", "2").await.unwrap();
    s.put("/p/a", "1").await.unwrap();
    s.put("/q", "x").await.unwrap();
    let range = s.get("/p/", true, None).await.unwrap();
    assert_eq!(range.revision, 8);
    let keys: Vec<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/b"]);
    // A prefix delete removes every key under it in one revision.
    let r = s
        .txn(Txn::new().and_then([Op::Delete {
            key: "/p/".into(),
            prefix: true,
        }]))
        .await
        .unwrap();
    assert_eq!(r.revision, 9);
    assert!(s.get("/p/", true, None).await.unwrap().kvs.is_empty());
}

async fn txn_compares_and_branches<S: Store>(s: &S) {
    s.put("/a", "v1").await.unwrap(); // rev 2
    s.put("/a", "v2").await.unwrap(); // rev 3: create 2, mod 3, version 2
    let holds = |c: Compare| async move {
        let r = s
            .txn(
                Txn::new()
                    .when([c])
                    .and_then([Op::get("/a")])
                    .or_else([Op::get("/missing")]),
            )
            .await
            .unwrap();
        r.succeeded
    };
    assert!(holds(Compare::value("/a", CmpOp::Equal, "v2")).await);
    assert!(!holds(Compare::value("/a", CmpOp::Equal, "v1")).await);
    assert!(holds(Compare::value("/a", CmpOp::Greater, "v1")).await);
    assert!(holds(Compare::value("/a", CmpOp::NotEqual, "zz")).await);
    assert!(holds(Compare::version("/a", CmpOp::Equal, 2)).await);
    assert!(holds(Compare::version("/a", CmpOp::Less, 3)).await);
    assert!(holds(Compare::create_revision("/a", CmpOp::Equal, 2)).await);
    assert!(holds(Compare::mod_revision("/a", CmpOp::Equal, 3)).await);
    assert!(!holds(Compare::mod_revision("/a", CmpOp::Equal, 2)).await);
    assert!(holds(Compare::mod_revision("/a", CmpOp::Greater, 2)).await);
    assert!(holds(Compare::lease("/a", CmpOp::Equal, 0)).await);
    // A missing key: VERSION/CREATE/MOD/LEASE compare as 0; VALUE is always false.
    assert!(holds(Compare::version("/missing", CmpOp::Equal, 0)).await);
    assert!(holds(Compare::create_revision("/missing", CmpOp::Equal, 0)).await);
    assert!(holds(Compare::mod_revision("/missing", CmpOp::Equal, 0)).await);
    assert!(holds(Compare::lease("/missing", CmpOp::Equal, 0)).await);
    assert!(!holds(Compare::version("/missing", CmpOp::Greater, 0)).await);
    assert!(!holds(Compare::value("/missing", CmpOp::Equal, "")).await);
    assert!(!holds(Compare::value("/missing", CmpOp::NotEqual, "x")).await);
    assert!(!holds(Compare::value("/missing", CmpOp::Greater, "")).await);
    assert_eq!(revision(s).await, 3, "read-only txns spend no revision");

    // Success branch: a CAS that writes and reads its own write, at one revision.
    let r = s
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/a", CmpOp::Equal, 3)])
                .and_then([Op::put("/a", "v3"), Op::put("/b", "b1"), Op::get("/a")])
                .or_else([Op::get("/a")]),
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 4);
    assert_eq!(r.responses.len(), 3);
    assert!(r.responses[0].is_empty() && r.responses[1].is_empty());
    assert_eq!(r.responses[2][0].value, "v3");
    assert_eq!(r.responses[2][0].mod_revision, 4);
    let b = &s.get("/b", false, None).await.unwrap().kvs[0];
    assert_eq!((b.create_revision, b.mod_revision), (4, 4));

    // The same CAS again is stale: the else branch runs and reads the current value.
    let r = s
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/a", CmpOp::Equal, 3)])
                .and_then([Op::put("/a", "lost")])
                .or_else([Op::get("/a"), Op::get("/missing")]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(
        r.revision, 4,
        "an else branch that writes nothing spends no revision"
    );
    assert_eq!(r.responses.len(), 2);
    assert_eq!(r.responses[0][0].value, "v3");
    assert!(r.responses[1].is_empty());

    // An else branch that writes spends one revision.
    let r = s
        .txn(
            Txn::new()
                .when([Compare::create_revision("/a", CmpOp::Equal, 0)])
                .and_then([Op::put("/a", "new")])
                .or_else([Op::put("/c", "else")]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, 5);
    assert_eq!(s.get("/c", false, None).await.unwrap().kvs[0].value, "else");
    // Compares are ANDed.
    let r = s
        .txn(
            Txn::new()
                .when([
                    Compare::value("/a", CmpOp::Equal, "v3"),
                    Compare::value("/c", CmpOp::Equal, "nope"),
                ])
                .and_then([Op::put("/a", "x")]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert!(r.responses.is_empty());
}

async fn invalid_txns<S: Store>(s: &S) {
    let too_many: Vec<Op> = (0..=MAX_TXN_OPS)
        .map(|i| Op::put(format!("/k{i}"), "v"))
        .collect();
    let err = s.txn(Txn::new().and_then(too_many)).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err:?}");
    let too_many: Vec<Compare> = (0..=MAX_TXN_OPS)
        .map(|i| Compare::version(format!("/k{i}"), CmpOp::Equal, 0))
        .collect();
    let err = s.txn(Txn::new().when(too_many)).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err:?}");
    // Exactly MAX_TXN_OPS is fine.
    let max: Vec<Op> = (0..MAX_TXN_OPS)
        .map(|i| Op::put(format!("/k{i}"), "v"))
        .collect();
    let r = s.txn(Txn::new().and_then(max)).await.unwrap();
    assert_eq!(r.revision, 2);
    // A key written twice in one branch.
    let err = s
        .txn(Txn::new().and_then([Op::put("/d", "1"), Op::put("/d", "2")]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err:?}");
    let err = s
        .txn(Txn::new().or_else([Op::put("/d", "1"), Op::delete("/d")]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err:?}");
    // The same key in then and else is fine (only one branch runs).
    let r = s
        .txn(
            Txn::new()
                .and_then([Op::put("/d", "1")])
                .or_else([Op::put("/d", "2")]),
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(revision(s).await, 3, "refused txns change nothing");
}

async fn reads_at_old_revisions<S: Store>(s: &S) {
    s.put("/o/a", "a1").await.unwrap(); // 2
    s.put("/o/b", "b1").await.unwrap(); // 3
    s.put("/o/a", "a2").await.unwrap(); // 4
    s.txn(Txn::new().and_then([Op::delete("/o/b")]))
        .await
        .unwrap(); // 5
    s.put("/o/c", "c1").await.unwrap(); // 6
    let at = |rev: i64| async move {
        let r = s.get("/o/", true, Some(rev)).await.unwrap();
        assert_eq!(r.revision, 6, "the header is the current revision");
        r.kvs
            .into_iter()
            .map(|kv| format!("{}={}@{}", kv.key, kv.value, kv.mod_revision))
            .collect::<Vec<_>>()
    };
    assert!(at(1).await.is_empty());
    assert_eq!(at(2).await, ["/o/a=a1@2"]);
    assert_eq!(at(3).await, ["/o/a=a1@2", "/o/b=b1@3"]);
    assert_eq!(at(4).await, ["/o/a=a2@4", "/o/b=b1@3"]);
    assert_eq!(at(5).await, ["/o/a=a2@4"]);
    assert_eq!(at(6).await, ["/o/a=a2@4", "/o/c=c1@6"]);
    let one = s.get("/o/a", false, Some(3)).await.unwrap();
    assert_eq!(one.kvs[0].value, "a1");
    assert_eq!(one.kvs[0].version, 1);
    let err = s.get("/o/", true, Some(7)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FutureRevision {
                requested: 7,
                current: 6
            }
        ),
        "{err:?}"
    );
}

async fn compaction<S: Store>(s: &S) {
    for i in 0..5 {
        s.put("/c/k", &format!("v{i}")).await.unwrap(); // revisions 2..=6
    }
    s.put("/c/other", "o").await.unwrap(); // 7
    s.compact(5).await.unwrap();
    let err = s.get("/c/k", false, Some(4)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 4,
                compacted: 5
            }
        ),
        "{err:?}"
    );
    // The compaction revision itself is still readable.
    let r = s.get("/c/k", false, Some(5)).await.unwrap();
    assert_eq!(r.kvs[0].value, "v3");
    assert_eq!(s.get("/c/", true, None).await.unwrap().kvs.len(), 2);
    // A watch from below the compaction revision is canceled with it.
    let mut w = s.watch("/c/", 3).await.unwrap();
    assert_eq!(
        next_non_progress(&mut w).await,
        Some(WatchMessage::Canceled {
            compact_revision: 5
        })
    );
    // From the compaction revision on, it replays (etcd may batch several revisions
    // of history in one message).
    let mut w = s.watch("/c/", 5).await.unwrap();
    let mut revs = Vec::new();
    while revs.len() < 3 {
        revs.extend(next_events(&mut w).await.iter().map(Event::revision));
    }
    assert_eq!(revs, [5, 6, 7]);
    // Compacting again at or below the last compaction is refused.
    let err = s.compact(5).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
}

async fn watch_replays_then_streams<S: Store>(s: &S) {
    s.put("/w/a", "1").await.unwrap(); // 2
    s.put("/x", "outside").await.unwrap(); // 3
    s.txn(Txn::new().and_then([Op::put("/w/b", "2"), Op::put("/w/c", "3")]))
        .await
        .unwrap(); // 4
    s.txn(Txn::new().and_then([Op::delete("/w/a")]))
        .await
        .unwrap(); // 5

    // From revision 2 (inclusive): replay, never splitting revision 4.
    let mut w = s.watch("/w/", 2).await.unwrap();
    let mut seen: Vec<Vec<Event>> = Vec::new();
    let mut count = 0;
    while count < 4 {
        let batch = next_events(&mut w).await;
        count += batch.len();
        seen.push(batch);
    }
    assert_eq!(count, 4);
    let all: Vec<&Event> = seen.iter().flatten().collect();
    assert!(matches!(all[0], Event::Put(kv) if kv.key == "/w/a" && kv.mod_revision == 2));
    assert!(
        matches!(all[1], Event::Put(kv) if kv.key == "/w/b" && kv.mod_revision == 4 && kv.version == 1)
    );
    assert!(matches!(all[2], Event::Put(kv) if kv.key == "/w/c" && kv.mod_revision == 4));
    assert_eq!(
        all[3],
        &Event::Delete {
            key: "/w/a".into(),
            mod_revision: 5
        }
    );
    for batch in &seen {
        let has4 = batch.iter().filter(|e| e.revision() == 4).count();
        assert!(has4 == 0 || has4 == 2, "revision 4 split: {seen:?}");
        assert!(batch.windows(2).all(|p| p[0].revision() <= p[1].revision()));
    }

    // Then live events.
    s.put("/x", "still outside").await.unwrap(); // 6
    s.put("/w/b", "22").await.unwrap(); // 7
    s.txn(Txn::new().and_then([Op::delete("/w/b"), Op::put("/w/d", "4")]))
        .await
        .unwrap(); // 8
    let live = next_events(&mut w).await;
    assert_eq!(live.len(), 1);
    assert!(
        matches!(&live[0], Event::Put(kv) if kv.key == "/w/b" && kv.value == "22" && kv.mod_revision == 7 && kv.version == 2 && kv.create_revision == 4)
    );
    let live = next_events(&mut w).await;
    assert_eq!(live.len(), 2, "one revision, one message: {live:?}");
    assert!(live.iter().all(|e| e.revision() == 8));
    assert!(
        live.iter()
            .any(|e| matches!(e, Event::Delete { key, .. } if key == "/w/b"))
    );
    assert!(
        live.iter()
            .any(|e| matches!(e, Event::Put(kv) if kv.key == "/w/d"))
    );

    // A watch from the next revision sees only what comes after.
    let mut w2 = s.watch("/w/", 9).await.unwrap();
    s.put("/w/e", "5").await.unwrap(); // 9
    let live = next_events(&mut w2).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].revision(), 9);
    assert_eq!(live[0].key(), "/w/e");
    // A watch opened ahead of the store skips the revisions before its start.
    let mut w3 = s.watch("/w/", 11).await.unwrap();
    s.put("/w/g", "skipped").await.unwrap(); // 10
    s.put("/w/h", "seen").await.unwrap(); // 11
    let live = next_events(&mut w3).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].key(), "/w/h");
    assert_eq!(live[0].revision(), 11);
    drop(w3);
    // Dropping a watch does not disturb the store.
    drop(w);
    drop(w2);
    assert_eq!(s.put("/w/f", "6").await.unwrap(), 12);
}

async fn lease_expiry_deletes_keys_in_one_revision<S: Store>(s: &S) {
    let lease = s.lease_grant(1).await.unwrap();
    assert!(lease.ttl >= MIN_LEASE_TTL, "{lease:?}");
    assert!(s.lease_keep_alive(lease.id).await.unwrap() >= MIN_LEASE_TTL);
    s.txn(Txn::new().and_then([
        Op::put_leased("/l/a", "1", lease.id),
        Op::put_leased("/l/b", "2", lease.id),
    ]))
    .await
    .unwrap();
    s.put("/l/c", "unleased").await.unwrap();
    let kv = &s.get("/l/a", false, None).await.unwrap().kvs[0];
    assert_eq!(kv.lease, lease.id);
    let r = s
        .txn(Txn::new().when([Compare::lease("/l/a", CmpOp::Equal, lease.id)]))
        .await
        .unwrap();
    assert!(r.succeeded);
    let before = revision(s).await;
    let mut w = s.watch("/l/", before + 1).await.unwrap();
    // No keep-alive from now on: the lease expires (etcd: TTL 2 s, checked every 500 ms).
    let events = tokio::time::timeout(Duration::from_secs(8), next_events(&mut w))
        .await
        .expect("the lease did not expire within 8 s");
    assert_eq!(events.len(), 2, "{events:?}");
    let expired_at = before + 1;
    assert_eq!(
        events,
        [
            Event::Delete {
                key: "/l/a".into(),
                mod_revision: expired_at
            },
            Event::Delete {
                key: "/l/b".into(),
                mod_revision: expired_at
            },
        ]
    );
    let left = s.get("/l/", true, None).await.unwrap();
    assert_eq!(left.revision, expired_at);
    let keys: Vec<&str> = left.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/l/c"]);
    let err = s.lease_keep_alive(lease.id).await.unwrap_err();
    assert_eq!(err, StoreError::LeaseNotFound(lease.id));
}

async fn lease_revoke_and_unknown_leases<S: Store>(s: &S) {
    let lease = s.lease_grant(30).await.unwrap();
    assert_eq!(lease.ttl, 30);
    s.txn(Txn::new().and_then([Op::put_leased("/r/a", "1", lease.id)]))
        .await
        .unwrap();
    s.txn(Txn::new().and_then([Op::put_leased("/r/b", "2", lease.id)]))
        .await
        .unwrap();
    // Re-putting a key without the lease detaches it.
    s.put("/r/b", "free").await.unwrap();
    assert_eq!(s.get("/r/b", false, None).await.unwrap().kvs[0].lease, 0);
    let before = revision(s).await;
    s.lease_revoke(lease.id).await.unwrap();
    assert_eq!(revision(s).await, before + 1);
    let keys: Vec<String> = s
        .get("/r/", true, None)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/r/b"]);
    assert_eq!(
        s.lease_keep_alive(lease.id).await.unwrap_err(),
        StoreError::LeaseNotFound(lease.id)
    );
    assert_eq!(
        s.lease_revoke(lease.id).await.unwrap_err(),
        StoreError::LeaseNotFound(lease.id)
    );
    // A put on a lease that does not exist fails and writes nothing.
    let unknown = 0x1234_5678;
    let err = s
        .txn(Txn::new().and_then([Op::put_leased("/r/c", "x", unknown)]))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::LeaseNotFound(unknown));
    assert_eq!(
        s.lease_keep_alive(unknown).await.unwrap_err(),
        StoreError::LeaseNotFound(unknown)
    );
    assert_eq!(revision(s).await, before + 1);
}

// ---- etcd only ----

#[tokio::test]
async fn etcd_unreachable_endpoint_fails_fast_and_names_it() {
    // A port nobody listens on: bind, note, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = EtcdStore::connect(std::slice::from_ref(&endpoint), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match &err {
        StoreError::Unreachable { endpoints, .. } => assert_eq!(endpoints, &endpoint),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_members_survive_losing_one() {
    if require_etcd().is_none() {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let store = cluster.store().await.unwrap();
    assert_eq!(store.endpoints(), cluster.endpoints());
    store.put("/3/a", "1").await.unwrap();
    cluster.kill(0).unwrap();
    assert!(cluster.pid(0).is_none());
    // The client fails over to the live members; a put may need a retry while the
    // balancer notices the dead endpoint (and, if member 0 led, a new election).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let rev = loop {
        match store.put("/3/b", "2").await {
            Ok(rev) => break rev,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("put after kill: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no put within 15 s of losing one of three members: {e}"),
        }
    };
    let mut values = Vec::new();
    for _ in 0..5 {
        // Several reads, so more than one live endpoint is likely used.
        let r = store.get("/3/", true, None).await.unwrap();
        assert!(r.revision >= rev);
        values = r.kvs.into_iter().map(|kv| kv.value).collect::<Vec<_>>();
    }
    assert_eq!(values, ["1", "2"]);
    // A new connection with the dead member listed first still connects and serves.
    let fresh = EtcdStore::connect(&cluster.endpoint_list(), Duration::from_secs(10))
        .await
        .unwrap();
    fresh.put("/3/c", "3").await.unwrap();
    assert_eq!(fresh.get("/3/", true, None).await.unwrap().kvs.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_from_data_dir_keeps_keys_and_revision() {
    if require_etcd().is_none() {
        return;
    }
    let mut cluster = EtcdCluster::start(1).await.unwrap();
    let store = cluster.store().await.unwrap();
    for i in 0..20 {
        store
            .put(&format!("/rs/{i:02}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let before = store.get("/rs/", true, None).await.unwrap();
    assert_eq!(before.revision, 21);
    let old_pid = cluster.pid(0).unwrap();
    cluster.kill(0).unwrap();
    cluster.restart(0).await.unwrap();
    assert_ne!(cluster.pid(0), Some(old_pid));
    let store = cluster.store().await.unwrap();
    let after = store.get("/rs/", true, None).await.unwrap();
    assert_eq!(after, before);
    // History survived too.
    let old = store.get("/rs/", true, Some(6)).await.unwrap();
    assert_eq!(old.kvs.len(), 5);
    assert_eq!(old.kvs[4].value, "v4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_drop_leaves_no_process() {
    if require_etcd().is_none() {
        return;
    }
    let cluster = EtcdCluster::start(1).await.unwrap();
    let pid = cluster.pid(0).unwrap();
    let alive = |pid: u32| {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, None).is_ok()
    };
    assert!(alive(pid));
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(
        !alive(pid),
        "etcd {pid} still runs after the cluster was dropped"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// etcd's count of live watchers, from its `/metrics` page on the client port.
fn etcd_watchers(endpoint: &str) -> i64 {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .map(|v| v.trim().parse::<i64>().unwrap())
        .expect("no etcd_debugging_mvcc_watcher_total in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_dropping_a_watch_cancels_it_on_the_server() {
    if require_etcd().is_none() {
        return;
    }
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = cluster.store().await.unwrap();
    let endpoint = cluster.endpoint(0);
    let mut w = store.watch("/d/", 0).await.unwrap();
    store.put("/d/a", "1").await.unwrap();
    assert_eq!(next_events(&mut w).await.len(), 1);
    assert_eq!(etcd_watchers(&endpoint), 1);
    drop(w);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while etcd_watchers(&endpoint) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "etcd still has the dropped watch after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

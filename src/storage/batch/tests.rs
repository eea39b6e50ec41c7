//! The writer's own tests, on a real in-memory SQLite database.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, Statement};

use super::*;

async fn writer() -> (Writer, DatabaseConnection) {
    let mut opts = ConnectOptions::new("sqlite::memory:");
    // One connection: the in-memory database lives as long as it does.
    opts.max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(opts).await.expect("sqlite");
    db.execute_unprepared("CREATE TABLE t (k TEXT PRIMARY KEY)")
        .await
        .expect("table");
    let w = Writer::start(db.clone(), EventBus::new(), "test".into());
    (w, db)
}

/// A write that inserts `k`, then fails as `fail` says (after its write, as a broken write
/// would, or before it, as a refusal does).
fn insert(
    k: &'static str,
    fail: Option<fn() -> StoreError>,
    before: bool,
) -> impl for<'t> Fn(&'t DatabaseTransaction) -> JobFuture<'t, &'static str> + Send + Sync + 'static
{
    move |txn| {
        Box::pin(async move {
            if let (Some(f), true) = (fail, before) {
                return Err(f());
            }
            put(txn, k).await?;
            if let Some(f) = fail {
                return Err(f());
            }
            Ok(Written::new(k, Vec::new(), false))
        })
    }
}

/// Inserts the row `k` in the batch's transaction.
async fn put(txn: &DatabaseTransaction, k: &str) -> Result<(), StoreError> {
    txn.execute_unprepared(&format!("INSERT INTO t VALUES ('{k}')"))
        .await
        .map(|_| ())
        .map_err(StoreError::Unavailable)
}

async fn keys(db: &DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT k FROM t ORDER BY k",
        ))
        .await
        .expect("select");
    rows.iter()
        .map(|r| r.try_get::<String>("", "k").expect("k"))
        .collect()
}

/// A test write: its key, how it fails (if it does), and whether before writing.
type Spec = (&'static str, Option<fn() -> StoreError>, bool);

/// Starts a slow write (1 s: ample for writes queued meanwhile to arrive on a loaded machine)
/// and returns once the writer runs it, so that writes submitted now share the next batch.
async fn hold_up(w: &Writer) -> tokio::task::JoinHandle<Result<&'static str, StoreError>> {
    let w = w.clone();
    let slow = tokio::spawn(async move {
        w.submit(|_txn| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                Ok(Written::new("slow", Vec::new(), false))
            })
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    slow
}

/// Queues the writes while the writer is held up (`hold_up`), so they share the next batch;
/// returns their answers in order.
async fn together(w: &Writer, writes: Vec<Spec>) -> Vec<Result<&'static str, StoreError>> {
    let slow = hold_up(w).await;
    let calls: Vec<_> = writes
        .into_iter()
        .map(|(k, fail, before)| {
            let w = w.clone();
            tokio::spawn(async move { w.submit(insert(k, fail, before)).await })
        })
        .collect();
    assert_eq!(slow.await.expect("slow").expect("slow"), "slow");
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.expect("joined"));
    }
    out
}

#[tokio::test]
async fn writes_queued_together_share_one_commit() {
    let (w, db) = writer().await;
    let answers = together(
        &w,
        vec![("a", None, false), ("b", None, false), ("c", None, false)],
    )
    .await;
    assert_eq!(
        answers
            .into_iter()
            .map(|a| a.expect("ok"))
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(keys(&db).await, ["a", "b", "c"]);
    // The slow write alone, then the three queued behind it in one transaction.
    assert_eq!(
        w.counts(),
        WriteCounts {
            commits: 2,
            jobs: 4
        }
    );
}

#[tokio::test]
async fn a_refused_write_fails_alone_and_its_batch_commits() {
    let (w, db) = writer().await;
    let answers = together(
        &w,
        vec![
            ("a", None, false),
            ("b", Some(|| StoreError::ActiveCaseExists), true),
            ("c", None, false),
        ],
    )
    .await;
    assert!(matches!(answers[1], Err(StoreError::ActiveCaseExists)));
    assert_eq!(answers[0].as_ref().ok(), Some(&"a"));
    assert_eq!(answers[2].as_ref().ok(), Some(&"c"));
    assert_eq!(keys(&db).await, ["a", "c"]);
    assert_eq!(
        w.counts(),
        WriteCounts {
            commits: 2,
            jobs: 3
        },
        "one batch for a and c"
    );
}

#[tokio::test]
async fn a_write_broken_after_writing_leaves_nothing_and_the_others_commit_alone() {
    let (w, db) = writer().await;
    let answers = together(
        &w,
        vec![
            ("a", None, false),
            ("b", Some(|| StoreError::Invariant("broken".into())), false),
            ("c", None, false),
        ],
    )
    .await;
    assert!(matches!(answers[1], Err(StoreError::Invariant(_))));
    assert_eq!(answers[0].as_ref().ok(), Some(&"a"));
    assert_eq!(answers[2].as_ref().ok(), Some(&"c"));
    // b's row was written in the shared transaction: the batch was undone and a and c
    // were written again, each alone.
    assert_eq!(keys(&db).await, ["a", "c"]);
    assert_eq!(
        w.counts(),
        WriteCounts {
            commits: 3,
            jobs: 3
        }
    );
}

#[tokio::test]
async fn a_refusal_resting_on_a_write_that_is_undone_is_decided_again() {
    let (w, db) = writer().await;
    // Held up behind a slow write, so that the three share the next batch.
    let slow = hold_up(&w).await;
    // `a` writes in the batch but fails when run alone; `b` is refused while `a`'s row is
    // there and writes its own otherwise; `c` breaks the batch after writing.
    let runs = Arc::new(AtomicU64::new(0));
    let a = {
        let (w, runs) = (w.clone(), runs.clone());
        tokio::spawn(async move {
            w.submit(move |txn| {
                let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
                Box::pin(async move {
                    if !first {
                        return Err(StoreError::Invariant("fails alone".into()));
                    }
                    put(txn, "a").await?;
                    Ok(Written::new((), Vec::new(), false))
                })
            })
            .await
        })
    };
    let b = {
        let w = w.clone();
        tokio::spawn(async move {
            w.submit(|txn| {
                Box::pin(async move {
                    let seen = txn
                        .query_one_raw(Statement::from_string(
                            txn.get_database_backend(),
                            "SELECT k FROM t WHERE k = 'a'",
                        ))
                        .await
                        .map_err(StoreError::Unavailable)?;
                    if seen.is_some() {
                        return Err(StoreError::ActiveCaseExists);
                    }
                    put(txn, "b").await?;
                    Ok(Written::new((), Vec::new(), false))
                })
            })
            .await
        })
    };
    let c = {
        let w = w.clone();
        tokio::spawn(async move {
            w.submit(insert(
                "c",
                Some(|| StoreError::Invariant("broken".into())),
                false,
            ))
            .await
        })
    };
    slow.await.expect("slow").expect("slow");
    assert!(matches!(a.await.expect("a"), Err(StoreError::Invariant(_))));
    assert!(matches!(c.await.expect("c"), Err(StoreError::Invariant(_))));
    // `a`'s row never became durable, so `b`'s refusal did not stand: decided again, alone.
    b.await
        .expect("b")
        .expect("b stored once the batch was undone");
    assert_eq!(keys(&db).await, ["b"]);
}

#[tokio::test]
async fn a_panicking_write_fails_its_batch_and_the_writer_goes_on() {
    let (w, db) = writer().await;
    let panicking = w
        .submit(|_txn| -> JobFuture<'_, ()> { Box::pin(async { panic!("a bug in a write") }) })
        .await;
    assert!(matches!(panicking, Err(StoreError::Unavailable(_))));
    assert_eq!(w.submit(insert("d", None, false)).await.expect("d"), "d");
    assert_eq!(keys(&db).await, ["d"]);
}

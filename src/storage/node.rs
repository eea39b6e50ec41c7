//! The node lock: a stable name for this process's saga workers (`engine.node_id`), held for
//! the process's life so that no two live processes on one database ever share it. Holding it
//! proves that every earlier holder is dead — so a restarted process may give up the leases
//! its previous incarnation held (`release_dead_incarnations` in the engine) instead of
//! waiting for them to run out. Owns the lock and its watchdog; knows nothing of leases.
//!
//! - SQLite: an exclusive lock on the file `<database>.node-<id>.lock` beside the database
//!   (released by the kernel when the process dies, and only then).
//! - PostgreSQL: a session advisory lock on a connection of its own. A session can end while
//!   its process lives on (a dropped connection, a server restart), so the holder checks its
//!   session every `PG_CHECK` and treats the lock as held only until `PG_GRACE` minus one check
//!   after the last check that answered; a new holder waits `PG_GRACE` before it releases
//!   anything. A holder that lost its session has stopped its steps by then.
//! - An in-memory SQLite database is this process's alone: nothing to lock.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often the PostgreSQL holder checks its lock session.
const PG_CHECK: Duration = Duration::from_millis(200);
/// How long a new PostgreSQL holder waits before releasing its predecessor's leases. The
/// previous holder's `held_until` ends at most `PG_GRACE - PG_CHECK` after its last answered
/// check, so a live holder that lost its session has cancelled its steps before then.
pub const PG_GRACE: Duration = Duration::from_millis(1000);
/// Derived node ids tried (`host`, `host-2`, …) before giving up.
const SLOTS: u32 = 16;
/// Namespace of the node locks' advisory keys (`hash(NAMESPACE + id)`), apart from the
/// migration lock's.
const NAMESPACE: &str = "etjanstekort-gateway node lock:";

/// Why no node lock could be had.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "engine.node_id {0:?} is held by another live process on this database: give every process its own node id"
    )]
    Taken(String),
    #[error(
        "the node ids derived from the host name ({0:?} and {SLOTS} suffixed ones) are all held by live processes on this database: set engine.node_id"
    )]
    AllTaken(String),
    #[error("cannot lock the node id: {0}")]
    Io(String),
}

/// A held node id. Dropping it releases the lock (the file's, or the advisory lock's session).
#[derive(Debug)]
pub struct NodeLock {
    id: String,
    held: watch::Receiver<Option<Instant>>,
    release_after: Duration,
    _guard: Guard,
}

#[derive(Debug)]
enum Guard {
    /// Keeps the locked file open.
    File(#[allow(dead_code)] std::fs::File),
    /// The PostgreSQL watchdog (it owns the session); aborted on drop.
    Task(tokio::task::JoinHandle<()>),
    None,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Task(t) = self {
            t.abort();
        }
    }
}

impl NodeLock {
    /// Locks `configured` (refused when another live process holds it) or, when none is
    /// configured, the first free one of the host name and its suffixed forms (`host-2`, …).
    pub async fn acquire(url: &str, configured: Option<&str>) -> Result<Self, NodeError> {
        let candidates: Vec<String> = match configured {
            Some(id) => vec![id.to_owned()],
            None => {
                let host = host_name();
                std::iter::once(host.clone())
                    .chain((2..=SLOTS).map(|n| format!("{host}-{n}")))
                    .collect()
            }
        };
        for id in &candidates {
            if let Some(lock) = try_lock(url, id).await? {
                return Ok(lock);
            }
        }
        Err(match configured {
            Some(id) => NodeError::Taken(id.to_owned()),
            None => NodeError::AllTaken(candidates[0].clone()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Until when the lock is known to be held: `None` for the process's life; on PostgreSQL
    /// a deadline the watchdog moves on with every answered check (a step must not run past
    /// it: after it, another process may hold the node id).
    pub fn held_until(&self) -> watch::Receiver<Option<Instant>> {
        self.held.clone()
    }

    /// How long after taking the lock the previous holder's leases may be released.
    pub fn release_after(&self) -> Duration {
        self.release_after
    }
}

/// The host name (a Kubernetes pod's name), cut to the characters a node id may hold.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if clean.is_empty() {
        "node".to_owned()
    } else {
        clean
    }
}

/// Whether `id` may be a node id: 1 to 63 of `a–z 0–9 . -`. Lease owners are matched by
/// prefix with `LIKE`, which knows `_` and `%` as wildcards and is blind to case on SQLite;
/// `:` ends the node id in a lease owner.
pub fn valid_node_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

async fn try_lock(url: &str, id: &str) -> Result<Option<NodeLock>, NodeError> {
    if url.starts_with("sqlite:") {
        return lock_file(url, id);
    }
    lock_postgres(url, id).await
}

fn lock_file(url: &str, id: &str) -> Result<Option<NodeLock>, NodeError> {
    use std::str::FromStr;
    let opts = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| NodeError::Io(e.to_string()))?;
    let db = opts.get_filename();
    let unlocked = |guard| {
        let (_, held) = watch::channel(None);
        Ok(Some(NodeLock {
            id: id.to_owned(),
            held,
            release_after: Duration::ZERO,
            _guard: guard,
        }))
    };
    let name = db.to_string_lossy();
    if url.contains(":memory:")
        || url.contains("mode=memory")
        || name.starts_with("file:sqlx-in-memory")
    {
        return unlocked(Guard::None);
    }
    let mut path = db.as_os_str().to_owned();
    path.push(format!(".node-{id}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NodeError::Io(format!("{}: {e}", std::path::Path::new(&path).display())))?;
    match file.try_lock() {
        Ok(()) => unlocked(Guard::File(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(NodeError::Io(format!(
            "{}: {e}",
            std::path::Path::new(&path).display()
        ))),
    }
}

/// The advisory lock key of a node id (stable across builds and versions).
fn advisory_key(id: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{NAMESPACE}{id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

async fn lock_postgres(url: &str, id: &str) -> Result<Option<NodeLock>, NodeError> {
    let key = advisory_key(id);
    let issued = Instant::now();
    let Some(conn) = pg_lock(url, key)
        .await
        .map_err(|e| NodeError::Io(format!("PostgreSQL: {e}")))?
    else {
        return Ok(None);
    };
    let (tx, held) = watch::channel(Some(issued + PG_GRACE - PG_CHECK));
    let task = tokio::spawn(watchdog(url.to_owned(), id.to_owned(), key, conn, tx));
    Ok(Some(NodeLock {
        id: id.to_owned(),
        held,
        release_after: PG_GRACE,
        _guard: Guard::Task(task),
    }))
}

type PgConn = sea_orm::sqlx::postgres::PgConnection;

/// A new session holding the advisory lock `key`, or `None` when another session holds it.
async fn pg_lock(url: &str, key: i64) -> Result<Option<PgConn>, String> {
    use sea_orm::sqlx::Connection;
    let connect = async {
        let mut conn = PgConn::connect(url).await.map_err(|e| e.to_string())?;
        let got: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(got.then_some(conn))
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "no answer within 10s".to_owned())?
}

/// Checks the lock's session every `PG_CHECK`; each answered check moves `held_until` on.
/// A session that fails or does not answer in time is dropped and the lock taken again on a
/// new one; meanwhile `held_until` stays where it was and runs out.
async fn watchdog(
    url: String,
    id: String,
    key: i64,
    conn: PgConn,
    held: watch::Sender<Option<Instant>>,
) {
    let mut conn = Some(conn);
    let mut warned = false;
    loop {
        tokio::time::sleep(PG_CHECK).await;
        let issued = Instant::now();
        if let Some(c) = conn.as_mut() {
            let check = sea_orm::sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *c);
            match tokio::time::timeout(PG_CHECK * 2, check).await {
                Ok(Ok(_)) => {
                    held.send_replace(Some(issued + PG_GRACE - PG_CHECK));
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(node_id = %id, error = %e, "the node lock's database session failed; its saga steps stop until the lock is held again");
                }
                Err(_) => {
                    tracing::warn!(node_id = %id, "the node lock's database session did not answer; its saga steps stop until the lock is held again");
                }
            }
            conn = None;
        }
        match pg_lock(&url, key).await {
            Ok(Some(c)) => {
                conn = Some(c);
                warned = false;
                held.send_replace(Some(issued + PG_GRACE - PG_CHECK));
                tracing::info!(node_id = %id, "node lock held again");
            }
            Ok(None) if !warned => {
                warned = true;
                tracing::error!(node_id = %id, "another live process holds this node id now; this replica runs no saga steps while it does");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(node_id = %id, error = %e, "node lock not taken again yet");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked_for_what_lease_owners_need() {
        assert!(valid_node_id("gateway-7f9c-abc.example"));
        for bad in ["", "a_b", "a%b", "a:b", "a b", "Ab", &"x".repeat(64)] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
        assert!(valid_node_id(&host_name()), "{}", host_name());
    }

    #[test]
    fn advisory_keys_are_stable_and_apart() {
        assert_eq!(advisory_key("a"), advisory_key("a"));
        assert_ne!(advisory_key("a"), advisory_key("b"));
        assert_ne!(advisory_key("a"), crate::storage::MIGRATION_LOCK);
    }

    #[tokio::test]
    async fn a_node_id_on_a_sqlite_file_is_held_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        let first = NodeLock::acquire(&url, Some("n1")).await.expect("first");
        assert!(matches!(
            NodeLock::acquire(&url, Some("n1")).await,
            Err(NodeError::Taken(_))
        ));
        // Derived ids move on to a free slot.
        let a = NodeLock::acquire(&url, None).await.expect("a");
        let b = NodeLock::acquire(&url, None).await.expect("b");
        assert_ne!(a.id(), b.id());
        drop(first);
        NodeLock::acquire(&url, Some("n1"))
            .await
            .expect("free once its holder is gone");
    }
}

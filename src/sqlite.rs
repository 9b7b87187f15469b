//! SQLite files of the embedded backends (the queue, the local executor's record).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Opens (creating the file and its directory if needed) a database whose commits
/// are on disk when they return: WAL with `synchronous=FULL`. Another process using
/// the file (a separate `listen` or `work`) is waited for up to 5 s.
pub fn open_durable(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            // A failure shows as the open's error just below.
            let _ = std::fs::create_dir_all(parent);
        }
    }
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // Turning a new file to WAL takes it whole, and SQLite answers "busy" at once
    // (without waiting) when another process is at it: tried again for as long as
    // the busy timeout.
    let mut tries = 0;
    while let Err(error) = connection.pragma_update(None, "journal_mode", "WAL") {
        let busy = error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
        tries += 1;
        if !busy || tries >= 100 {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

/// How often a file whose writer does not checkpoint is checkpointed.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The WAL file is cut back to this size after a checkpoint let it start over.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Has `connection`, a file's one writer, leave checkpoints to
/// [`checkpoint_periodically`]: its commits then fsync the WAL alone, never the
/// database file too (a checkpoint copies the WAL's pages there and syncs it).
pub fn leave_checkpoints(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(())
}

/// Checkpoints the WAL of the file at `path` from a connection of its own, every
/// [`CHECKPOINT_EVERY`], while `alive` says so: passive checkpoints, which never wait
/// for the writer nor make it wait. Durability is the writer's commits' (WAL with
/// `synchronous=FULL`): a checkpoint only moves committed pages.
pub fn checkpoint_periodically(
    path: std::path::PathBuf,
    alive: impl Fn() -> bool + Send + 'static,
) {
    tokio::spawn(async move {
        let connection = match Connection::open(&path) {
            Ok(connection) => std::sync::Arc::new(std::sync::Mutex::new(connection)),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "Cannot open a connection to checkpoint the file; its WAL is checkpointed by nothing.");
                return;
            }
        };
        let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !alive() {
                return;
            }
            let connection = connection.clone();
            let checkpointed = tokio::task::spawn_blocking(move || {
                let connection = connection.lock().expect("a checkpointer's connection lock");
                connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            })
            .await;
            if let Ok(Err(error)) = checkpointed {
                tracing::debug!(%error, path = %path.display(), "A checkpoint did not complete; the next one tries again.");
            }
        }
    });
}

/// One connection shared by async callers, used on the blocking pool and never on an
/// async thread: what the ledger, the journal and the local executor's record hold.
#[derive(Clone)]
pub struct Shared(std::sync::Arc<std::sync::Mutex<Connection>>);

impl Shared {
    pub fn new(connection: Connection) -> Shared {
        Shared(std::sync::Arc::new(std::sync::Mutex::new(connection)))
    }

    /// Runs `work` on the connection off the async threads. The outer error is the
    /// blocking task's (it panicked), the inner one SQLite's.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<rusqlite::Result<T>, tokio::task::JoinError> {
        let connection = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().expect("a SQLite connection's lock");
            work(&mut connection)
        })
        .await
    }
}

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
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
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

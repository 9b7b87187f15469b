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

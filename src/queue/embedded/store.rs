//! The queue's SQL: its tables, and each operation as a statement or two inside the
//! writer's transaction.

use std::path::Path;

use rusqlite::{Connection, params};

use super::writer::ReceiveOutcome;
use super::{DeadLetter, Depth};
use crate::queue::{Message, Receipt, Received};

pub(super) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = crate::sqlite::open_durable(path)?;
    crate::sqlite::leave_checkpoints(&connection)?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS jobs (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL UNIQUE,
             grp TEXT,
             body TEXT NOT NULL,
             visible_at INTEGER NOT NULL,
             receive_count INTEGER NOT NULL DEFAULT 0,
             receipt TEXT,
             sent_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs (grp, seq);
         CREATE INDEX IF NOT EXISTS jobs_by_receipt ON jobs (receipt);
         CREATE INDEX IF NOT EXISTS jobs_by_visible_at ON jobs (visible_at);
         CREATE TABLE IF NOT EXISTS dead_letters (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL,
             grp TEXT,
             body TEXT NOT NULL,
             receive_count INTEGER NOT NULL,
             reason TEXT NOT NULL,
             sent_at INTEGER NOT NULL,
             dead_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);",
    )?;
    Ok(connection)
}

pub(super) use crate::clock::now_ms;

pub(super) fn send(tx: &Connection, messages: &[Message], now: i64) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO jobs (id, grp, body, visible_at, receive_count, sent_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?4)",
    )?;
    for message in messages {
        insert.execute(params![message.id, message.group, message.body, now])?;
    }
    Ok(())
}

pub(super) fn receive(
    tx: &Connection,
    max: usize,
    now: i64,
    visibility: i64,
    max_receives: u32,
) -> rusqlite::Result<ReceiveOutcome> {
    // A receivable message: visible, and, in a group, the oldest of its group still
    // queued (while that one is in flight or delayed, the group waits).
    const RECEIVABLE: &str = "visible_at <= ?1
        AND (grp IS NULL OR seq = (SELECT MIN(seq) FROM jobs AS k WHERE k.grp = j.grp))";

    // The oldest receivable messages, in send order. One already received
    // max_receives times is dead-lettered instead of handed out (as SQS moves such a
    // message when it would hand it out again); that can make the next message of its
    // group receivable, so look again until `max` are leased or none is left. Only the
    // messages about to be handed out are looked at: a receive costs the same with a
    // backlog of a million.
    let mut candidates = tx.prepare_cached(&format!(
        "SELECT seq, id, grp, body, receive_count, sent_at FROM jobs AS j WHERE {RECEIVABLE}
         ORDER BY seq LIMIT ?2"
    ))?;
    let mut lease = tx.prepare_cached(
        "UPDATE jobs SET receive_count = receive_count + 1, receipt = ?2, visible_at = ?3
         WHERE seq = ?1",
    )?;
    type Row = (i64, String, Option<String>, String, u32, i64);
    let mut received = Vec::with_capacity(max);
    while received.len() < max {
        let rows: Vec<Row> = candidates
            .query_map(params![now, (max - received.len()) as i64], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        if rows.is_empty() {
            break;
        }
        let mut exhausted = false;
        for (seq, id, group, body, receive_count, sent_at) in rows {
            if receive_count >= max_receives {
                let reason = format!(
                    "received {receive_count} times without being acknowledged (max_receives = {max_receives})"
                );
                move_to_dead_letters(tx, seq, &reason, now)?;
                tracing::warn!(job = %id, receive_count, "Dead-lettered a job received too often.");
                exhausted = true;
                continue;
            }
            let receipt = uuid::Uuid::new_v4().to_string();
            lease.execute(params![seq, receipt, now + visibility])?;
            received.push(Received {
                receipt: Receipt(receipt),
                message: Message { id, group, body },
                receive_count: receive_count + 1,
                sent_at_ms: Some(sent_at),
                shared: false,
            });
        }
        if !exhausted {
            break;
        }
    }
    let next_visible_at: Option<i64> = tx
        .prepare_cached("SELECT MIN(visible_at) FROM jobs WHERE visible_at > ?1")?
        .query_row([now], |row| row.get(0))?;
    Ok(ReceiveOutcome {
        received,
        next_visible_at,
    })
}

pub(super) fn move_to_dead_letters(
    tx: &Connection,
    seq: i64,
    reason: &str,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dead_letters (id, grp, body, receive_count, reason, sent_at, dead_at)
         SELECT id, grp, body, receive_count, ?2, sent_at, ?3 FROM jobs WHERE seq = ?1",
    )?
    .execute(params![seq, reason, now])?;
    tx.prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
        .execute([seq])?;
    Ok(())
}

pub(super) fn list_dead(tx: &Connection) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut statement = tx.prepare_cached(
        "SELECT seq, id, grp, body, receive_count, reason, dead_at FROM dead_letters ORDER BY seq",
    )?;
    statement
        .query_map([], |row| {
            Ok(DeadLetter {
                seq: row.get(0)?,
                message: Message {
                    id: row.get(1)?,
                    group: row.get(2)?,
                    body: row.get(3)?,
                },
                receive_count: row.get(4)?,
                reason: row.get(5)?,
                dead_at_ms: row.get(6)?,
            })
        })?
        .collect()
}

pub(super) fn redrive(tx: &Connection, seqs: Option<&[i64]>, now: i64) -> rusqlite::Result<usize> {
    let all: Vec<i64> = match seqs {
        Some(seqs) => seqs.to_vec(),
        None => tx
            .prepare_cached("SELECT seq FROM dead_letters ORDER BY seq")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?,
    };
    let mut moved = 0;
    for seq in all {
        // A job with the same id already queued stands for this one.
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO jobs (id, grp, body, visible_at, receive_count, sent_at)
                 SELECT id, grp, body, ?2, 0, sent_at FROM dead_letters WHERE seq = ?1",
            )?
            .execute(params![seq, now])?;
        let deleted = tx
            .prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?
            .execute([seq])?;
        if deleted > 0 && inserted > 0 {
            moved += 1;
        }
    }
    Ok(moved)
}

pub(super) fn depth(tx: &Connection, now: i64) -> rusqlite::Result<Depth> {
    let (visible, in_flight): (i64, i64) = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(visible_at <= ?1), 0), COALESCE(SUM(visible_at > ?1), 0) FROM jobs",
        )?
        .query_row([now], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let dead: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM dead_letters")?
        .query_row([], |row| row.get(0))?;
    Ok(Depth {
        visible: visible as u64,
        in_flight: in_flight as u64,
        dead: dead as u64,
    })
}

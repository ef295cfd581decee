//! The audit log: one committed (fsync'd) row per change, numbered in order, the newest
//! [`AUDIT_KEPT`] kept.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use virga_types::AuditEntry;

use crate::db::db_err;
use crate::{Result, Store, StoreError};

/// Entries by sequence number, as JSON.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Entries kept; beyond, the oldest go.
pub const AUDIT_KEPT: u64 = 10_000;

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("audit entry: {e}"))
}

/// Create the audit table if this store has none yet.
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(AUDIT).map_err(db_err)?;
    Ok(())
}

impl Store {
    /// Append `entry` under the next sequence number (its `seq` is ignored), dropping the
    /// oldest entries beyond [`AUDIT_KEPT`]; returns the number given.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        self.append_audit_keeping(entry, AUDIT_KEPT)
    }

    fn append_audit_keeping(&self, entry: &AuditEntry, kept: u64) -> Result<u64> {
        self.with_db(true, |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let seq = {
                let mut table = tx.open_table(AUDIT).map_err(db_err)?;
                let seq = table
                    .last()
                    .map_err(db_err)?
                    .map_or(1, |(k, _)| k.value() + 1);
                let numbered = AuditEntry {
                    seq,
                    ..entry.clone()
                };
                let bytes = serde_json::to_vec(&numbered).map_err(json_err)?;
                table.insert(seq, bytes.as_slice()).map_err(db_err)?;
                let first = table
                    .first()
                    .map_err(db_err)?
                    .map_or(seq, |(k, _)| k.value());
                for _ in 0..(seq - first + 1).saturating_sub(kept) {
                    table.pop_first().map_err(db_err)?;
                }
                seq
            };
            tx.commit().map_err(db_err)?;
            Ok(seq)
        })
    }

    /// The newest `limit` entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(AUDIT).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)?.rev().take(limit) {
                let (_, v) = row.map_err(db_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(json_err)?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::db::tests::key;

    #[test]
    fn the_log_keeps_the_newest_entries_in_order_across_a_reopen() {
        const KEPT: u64 = 50;
        let dir = tempfile::tempdir().unwrap();
        let entry = |n: u64| AuditEntry {
            seq: 0,
            time: Utc::now(),
            who: "admin".into(),
            action: format!("POST /system/secrets/{n}"),
            target: None,
            status: 201,
        };
        {
            let s = Store::open(dir.path(), key()).unwrap();
            assert!(s.audit(10).unwrap().is_empty());
            for n in 1..=KEPT + 5 {
                assert_eq!(s.append_audit_keeping(&entry(n), KEPT).unwrap(), n);
            }
        }
        let s = Store::open(dir.path(), key()).unwrap();
        let all = s.audit(usize::MAX).unwrap();
        assert_eq!(all.len() as u64, KEPT);
        assert_eq!(all[0].seq, KEPT + 5);
        assert_eq!(all.last().unwrap().seq, 6);
        assert_eq!(all[0].action, format!("POST /system/secrets/{}", KEPT + 5));
        let two: Vec<u64> = s.audit(2).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(two, [KEPT + 5, KEPT + 4]);
        // Numbering goes on after the reopen.
        assert_eq!(s.append_audit(&entry(0)).unwrap(), KEPT + 6);
    }
}

//! The durable metadata store: redb, its schema and table access. Mutations reach it through
//! the [`crate::committer`].

pub mod inline_data;
pub mod schema;
pub mod tables;

use dfs_common::{FsError, FsResult};
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::path::Path;
use std::sync::Arc;

/// Converts any redb error into the wire error; storage failures surface as EIO.
pub trait DbResult<T> {
    fn db(self) -> FsResult<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self) -> FsResult<T> {
        self.map_err(|e| FsError::Io(format!("metadata store: {}", e.into())))
    }
}

/// Memory redb keeps pages of the store in, by default: its own default.
pub const CACHE: usize = 1 << 30;

/// The store's format, kept in `counters`: what a `dfs-meta` must know to read it. 1: every
/// store before the mark; 2: inline bytes in pieces ([`inline_data`]), which earlier versions
/// do not find. A store marked with a later format than this is refused at open.
pub const FORMAT: u64 = 2;
const FORMAT_KEY: &str = "store_format";

/// Opens (or creates) the database file with the default cache; see [`open_with_cache`].
pub fn open(path: &Path) -> FsResult<Arc<Database>> {
    open_with_cache(path, CACHE)
}

/// Opens (or creates) the database file, keeping up to `cache` bytes of its pages in memory,
/// and makes sure every table exists.
pub fn open_with_cache(path: &Path, cache: usize) -> FsResult<Arc<Database>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let db = Database::builder()
        .set_cache_size(cache)
        .create(path)
        .db()?;
    let tx = db.begin_write().db()?;
    mark_format(&tx, path)?;
    let allowances_kept = {
        use redb::TableHandle;
        tx.list_tables()
            .db()?
            .any(|table| table.name() == schema::INLINE_BYTES.name())
    };
    tables::WriteTables::create_all(&tx)?;
    crate::volumes::backfill(&tx)?;
    crate::volumes::index_ids(&tx)?;
    if !allowances_kept {
        crate::inline::backfill(&tx)?;
    }
    tx.commit().db()?;
    Ok(Arc::new(db))
}

/// Refuses a store of a later format than [`FORMAT`]; marks an earlier one with it.
fn mark_format(tx: &redb::WriteTransaction, path: &Path) -> FsResult<()> {
    use redb::ReadableTable;
    let mut counters = tx.open_table(schema::COUNTERS).db()?;
    let found = counters.get(FORMAT_KEY).db()?.map(|v| v.value());
    match found {
        Some(found) if found > FORMAT => Err(FsError::invalid(format!(
            "{}: the metadata store is of format {found}, written by a newer dfs-meta; this \
             one reads formats up to {FORMAT}: run the newer version",
            path.display()
        ))),
        Some(found) if found == FORMAT => Ok(()),
        _ => {
            counters.insert(FORMAT_KEY, FORMAT).db()?;
            Ok(())
        }
    }
}

pub fn read(db: &Database) -> FsResult<ReadTransaction> {
    db.begin_read().db()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_of_a_later_format_is_refused_and_an_earlier_one_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let format = |db: &Database| {
            let tx = db.begin_read().unwrap();
            let counters = tx.open_table(schema::COUNTERS).unwrap();
            let found = counters.get(FORMAT_KEY).unwrap().map(|v| v.value());
            found
        };
        let set = |db: &Database, format: Option<u64>| {
            let tx = db.begin_write().unwrap();
            {
                let mut counters = tx.open_table(schema::COUNTERS).unwrap();
                match format {
                    Some(f) => counters.insert(FORMAT_KEY, f).unwrap(),
                    None => counters.remove(FORMAT_KEY).unwrap(),
                };
            }
            tx.commit().unwrap();
        };
        let db = open(&path).unwrap();
        assert_eq!(format(&db), Some(FORMAT));
        // A store from before the mark gets it.
        set(&db, None);
        drop(db);
        let db = open(&path).unwrap();
        assert_eq!(format(&db), Some(FORMAT));
        set(&db, Some(FORMAT + 1));
        drop(db);
        let Err(err) = open(&path) else {
            panic!("a later format is refused")
        };
        assert!(err.to_string().contains("newer dfs-meta"), "{err}");
    }
}

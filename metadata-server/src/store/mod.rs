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
    let allowances_kept = {
        use redb::TableHandle;
        tx.list_tables()
            .db()?
            .any(|table| table.name() == schema::INLINE_BYTES.name())
    };
    tables::WriteTables::create_all(&tx)?;
    crate::volumes::backfill(&tx)?;
    if !allowances_kept {
        crate::inline::backfill(&tx)?;
    }
    tx.commit().db()?;
    Ok(Arc::new(db))
}

pub fn read(db: &Database) -> FsResult<ReadTransaction> {
    db.begin_read().db()
}

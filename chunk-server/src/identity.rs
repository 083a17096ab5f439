//! The chunk server's own identity, kept in its data directory: a server id chosen at random on
//! first start (so it survives restarts and address changes) and the secret key for QUIC
//! stateless resets (so peers notice a restart at once).

use dfs_common::{FsError, FsResult, ServerId};
use std::fs;
use std::io::Write;
use std::path::Path;

pub struct NodeIdentity {
    pub id: ServerId,
    pub reset_key: [u8; 32],
}

const FILE: &str = "identity";

impl NodeIdentity {
    pub fn load_or_create(data_dir: &Path) -> FsResult<Self> {
        fs::create_dir_all(data_dir)?;
        let path = data_dir.join(FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).ok_or_else(|| {
                FsError::Corrupt(format!("{}: unreadable identity", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let node = NodeIdentity {
                    // Never 0, so an id is never confused with an unset value.
                    id: ServerId(rand::random::<u64>() | 1),
                    reset_key: rand::random(),
                };
                let tmp = data_dir.join(format!("{FILE}.tmp"));
                let mut f = fs::File::create(&tmp)?;
                writeln!(
                    f,
                    "id = {}\nreset_key = {}",
                    node.id.0,
                    hex::encode(node.reset_key)
                )?;
                f.sync_all()?;
                fs::rename(&tmp, &path)?;
                fs::File::open(data_dir)?.sync_all()?;
                Ok(node)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let mut id = None;
        let mut key = None;
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            match k.trim() {
                "id" => id = v.trim().parse().ok(),
                "reset_key" => key = hex::decode(v.trim()).ok()?.try_into().ok(),
                _ => {}
            }
        }
        Some(NodeIdentity {
            id: ServerId(id?),
            reset_key: key?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(dir.path()).unwrap();
        let b = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!((a.id, a.reset_key), (b.id, b.reset_key));
        fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert!(NodeIdentity::load_or_create(dir.path()).is_err());
    }
}

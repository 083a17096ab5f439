//! Client certificates' rights on this server: the metadata server says which volumes a
//! client may read or write, and this server checks every shard it stores or serves for one.
//! Servers and administrators may do anything.

use dfs_common::net::meta::MetaLink;
use dfs_common::net::tls::{Fingerprint, Principal};
use dfs_common::proto::meta::{req, VolumeGrant};
use dfs_common::{FsError, FsResult, VolumeId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer from the metadata server is used; a revoked client keeps access to this
/// server's shards for at most this long.
const FRESH_FOR: Duration = Duration::from_secs(5);
/// How long an old answer still serves while the metadata server cannot be reached.
const STALE_FOR: Duration = Duration::from_secs(300);

/// The metadata server's answer for one certificate (`None`: no rights), and when it came.
type Answer = (Instant, Option<Vec<VolumeGrant>>);

pub struct ClientAccess {
    meta: MetaLink,
    cache: Mutex<HashMap<Fingerprint, Answer>>,
}

impl ClientAccess {
    pub fn new(meta: MetaLink) -> Self {
        ClientAccess {
            meta,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses `principal` unless it may read (or with `write`, write) `volume`.
    pub async fn check(
        &self,
        principal: &Principal,
        volume: VolumeId,
        write: bool,
    ) -> FsResult<()> {
        let Principal::Client(fingerprint) = principal else {
            return Ok(());
        };
        let grants = self.grants(fingerprint).await?.ok_or_else(|| {
            FsError::Denied(format!(
                "client certificate {fingerprint} is not registered, or was revoked"
            ))
        })?;
        match grants.iter().find(|g| g.volume == volume) {
            None => Err(FsError::Denied(format!(
                "this client certificate has no access to volume {volume}"
            ))),
            Some(g) if write && !g.write => Err(FsError::ReadOnly),
            Some(_) => Ok(()),
        }
    }

    /// For requests that direct a chunk server (delete, rebuild, verify, scrub): only the
    /// metadata server's certificate and administrators' may make them; other chunk servers'
    /// and clients' may not.
    pub fn directing(&self, principal: &Principal) -> FsResult<()> {
        if principal.directs_chunk_servers() {
            Ok(())
        } else {
            Err(FsError::Denied(
                "this needs the metadata server's or an administrator's certificate".into(),
            ))
        }
    }

    async fn grants(&self, fingerprint: &Fingerprint) -> FsResult<Option<Vec<VolumeGrant>>> {
        let cached = self
            .cache
            .lock()
            .expect("access cache")
            .get(fingerprint)
            .cloned();
        if let Some((at, grants)) = &cached {
            if at.elapsed() < FRESH_FOR {
                return Ok(grants.clone());
            }
        }
        let asked = self
            .meta
            .ask(req::ClientGrants {
                fingerprint: fingerprint.0,
            })
            .await;
        match asked {
            Ok(grants) => {
                let mut cache = self.cache.lock().expect("access cache");
                // Bounded: forget answers too old to use before remembering a new one.
                cache.retain(|_, (at, _)| at.elapsed() < STALE_FOR);
                cache.insert(*fingerprint, (Instant::now(), grants.clone()));
                Ok(grants)
            }
            Err(e) => match cached {
                Some((at, grants)) if at.elapsed() < STALE_FOR => Ok(grants),
                _ => Err(FsError::unavailable(format!(
                    "cannot check the client's rights with the metadata server: {e}"
                ))),
            },
        }
    }
}

//! Raft's log and state machine (openraft 0.9, storage v2) in the store's sled trees.
//!
//! The log is the `raft_log` tree (big-endian index → entry JSON); the vote, the committed
//! and purged log ids, the applied state and the current snapshot are keys of `raft_meta`.
//! The state machine is the replica trees: a committed [`Batch`] is applied to them write by
//! write. Applying is idempotent (every write carries the whole value), so an entry applied
//! twice after a crash, or on top of a snapshot that already saw it, changes nothing.

// openraft's traits fix the error type (`StorageError`, 224 bytes); the helpers use it too
#![allow(clippy::result_large_err)]

use super::{Op, Store, StoreError, TreeName};
use crate::cluster::{Batch, Member, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};

type Nid = u64;
type Result<T> = std::result::Result<T, StorageError<Nid>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
const APPLIED: &[u8] = b"applied";
const MEMBERSHIP: &[u8] = b"membership";
const SNAPSHOT_META: &[u8] = b"snapshot-meta";
const SNAPSHOT_DATA: &[u8] = b"snapshot-data";

fn read_err(e: impl std::error::Error + 'static) -> StorageError<Nid> {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<Nid> {
    StorageIOError::write(&e).into()
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl Store {
    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.raft_meta.get(key).map_err(read_err)? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(read_err),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        self.raft_meta.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn sync(&self) -> Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
            .map_err(write_err)?;
        Ok(())
    }

    /// Applies committed writes to the replica trees.
    pub(super) fn apply_ops(&self, ops: &[Op]) -> std::result::Result<(), StoreError> {
        for tree in TreeName::ALL {
            let batch = super::batch_of(ops.iter().filter(|op| op.tree == tree));
            self.replica(tree).apply_batch(batch)?;
        }
        Ok(())
    }

    /// The id of the last entry in the Raft log (or of the last purged one).
    pub fn raft_last_log_id(&self) -> Result<Option<LogId<Nid>>> {
        match self.raft_log.last().map_err(read_err)? {
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
            None => self.meta(PURGED),
        }
    }

    /// Whether this data dir has ever been part of a Raft cluster.
    pub fn raft_initialized(&self) -> bool {
        self.raft_meta.contains_key(VOTE).unwrap_or(false) || !self.raft_log.is_empty()
    }
}

/// The Raft log, in the store.
#[derive(Clone)]
pub struct LogStore(pub Store);

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for kv in self.0.raft_log.range(index_key(start)..) {
            let (k, v) = kv.map_err(read_err)?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::io::Error::other("raft log key is not 8 bytes")))?,
            );
            if !range.contains(&index) {
                break;
            }
            entries.push(serde_json::from_slice(&v).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        Ok(LogState {
            last_purged_log_id: self.0.meta(PURGED)?,
            last_log_id: self.0.raft_last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<Nid>) -> Result<()> {
        self.0.put_meta(VOTE, vote)?;
        self.0.sync().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<Nid>>> {
        self.0.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<Nid>>) -> Result<()> {
        self.0.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<Nid>>> {
        Ok(self.0.meta::<Option<LogId<Nid>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.0.raft_log.apply_batch(batch).map_err(write_err)?;
        let synced = self.0.sync().await;
        callback.log_io_completed(
            synced
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        synced
    }

    async fn truncate(&mut self, log_id: LogId<Nid>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for kv in self.0.raft_log.range(index_key(log_id.index)..) {
            batch.remove(kv.map_err(read_err)?.0);
        }
        self.0.raft_log.apply_batch(batch).map_err(write_err)?;
        self.0.sync().await
    }

    async fn purge(&mut self, log_id: LogId<Nid>) -> Result<()> {
        self.0.put_meta(PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for kv in self.0.raft_log.range(..=index_key(log_id.index)) {
            batch.remove(kv.map_err(read_err)?.0);
        }
        self.0.raft_log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}

/// The replicated state machine: the replica trees.
#[derive(Clone)]
pub struct StateMachine(pub Store);

/// A snapshot's content: every replica tree's pairs, base64 text.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    writes: Vec<Op>,
}

impl StateMachine {
    fn membership(&self) -> Result<StoredMembership<Nid, Member>> {
        Ok(self.0.meta(MEMBERSHIP)?.unwrap_or_default())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        // the applied id is read before the trees: entries applied meanwhile are in the
        // data too, and replaying them on top changes nothing
        let last_log_id: Option<LogId<Nid>> = self.0.meta::<Option<LogId<Nid>>>(APPLIED)?.flatten();
        let last_membership = self.membership()?;
        let mut writes = Vec::new();
        for tree in TreeName::ALL {
            for kv in self.0.replica(tree).iter() {
                let (k, v) = kv.map_err(read_err)?;
                writes.push(Op {
                    tree,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
            }
        }
        let data = serde_json::to_vec(&SnapshotData { writes }).map_err(write_err)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!("{}-{}", last_log_id.map_or(0, |l| l.index), crate::now_ms()),
        };
        self.0.put_meta(SNAPSHOT_META, &meta)?;
        self.0
            .raft_meta
            .insert(SNAPSHOT_DATA, data.clone())
            .map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<Nid>>, StoredMembership<Nid, Member>)> {
        let applied = self.0.meta::<Option<LogId<Nid>>>(APPLIED)?.flatten();
        Ok((applied, self.membership()?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut applied = None;
        let mut membership = None;
        for entry in entries {
            applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Batch { ops }) => {
                    self.0
                        .apply_ops(&ops)
                        .map_err(|e| StorageError::from(StorageIOError::apply(entry.log_id, &e)))?;
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
            }
            results.push(());
        }
        if let Some(m) = membership {
            self.0.put_meta(MEMBERSHIP, &m)?;
        }
        if applied.is_some() {
            self.0.put_meta(APPLIED, &applied)?;
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<Nid, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let content: SnapshotData = serde_json::from_slice(&data).map_err(read_err)?;
        for tree in TreeName::ALL {
            self.0.replica(tree).clear().map_err(write_err)?;
        }
        self.0.apply_ops(&content.writes).map_err(write_err)?;
        self.0.put_meta(APPLIED, &meta.last_log_id)?;
        self.0.put_meta(MEMBERSHIP, &meta.last_membership)?;
        self.0.put_meta(SNAPSHOT_META, meta)?;
        self.0
            .raft_meta
            .insert(SNAPSHOT_DATA, data)
            .map_err(write_err)?;
        self.0.sync().await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let Some(meta) = self.0.meta::<SnapshotMeta<Nid, Member>>(SNAPSHOT_META)? else {
            return Ok(None);
        };
        let Some(data) = self.0.raft_meta.get(SNAPSHOT_DATA).map_err(read_err)? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

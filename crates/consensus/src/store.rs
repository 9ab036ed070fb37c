//! Durable Raft storage in one redb database per node: the log, the vote, the
//! committed index and the latest snapshot. The state machine itself lives in memory
//! and is rebuilt on start from the snapshot plus the committed log (openraft does
//! this when `save_committed` is implemented, as here).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine,
};
use openraft::{EntryPayload, OptionalSend};
use quorate_state::{ClusterState, CommandResult};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Opens (or creates) the node's Raft database.
///
/// # Errors
/// When the file cannot be opened or is not a redb database.
pub fn open_db(path: &Path) -> io::Result<Arc<Database>> {
    // A small cache: the Raft log is written once and read rarely (catch-up); the
    // default cache would let an idle agent grow its RSS for nothing.
    let db = redb::Builder::new()
        .set_cache_size(4 << 20)
        .create(path)
        .map_err(io_err)?;
    let tx = db.begin_write().map_err(io_err)?;
    tx.open_table(LOG).map_err(io_err)?;
    tx.open_table(META).map_err(io_err)?;
    tx.commit().map_err(io_err)?;
    Ok(Arc::new(db))
}

fn meta_get<T: for<'de> Deserialize<'de>>(db: &Database, key: &str) -> io::Result<Option<T>> {
    let rx = db.begin_read().map_err(io_err)?;
    let table = rx.open_table(META).map_err(io_err)?;
    match table.get(key).map_err(io_err)? {
        Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(io_err),
        None => Ok(None),
    }
}

fn meta_put<T: Serialize>(db: &Database, key: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io_err)?;
    let tx = db.begin_write().map_err(io_err)?;
    {
        let mut table = tx.open_table(META).map_err(io_err)?;
        table.insert(key, bytes.as_slice()).map_err(io_err)?;
    }
    tx.commit().map_err(io_err)
}

/// Runs blocking database work off the async executor.
async fn blocking<T: Send + 'static>(
    db: &Arc<Database>,
    f: impl FnOnce(&Database) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(io_err)?
}

/// What [`force_single`] did.
#[derive(Clone, Copy, Debug)]
pub struct ForcedSingle {
    /// The last committed log index kept.
    pub committed: u64,
    /// Uncommitted entries dropped after it.
    pub dropped: u64,
    /// The term of the new entries (above every term this node has seen).
    pub term: u64,
}

/// Offline (the agent stopped): makes this node's log that of a one-voter group.
/// Entries after the last committed one are dropped (nobody confirmed them); then
/// `command` and a membership of `id` alone are appended at a term above every term
/// this node has seen, and the vote is moved to that term. On start the node elects
/// itself and commits both: the state machine continues from the committed state.
///
/// # Errors
/// When the database is in use or unreadable, or holds no Raft state.
pub fn force_single(
    db: &Database,
    id: u64,
    me: crate::PeerNode,
    command: quorate_state::Command,
) -> io::Result<ForcedSingle> {
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;
    let vote: Option<Vote> = meta_get(db, KEY_VOTE)?;
    let committed: Option<LogId> = meta_get::<Option<LogId>>(db, KEY_COMMITTED)?.flatten();
    let purged: Option<LogId> = meta_get(db, KEY_PURGED)?;
    let (Some(vote), Some(committed)) = (vote, committed.or(purged)) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "this data dir has no committed Raft state: there is nothing to recover",
        ));
    };
    let tx = db.begin_write().map_err(io_err)?;
    let (dropped, last_term) = {
        let mut table = tx.open_table(LOG).map_err(io_err)?;
        let mut last_term = committed.committed_leader_id().term;
        let mut dropped = 0;
        for item in table.range(committed.index + 1..).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            let e: Entry = serde_json::from_slice(v.value()).map_err(io_err)?;
            last_term = last_term.max(e.log_id.committed_leader_id().term);
            dropped += 1;
        }
        table
            .retain_in(committed.index + 1.., |_, _| false)
            .map_err(io_err)?;
        (dropped, last_term)
    };
    let term = vote.leader_id().term().max(last_term) + 1;
    let leader = <crate::types::LeaderId as RaftLeaderId>::new(term, id).to_committed();
    let entries = [
        Entry::new_normal(LogId::new(leader, committed.index + 1), command),
        Entry::new_membership(
            LogId::new(leader, committed.index + 2),
            openraft::Membership::new(
                vec![std::collections::BTreeSet::from([id])],
                std::collections::BTreeMap::from([(id, me)]),
            )
            .map_err(io_err)?,
        ),
    ];
    {
        let mut table = tx.open_table(LOG).map_err(io_err)?;
        for e in &entries {
            let bytes = serde_json::to_vec(e).map_err(io_err)?;
            table
                .insert(e.log_id.index, bytes.as_slice())
                .map_err(io_err)?;
        }
        let mut meta = tx.open_table(META).map_err(io_err)?;
        let bytes = serde_json::to_vec(&Vote::new(term, id)).map_err(io_err)?;
        meta.insert(KEY_VOTE, bytes.as_slice()).map_err(io_err)?;
    }
    tx.commit().map_err(io_err)?;
    Ok(ForcedSingle {
        committed: committed.index,
        dropped,
        term,
    })
}

/// The Raft log (and vote) in redb.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// A log store over `db`.
    #[must_use]
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        blocking(&self.db, move |db| {
            let rx = db.begin_read().map_err(io_err)?;
            let table = rx.open_table(LOG).map_err(io_err)?;
            let iter = match end {
                Some(end) => table.range(start..end),
                None => table.range(start..),
            }
            .map_err(io_err)?;
            let mut out = Vec::new();
            for item in iter {
                let (index, v) = item.map_err(io_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(|e| {
                    io_err(format!(
                        "Raft log entry {} cannot be read by this quorate (protocol {}): {e}; was it written by a newer version? upgrade quorate on this node",
                        index.value(),
                        quorate_pki::ProtocolVersion::spoken()
                    ))
                })?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        blocking(&self.db, |db| meta_get(db, KEY_VOTE)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        blocking(&self.db, |db| {
            let purged: Option<LogId> = meta_get(db, KEY_PURGED)?;
            let rx = db.begin_read().map_err(io_err)?;
            let table = rx.open_table(LOG).map_err(io_err)?;
            let last = match table.last().map_err(io_err)? {
                Some((_, v)) => Some(
                    serde_json::from_slice::<Entry>(v.value())
                        .map_err(io_err)?
                        .log_id,
                ),
                None => None,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        blocking(&self.db, move |db| meta_put(db, KEY_VOTE, &vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        blocking(&self.db, move |db| meta_put(db, KEY_COMMITTED, &committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        blocking(&self.db, |db| {
            Ok(meta_get::<Option<LogId>>(db, KEY_COMMITTED)?.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Result<Vec<(u64, Vec<u8>)>, io::Error> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, serde_json::to_vec(&e).map_err(io_err)?)))
            .collect();
        let encoded = encoded?;
        let result = blocking(&self.db, move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
            }
            // redb commits durably (fsync) by default: the entries are on disk now.
            tx.commit().map_err(io_err)
        })
        .await;
        // io::Error is not Clone: openraft gets a copy, the caller the original.
        let reported = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        callback.io_completed(reported);
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        blocking(&self.db, move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                table.retain_in(from.., |_, _| false).map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        blocking(&self.db, move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(io_err)?;
                let mut meta = tx.open_table(META).map_err(io_err)?;
                let bytes = serde_json::to_vec(&Some(log_id)).map_err(io_err)?;
                meta.insert(KEY_PURGED, bytes.as_slice()).map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })
        .await
    }
}

/// What a snapshot holds: the applied position, the membership and the cluster state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SnapshotBody {
    format: u32,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// In-memory applied state, shared with readers.
#[derive(Debug, Default)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// The cluster state.
    pub state: ClusterState,
}

/// The state machine: [`ClusterState`] in memory, snapshots in redb.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    db: Arc<Database>,
    /// Shared with [`crate::Consensus`] for reads.
    pub applied: Arc<RwLock<Applied>>,
}

impl StateMachineStore {
    /// A state machine persisting snapshots in `db`.
    #[must_use]
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            applied: Arc::default(),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let a = self.applied.read().await;
            let body = SnapshotBody {
                format: quorate_state::STATE_VERSION,
                last_applied: a.last_applied,
                membership: a.membership.clone(),
                state: a.state.clone(),
            };
            let data = serde_json::to_vec(&body).map_err(io_err)?;
            let meta = SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        blocking(&self.db, move |db| meta_put(db, KEY_SNAPSHOT, &stored)).await?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let a = self.applied.read().await;
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = {
                let mut a = self.applied.write().await;
                a.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(command) => a.state.apply(command),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        CommandResult::None
                    }
                }
            };
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let body: SnapshotBody = serde_json::from_slice(&snapshot).map_err(io_err)?;
        if body.format > quorate_state::STATE_VERSION {
            return Err(io_err(format!(
                "snapshot format {} is newer than this quorate understands ({}); upgrade quorate",
                body.format,
                quorate_state::STATE_VERSION
            )));
        }
        {
            let mut a = self.applied.write().await;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.state = body.state;
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        blocking(&self.db, move |db| meta_put(db, KEY_SNAPSHOT, &stored)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let stored: Option<StoredSnapshot> =
            blocking(&self.db, |db| meta_get(db, KEY_SNAPSHOT)).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_or_log_entry_from_a_newer_version_is_refused_with_upgrade_advice() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("raft.redb")).unwrap();
        let mut sm = StateMachineStore::new(db.clone());
        let body = serde_json::json!({
            "format": quorate_state::STATE_VERSION + 1,
            "last_applied": null,
            "membership": StoredMembership::default(),
            "state": ClusterState::default(),
        });
        let e = sm
            .install_snapshot(&SnapshotMeta::default(), serde_json::to_vec(&body).unwrap())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("newer than this quorate understands"),
            "{e}"
        );
        assert!(
            sm.get_current_snapshot().await.unwrap().is_none(),
            "nothing was stored"
        );

        // A log entry whose command this version does not know.
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(LOG).unwrap();
            let entry = br#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":{"Normal":{"command":"from_the_future"}}}"#;
            table.insert(1, entry.as_slice()).unwrap();
        }
        tx.commit().unwrap();
        let e = LogStore::new(db)
            .try_get_log_entries(1..2)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("written by a newer version? upgrade quorate"),
            "{e}"
        );
    }
}

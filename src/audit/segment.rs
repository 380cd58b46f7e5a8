//! The embedded vault's event log: append-only segment files in `<data dir>/audit`, one frame
//! (`frame`) per append, written with one `write` and one `fdatasync`: no memtable, no
//! compaction, nothing more to pay for an event once it is durable.
//!
//! A segment is named by the first sequence number it may hold (20 digits, `.seg`), and ends
//! after a frame whose head is also a durable checkpoint once it has grown past its size, so a
//! pruned log always starts right after a checkpoint. The data writes of an append go to the
//! store after its frame is durable, with the head and the last sequence number whose writes
//! were applied (`audit/applied`): a crash in between leaves events whose writes were never
//! applied (and whose calls were never answered), which `unapplied` reports at the next start.
//!
//! At open, the last segment is read through: a frame cut short by a crash (a torn tail, with
//! no valid frame after it) is cut off and the cut logged; damage anywhere else is refused.

use std::{
    collections::{BTreeMap, HashSet},
    fs::{self, File},
    io::Write as _,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{
    AuditError, HEAD_KEY,
    chain::{Checkpoint, checkpoint_key, decode_stored},
    frame::{self, FLAG_DURABLE, FLAG_WRITES, HEADER, Header, ToFrame},
    index::{self, Entry, IndexFile, IndexKey},
    log::{Append, AppendFailed, EventLog, StoredEvents},
};
use crate::storage::{Keyspace, Store};

/// The last sequence number whose frame's data writes were applied (in `meta`).
pub(crate) const APPLIED_KEY: &[u8] = b"audit/applied";

/// A segment is closed at the next durable checkpoint after it reaches this size.
pub const SEGMENT_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone)]
struct Segment {
    /// The first sequence number it may hold (its name).
    first: u64,
    path: PathBuf,
    /// Bytes of whole, durable frames.
    len: u64,
}

struct Active {
    file: File,
    /// The segment is to be closed before the next append.
    close: bool,
    /// A failed write could not be undone: nothing more is appended until a restart.
    broken: bool,
}

struct State {
    segments: Vec<Segment>,
    active: Active,
    last: Option<(u64, Vec<u8>)>,
    head: Option<Checkpoint>,
    /// The index of the segment being written.
    index: index::Memory,
}

/// The index of closed segments (`index`).
#[derive(Default)]
struct Sealed {
    /// Closed segments whose index file is being written: their entries, by segment.
    pending: Mutex<BTreeMap<u64, index::View>>,
    /// Closed segments whose index file passed its digest in this process.
    checked: Mutex<HashSet<u64>>,
}

impl Sealed {
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the index file of `seg`, whose frames hold `entries`.
    fn write(&self, seg: &Segment, entries: Vec<Entry>) {
        match index::write(&seg.path, seg.len, entries) {
            Ok(()) => {
                Self::lock(&self.checked).insert(seg.first);
            }
            Err(e) => tracing::warn!(
                segment = %seg.path.display(),
                error = %e,
                "cannot write the audit index of a closed segment: queries scan it until the next start"
            ),
        }
        Self::lock(&self.pending).remove(&seg.first);
    }

    /// The offsets of the frames of closed segment `seg` that name a key hashing to `hash`, if
    /// it is indexed.
    fn lookup(&self, seg: &Segment, hash: u64) -> Option<Vec<u32>> {
        if let Some(view) = Self::lock(&self.pending).get(&seg.first) {
            return Some(view.lookup(hash));
        }
        if seg.len > u64::from(u32::MAX) {
            return None;
        }
        let checked = Self::lock(&self.checked).contains(&seg.first);
        let file = IndexFile::open(&seg.path, seg.len, !checked)?;
        if !checked {
            Self::lock(&self.checked).insert(seg.first);
        }
        file.lookup(hash).ok()
    }

    /// Checks the index file of each closed segment of `segments`, and writes the missing or
    /// damaged ones from their segments (at open, in the background: queries scan a segment
    /// until its index is there).
    fn build(&self, segments: &[Segment]) {
        for seg in segments {
            if IndexFile::open(&seg.path, seg.len, true).is_some() {
                Self::lock(&self.checked).insert(seg.first);
                continue;
            }
            match segment_entries(seg) {
                Ok(Some(entries)) => self.write(seg, entries),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    segment = %seg.path.display(),
                    error = %e.message,
                    "cannot index an audit segment: queries scan it"
                ),
            }
        }
    }
}

/// The keys (`index::keys_of`) of the events of a frame read from a segment.
fn frame_keys(read: &Read) -> Option<Vec<u64>> {
    let frame = frame::decode(&read.header, &read.payload)?;
    let events: Vec<_> = frame
        .events
        .iter()
        .map(|(_, stored)| decode_stored(stored).map(|(e, _)| e))
        .collect::<Option<_>>()?;
    Some(index::keys_of(&events))
}

/// The index entries of `seg`, read through (`None` if it is too long to index).
fn segment_entries(seg: &Segment) -> Result<Option<Vec<Entry>>, AuditError> {
    let mut memory = index::Memory::default();
    let mut problem = None;
    frames(seg, 0, |read| match frame_keys(&read) {
        Some(keys) => {
            memory.add(read.offset, &keys);
            true
        }
        None => {
            problem = Some(damaged(seg, &read));
            false
        }
    })?;
    if let Some(problem) = problem {
        return Err(problem);
    }
    Ok(memory.view().map(|v| v.entries()))
}

/// Events in segment files.
pub struct SegmentLog {
    dir: PathBuf,
    store: Arc<dyn Store>,
    segment_bytes: u64,
    state: Mutex<State>,
    unapplied: Option<(u64, u64)>,
    sealed: Arc<Sealed>,
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> AuditError {
    AuditError::new(format!("audit segment {}: {what}: {e}", path.display()))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The segments in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, &e))? {
        let entry = entry.map_err(|e| io_error("cannot list", dir, &e))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let len = entry
            .metadata()
            .map_err(|e| io_error("cannot read", &path, &e))?
            .len();
        segments.push(Segment { first, path, len });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// A frame read from a segment file.
struct Read {
    header: Header,
    offset: u64,
    payload: Vec<u8>,
}

/// Reads the frame at `offset` of `file` (of `len` bytes): `Ok(None)` at the end, `Err(offset)`
/// if what is there is not a whole, intact frame.
fn read_frame(file: &File, offset: u64, len: u64) -> Result<Option<Read>, u64> {
    if offset >= len {
        return Ok(None);
    }
    let mut header_bytes = [0u8; HEADER];
    if len - offset < HEADER as u64 || file.read_exact_at(&mut header_bytes, offset).is_err() {
        return Err(offset);
    }
    let header = Header::parse(&header_bytes).ok_or(offset)?;
    let start = offset + HEADER as u64;
    if len - start < u64::from(header.len) {
        return Err(offset);
    }
    let mut payload = vec![0u8; header.len as usize];
    file.read_exact_at(&mut payload, start)
        .map_err(|_| offset)?;
    if !header.checks(&header_bytes, &payload) {
        return Err(offset);
    }
    Ok(Some(Read {
        header,
        offset,
        payload,
    }))
}

/// Where the first intact frame after `offset` in `file` starts, if any: then the bytes at
/// `offset` are damage, not a tail torn by a crash.
fn next_intact_frame(file: &File, offset: u64, len: u64) -> Option<u64> {
    let size = usize::try_from(len - offset).ok()?;
    let mut rest = vec![0u8; size];
    file.read_exact_at(&mut rest, offset).ok()?;
    let magic = frame::MAGIC.to_le_bytes();
    (1..rest.len().saturating_sub(HEADER - 1))
        .filter(|&at| rest.get(at..at + 4) == Some(&magic[..]))
        .map(|at| offset + at as u64)
        .find(|&at| read_frame(file, at, len).is_ok_and(|f| f.is_some()))
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, writing data writes to `store`, and closes segments
    /// past `segment_bytes`. Cuts off a torn tail.
    ///
    /// # Errors
    /// `AuditError` if the directory cannot be read or a segment is damaged other than at its
    /// tail.
    pub fn open(dir: &Path, store: Arc<dyn Store>, segment_bytes: u64) -> Result<Self, AuditError> {
        crate::files::private_dir(dir, "audit log directory").map_err(AuditError::new)?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty() && store.last(Keyspace::Audit)?.is_some() {
            migrate_from_store(dir, store.as_ref())?;
            segments = list_segments(dir)?;
        }
        clear_store_log(store.as_ref())?;
        remove_stray_indexes(dir, &segments)?;
        let applied = store
            .get(Keyspace::Meta, APPLIED_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);

        // Read the last segment through, cutting off a torn tail. A bad frame is a torn tail
        // only if nothing intact follows it and the store's copy of the head (written only
        // after a frame is durable) does not cover it; anything else is damage, kept for
        // verification to name, and appends go on in a new segment.
        let stored_head = Checkpoint::load(store.as_ref(), HEAD_KEY)?.map_or(0, |h| h.seq);
        let mut last_frame = None;
        let mut damaged = false;
        let mut active_index = index::Memory::default();
        if let Some(seg) = segments.last_mut() {
            let file = File::options()
                .read(true)
                .write(true)
                .open(&seg.path)
                .map_err(|e| io_error("cannot open", &seg.path, &e))?;
            let mut offset = 0;
            loop {
                match read_frame(&file, offset, seg.len) {
                    Ok(Some(read)) => {
                        offset = read.offset + HEADER as u64 + u64::from(read.header.len);
                        // A frame that passes its checksum but does not decode is damage:
                        // queries read this segment through and name it.
                        match frame_keys(&read) {
                            Some(keys) => active_index.add(read.offset, &keys),
                            None => active_index.give_up(),
                        }
                        last_frame = Some(read);
                    }
                    Ok(None) => break,
                    Err(at) => {
                        let next = next_intact_frame(&file, at, seg.len);
                        let first_bad = last_frame
                            .as_ref()
                            .map_or(seg.first, |r: &Read| r.header.end_seq());
                        if next.is_some() || stored_head >= first_bad {
                            tracing::error!(
                                segment = %seg.path.display(),
                                at,
                                "the audit log is damaged (not a write cut short by a crash): kept for `strongroom audit verify` to name; appends go on in a new segment"
                            );
                            damaged = true;
                            active_index.give_up();
                            match next {
                                Some(next) => offset = next,
                                None => break,
                            }
                            continue;
                        }
                        tracing::warn!(
                            segment = %seg.path.display(),
                            at,
                            cut = seg.len - at,
                            "the audit log's last write was cut short by a crash; its torn tail is removed (that batch was never acknowledged)"
                        );
                        file.set_len(at)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| io_error("cannot cut the torn tail of", &seg.path, &e))?;
                        seg.len = at;
                        break;
                    }
                }
            }
        }
        let mut last = None;
        let mut head = None;
        let mut unapplied = None;
        match &last_frame {
            Some(read) => {
                let decoded = frame::decode(&read.header, &read.payload).ok_or_else(|| {
                    AuditError::new(
                        "the last audit frame does not decode; refusing to start".into(),
                    )
                })?;
                head = Some(decoded.head);
                last = decoded.events.last().cloned();
                if read.header.flags & FLAG_WRITES != 0
                    && read.header.count > 0
                    && read.header.end_seq() - 1 > applied
                {
                    unapplied = Some((read.header.first_seq, read.header.end_seq() - 1));
                }
            }
            // An empty last segment (just started): the events end in the one before it.
            None => {
                if let Some(prev) = segments.len().checked_sub(2)
                    && let Some(frame) = last_of(&segments[prev])?
                {
                    last = frame.events.last().cloned();
                    head = Some(frame.head);
                }
            }
        }
        if segments.is_empty() {
            // A new log continues after the signed head the store knows (0 for a new vault).
            let after = Checkpoint::load(store.as_ref(), HEAD_KEY)?.map_or(0, |h| h.seq);
            let path = segment_path(dir, after + 1);
            create_segment(dir, &path)?;
            segments.push(Segment {
                first: after + 1,
                path,
                len: 0,
            });
        }
        let file = match segments.last() {
            Some(seg) => open_for_append(&seg.path)?,
            None => return Err(AuditError::new("the audit log has no segment".into())),
        };
        let sealed = Arc::new(Sealed::default());
        let closed = segments[..segments.len() - 1].to_vec();
        if !closed.is_empty() {
            let sealed = Arc::clone(&sealed);
            std::thread::Builder::new()
                .name("strongroom-audit-index".into())
                .spawn(move || sealed.build(&closed))
                .map_err(|e| AuditError::new(format!("cannot start the audit indexer: {e}")))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            store,
            segment_bytes,
            state: Mutex::new(State {
                segments,
                active: Active {
                    file,
                    close: damaged,
                    broken: false,
                },
                last,
                head,
                index: active_index,
            }),
            unapplied,
            sealed,
        })
    }

    /// Events `(first, last)` written to the log before a crash whose data writes were never
    /// applied (their calls were never answered).
    pub fn unapplied(&self) -> Option<(u64, u64)> {
        self.unapplied
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `bytes`, a frame whose first event is `first`; returns where it starts.
    fn write_frame(
        &self,
        state: &mut State,
        bytes: &[u8],
        first: u64,
        durable: bool,
    ) -> Result<u64, AuditError> {
        if state.active.broken {
            return Err(AuditError::new(
                "the audit log could not undo a failed write; restart the vault".into(),
            ));
        }
        if state.active.close {
            self.close_segment(state, first)?;
        }
        let Some(seg) = state.segments.last_mut() else {
            return Err(AuditError::new("the audit log has no segment".into()));
        };
        let written = state
            .active
            .file
            .write_all(bytes)
            .and_then(|()| state.active.file.sync_data());
        if let Err(e) = written {
            // Undo the partial frame so the next append does not follow garbage.
            if state
                .active
                .file
                .set_len(seg.len)
                .and_then(|()| state.active.file.sync_data())
                .is_err()
            {
                state.active.broken = true;
            }
            return Err(io_error("cannot append to", &seg.path, &e));
        }
        let offset = seg.len;
        seg.len += bytes.len() as u64;
        if durable && seg.len >= self.segment_bytes {
            state.active.close = true;
        }
        Ok(offset)
    }

    /// Starts a new segment, named after `first`, the first event of the frame about to be
    /// written (after damage, the log's last intact event may be well before it).
    /// The closed segment's index file is written in the background (its entries answer
    /// lookups until it is there).
    fn close_segment(&self, state: &mut State, first: u64) -> Result<(), AuditError> {
        let path = segment_path(&self.dir, first);
        create_segment(&self.dir, &path)?;
        state.active.file = open_for_append(&path)?;
        let index = std::mem::take(&mut state.index);
        if let (Some(closed), Some(view)) = (state.segments.last().cloned(), index.view()) {
            Sealed::lock(&self.sealed.pending).insert(closed.first, view.clone());
            let sealed = Arc::clone(&self.sealed);
            let spawned = std::thread::Builder::new()
                .name("strongroom-audit-index".into())
                .spawn(move || sealed.write(&closed, view.entries()));
            if let Err(e) = spawned {
                // The entries stay in memory and answer lookups; the next start writes the file.
                tracing::warn!(error = %e, "cannot start writing an audit index file");
            }
        }
        state.segments.push(Segment {
            first,
            path,
            len: 0,
        });
        state.active.close = false;
        Ok(())
    }

    fn snapshot(&self) -> Vec<Segment> {
        self.state().segments.clone()
    }
}

/// The last frame of `seg`, by reading it through.
fn last_of(seg: &Segment) -> Result<Option<frame::Frame>, AuditError> {
    let mut found = None;
    frames(seg, 0, |read| {
        found = Some(read);
        true
    })?;
    let Some(read) = found else {
        return Ok(None);
    };
    frame::decode(&read.header, &read.payload)
        .map(Some)
        .ok_or_else(|| damaged(seg, &read))
}

/// Calls `visit` with each intact frame of `seg` whose events end after `from`, in order,
/// until it returns false.
fn frames(seg: &Segment, from: u64, mut visit: impl FnMut(Read) -> bool) -> Result<(), AuditError> {
    let file = File::open(&seg.path).map_err(|e| io_error("cannot open", &seg.path, &e))?;
    let mut offset = 0;
    let mut header_bytes = [0u8; HEADER];
    while offset < seg.len {
        file.read_exact_at(&mut header_bytes, offset)
            .map_err(|e| io_error("cannot read", &seg.path, &e))?;
        let header = Header::parse(&header_bytes).ok_or_else(|| {
            AuditError::new(format!(
                "audit segment {} is damaged at byte {offset}: run `strongroom audit verify`",
                seg.path.display()
            ))
        })?;
        let next = offset + HEADER as u64 + u64::from(header.len);
        if header.end_seq() > from || header.count == 0 {
            let read = read_frame(&file, offset, seg.len).map_err(|at| {
                AuditError::new(format!(
                    "audit segment {}: the frame of events {} to {} at byte {at} is \
                     damaged (altered or cut): run `strongroom audit verify`",
                    seg.path.display(),
                    header.first_seq,
                    header.end_seq().saturating_sub(1)
                ))
            })?;
            if let Some(read) = read
                && !visit(read)
            {
                return Ok(());
            }
        }
        offset = next;
    }
    Ok(())
}

fn damaged(seg: &Segment, read: &Read) -> AuditError {
    AuditError::new(format!(
        "audit segment {}: the frame of events {} to {} at byte {} does not decode: run \
         `strongroom audit verify`",
        seg.path.display(),
        read.header.first_seq,
        read.header.end_seq().saturating_sub(1),
        read.offset
    ))
}

/// Writes `events` (stored forms, in order) and `head` as one new segment in `dir`, named after
/// the first event, through a temporary file renamed into place: the segment is there whole or
/// not at all. Runs of consecutive events share a frame; an event is framed compactly when its
/// stored form is its own encoding at its place, else as it is. The last frame is a durable
/// checkpoint. Used to move a log kept in the store into segments, and by tests that alter
/// segments as someone with disk access could.
///
/// # Errors
/// `AuditError` if the file cannot be written.
fn write_segment(
    dir: &Path,
    events: &[(u64, Vec<u8>)],
    head: &Checkpoint,
) -> Result<PathBuf, AuditError> {
    let first = events.first().map_or(head.seq + 1, |(seq, _)| *seq);
    let path = segment_path(dir, first);
    let temporary = dir.join(format!("{first:020}.seg.new"));
    // Runs of consecutive events, at most 1,024 to a frame; no events: one frame, the head.
    let runs: Vec<&[(u64, Vec<u8>)]> = events
        .chunk_by(|a, b| b.0 == a.0 + 1)
        .flat_map(|run| run.chunks(1024))
        .collect();
    let mut bytes = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let parsed: Vec<_> = run
            .iter()
            .map(|(seq, stored)| frame::parse_stored(stored).filter(|(e, _)| e.seq == *seq))
            .collect();
        let to_frame: Vec<ToFrame<'_>> = run
            .iter()
            .zip(&parsed)
            .map(|((_, stored), parsed)| ToFrame {
                stored,
                event: parsed.as_ref().map(|(e, mac)| (e, *mac)),
            })
            .collect();
        let flags = if i + 1 == runs.len() { FLAG_DURABLE } else { 0 };
        // `chunk_by` and `chunks` never yield an empty run.
        bytes.extend_from_slice(&frame::encode(run[0].0, &to_frame, head, flags));
    }
    if runs.is_empty() {
        bytes = frame::encode(first, &[], head, FLAG_DURABLE);
    }
    crate::files::write_whole(&temporary, &path, &bytes)
        .map_err(|e| io_error("cannot write", &path, &e))?;
    crate::files::sync_dir(dir).map_err(AuditError::new)?;
    Ok(path)
}

/// Replaces every segment in `dir` with one holding `events` and `head` (`write_segment`):
/// what someone who can write the data dir can do to the log. For tests of tamper evidence.
///
/// # Errors
/// `AuditError` if the files cannot be removed or written.
pub fn rewrite_segments(
    dir: &Path,
    events: &[(u64, Vec<u8>)],
    head: &Checkpoint,
) -> Result<(), AuditError> {
    for entry in fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, &e))? {
        let path = entry.map_err(|e| io_error("cannot list", dir, &e))?.path();
        if path.extension().is_some_and(|x| x == "seg" || x == "idx") {
            fs::remove_file(&path).map_err(|e| io_error("cannot remove", &path, &e))?;
        }
    }
    write_segment(dir, events, head).map(|_| ())
}

/// Moves a log kept in `store`'s `audit` keyspace (a vault from before segments) into `dir`,
/// which holds no segment: one segment with every event and the stored head, then the keyspace
/// is emptied. A crash before the segment is renamed into place leaves the store's log as it
/// was; after, the next open finds the segment and only empties the keyspace.
fn migrate_from_store(dir: &Path, store: &dyn Store) -> Result<(), AuditError> {
    let Some(head) = Checkpoint::load(store, HEAD_KEY)? else {
        return Ok(());
    };
    let mut events = Vec::new();
    let mut from = 0u64;
    loop {
        let chunk = store.scan_range(Keyspace::Audit, &from.to_be_bytes(), None, 65_536)?;
        let Some((last, _)) = chunk.last() else {
            break;
        };
        from = <[u8; 8]>::try_from(last.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| AuditError::new("a malformed key in the audit keyspace".into()))?
            .saturating_add(1);
        for (key, value) in chunk {
            let seq = <[u8; 8]>::try_from(key.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| AuditError::new("a malformed key in the audit keyspace".into()))?;
            events.push((seq, value));
        }
    }
    let n = events.len();
    let path = write_segment(dir, &events, &head)?;
    tracing::info!(events = n, segment = %path.display(), "the audit log moved from the store into segment files");
    Ok(())
}

/// Empties the store's `audit` keyspace once its events are in segments.
fn clear_store_log(store: &dyn Store) -> Result<(), AuditError> {
    if store.last(Keyspace::Audit)?.is_some() {
        let mut batch = crate::storage::Batch::new();
        batch.delete_range(Keyspace::Audit, vec![0u8; 8], vec![0xffu8; 9]);
        store.write(batch)?;
    }
    Ok(())
}

/// Removes index files of segments that are gone (pruned while their file was being written)
/// and temporary files a crash left.
fn remove_stray_indexes(dir: &Path, segments: &[Segment]) -> Result<(), AuditError> {
    for entry in fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, &e))? {
        let path = entry.map_err(|e| io_error("cannot list", dir, &e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let stray = name.ends_with(".idx.new")
            || (name.ends_with(".idx")
                && !segments.iter().any(|s| index::path_of(&s.path) == path));
        if stray {
            fs::remove_file(&path).map_err(|e| io_error("cannot remove", &path, &e))?;
        }
    }
    Ok(())
}

/// Removes the index file of `seg`, if any.
fn remove_index(seg: &Segment) -> Result<(), AuditError> {
    let path = index::path_of(&seg.path);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("cannot remove", &path, &e))
        }
        _ => Ok(()),
    }
}

fn open_for_append(path: &Path) -> Result<File, AuditError> {
    File::options()
        .append(true)
        .open(path)
        .map_err(|e| io_error("cannot open", path, &e))
}

fn create_segment(dir: &Path, path: &Path) -> Result<(), AuditError> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("cannot create", path, &e))?;
    crate::files::sync_dir(dir).map_err(AuditError::new)
}

impl EventLog for SegmentLog {
    fn append(&self, append: Append<'_>) -> Result<(), AppendFailed> {
        let Append {
            events,
            head,
            mut writes,
            durable,
            // Segment files are one vault's own: nobody else moves their head.
            previous: _,
        } = append;
        let first = events.first().map_or(head.seq + 1, |c| c.event.seq);
        let to_frame: Vec<ToFrame<'_>> = events
            .iter()
            .map(|c| ToFrame {
                stored: &c.stored,
                event: Some((&c.event, c.mac)),
            })
            .collect();
        // Only the calls' data writes make a frame one whose writes may be lost in a crash.
        let has_data = !writes.is_empty();
        let flags = if has_data { FLAG_WRITES } else { 0 } | if durable { FLAG_DURABLE } else { 0 };
        let bytes = frame::encode(first, &to_frame, head, flags);
        let keys = index::keys_of(events.iter().map(|c| &c.event));
        {
            let mut state = self.state();
            let offset = self.write_frame(&mut state, &bytes, first, durable)?;
            state.index.add(offset, &keys);
            if let Some(c) = events.last() {
                state.last = Some((c.event.seq, c.stored.clone()));
            }
            state.head = Some(head.clone());
        }
        if has_data {
            writes.put(
                Keyspace::Meta,
                APPLIED_KEY.to_vec(),
                head.seq.to_be_bytes().to_vec(),
            );
        }
        if durable {
            writes.put(Keyspace::Meta, checkpoint_key(head.seq), head.encode());
        }
        if !writes.is_empty() {
            writes.put(Keyspace::Meta, HEAD_KEY.to_vec(), head.encode());
            self.store.write(writes).map_err(|e| AppendFailed {
                error: AuditError::from(e),
                events_durable: true,
                writes_lost: has_data,
            })?;
        }
        Ok(())
    }

    fn first_seq(&self) -> Result<Option<u64>, AuditError> {
        for seg in self.snapshot() {
            let mut first = None;
            let walked = frames(&seg, 0, |read| {
                if read.header.count > 0 {
                    first = Some(read.header.first_seq);
                    return false;
                }
                true
            });
            if walked.is_err() && first.is_none() {
                // Damage before the first event: the segment's name is where its events start
                // at the earliest; reading them names the damage.
                return Ok(Some(seg.first));
            }
            if first.is_some() {
                return Ok(first);
            }
        }
        Ok(None)
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        Ok(self.state().last.clone())
    }

    fn scan(&self, from: u64, to: Option<u64>, limit: usize) -> Result<StoredEvents, AuditError> {
        let segments = self.snapshot();
        let start = segments
            .partition_point(|s| s.first <= from)
            .saturating_sub(1);
        let end = to.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for seg in segments.iter().skip(start) {
            if seg.first > end || out.len() >= limit {
                break;
            }
            let mut problem = None;
            frames(seg, from, |read| {
                let Some(frame) = frame::decode(&read.header, &read.payload) else {
                    problem = Some(damaged(seg, &read));
                    return false;
                };
                for (seq, stored) in frame.events {
                    if seq > end || out.len() >= limit {
                        return false;
                    }
                    if seq >= from {
                        out.push((seq, stored));
                    }
                }
                true
            })?;
            if let Some(problem) = problem {
                return Err(problem);
            }
        }
        Ok(out)
    }

    fn head(&self) -> Result<Option<Checkpoint>, AuditError> {
        let ours = self.state().head.clone();
        // The store's copy moves with data writes only; it is ahead of the log's own only if
        // the log's tail was cut off, which it must then show.
        let stored = Checkpoint::load(self.store.as_ref(), HEAD_KEY)?;
        Ok(match (ours, stored) {
            (Some(o), Some(s)) if s.seq > o.seq => Some(s),
            (None, s) => s,
            (o, _) => o,
        })
    }

    fn prune(&self, through: u64) -> Result<Option<u64>, AuditError> {
        // Whole segments only, never the one being written: each ends at a durable checkpoint.
        let segments = self.snapshot();
        let mut removed = 0;
        for pair in segments.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            if next.first.saturating_sub(1) > through {
                break;
            }
            fs::remove_file(&seg.path).map_err(|e| io_error("cannot remove", &seg.path, &e))?;
            remove_index(seg)?;
            removed += 1;
        }
        if removed > 0 {
            crate::files::sync_dir(&self.dir).map_err(AuditError::new)?;
            self.state().segments.drain(..removed);
        }
        self.first_seq()
    }

    fn scan_key(
        &self,
        key: IndexKey<'_>,
        from: u64,
        limit: usize,
    ) -> Result<Option<StoredEvents>, AuditError> {
        let hash = key.hash();
        let (segments, active) = {
            let state = self.state();
            (state.segments.clone(), state.index.view())
        };
        let start = segments
            .partition_point(|s| s.first <= from)
            .saturating_sub(1);
        let mut out = Vec::new();
        for (i, seg) in segments.iter().enumerate().skip(start) {
            if out.len() >= limit {
                break;
            }
            let offsets = if i + 1 == segments.len() {
                active.as_ref().map(|view| view.lookup(hash))
            } else {
                self.sealed.lookup(seg, hash)
            };
            let mut problem = None;
            let mut take = |read: Read| {
                let Some(frame) = frame::decode(&read.header, &read.payload) else {
                    problem = Some(damaged(seg, &read));
                    return false;
                };
                out.extend(frame.events.into_iter().filter(|(seq, _)| *seq >= from));
                out.len() < limit
            };
            match offsets {
                Some(offsets) => {
                    let file = File::open(&seg.path)
                        .map_err(|e| io_error("cannot open", &seg.path, &e))?;
                    for offset in offsets {
                        // A frame past the segment's length as read above was appended since.
                        match read_frame(&file, u64::from(offset), seg.len) {
                            Ok(Some(read)) if read.header.end_seq() <= from => {}
                            Ok(Some(read)) => {
                                if !take(read) {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(at) => {
                                return Err(AuditError::new(format!(
                                    "audit segment {}: the frame at byte {at} is damaged \
                                     (altered or cut): run `strongroom audit verify`",
                                    seg.path.display()
                                )));
                            }
                        }
                    }
                }
                // Not indexed (yet): the segment is read through.
                None => frames(seg, from, &mut take)?,
            }
            if let Some(problem) = problem {
                return Err(problem);
            }
        }
        Ok(Some(out))
    }

    fn check_index(&self, from: u64) -> Result<Option<(u64, String)>, AuditError> {
        let segments = self.snapshot();
        let start = segments
            .partition_point(|s| s.first <= from)
            .saturating_sub(1);
        // The segment being written is indexed in memory only.
        let closed = segments.split_last().map_or(&[][..], |(_, closed)| closed);
        for seg in closed.iter().skip(start) {
            let path = index::path_of(&seg.path);
            // No file: queries read the segment through. A segment that does not read through
            // is damage the chain's verification names.
            if !path.exists() {
                continue;
            }
            let matches = match segment_entries(seg) {
                Ok(Some(entries)) => {
                    index::plausible_size(&seg.path, seg.len)
                        && fs::read(&path)
                            .is_ok_and(|stored| index::encode(seg.len, entries) == stored)
                }
                // A segment too long to index has no index: a file beside it is not its own.
                Ok(None) => false,
                Err(_) => continue,
            };
            if !matches {
                return Ok(Some((
                    seg.first,
                    format!(
                        "the audit index {} does not match its segment (altered or damaged): \
                         queries by record or subject could miss events; remove the file and \
                         restart the vault to rebuild it",
                        path.display()
                    ),
                )));
            }
        }
        Ok(None)
    }

    fn files(&self) -> Vec<PathBuf> {
        self.snapshot().into_iter().map(|s| s.path).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{Audit, AuditOptions, Event},
        storage::{Batch, MemoryStore},
    };

    fn event(n: u64) -> Event {
        Event {
            method: "Records/GetRecord".into(),
            result: "OK".into(),
            subject: "app:desk".into(),
            record_id: format!("{n:032x}"),
            ..Event::default()
        }
    }

    async fn commit(audit: &Audit, from: u64, to: u64, write: bool) {
        for n in from..to {
            let mut batch = Batch::new();
            if write {
                batch.put(Keyspace::Records, n.to_be_bytes().to_vec(), b"v".to_vec());
            }
            audit
                .commit(batch, vec![event(n)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn open(dir: &Path, store: &Arc<MemoryStore>, options: AuditOptions) -> Audit {
        Audit::open_segments(
            dir,
            Arc::clone(store) as Arc<dyn Store>,
            Arc::new(
                crate::crypto::Keyring::open_file(dir.join("keyring"))
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            options,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segs = list_segments(dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(segs.len(), 1);
        segs.remove(0).path
    }

    /// A frame cut short by a crash (never acknowledged) is cut off at the next open, and the
    /// log goes on from the last whole frame; the same bytes under a head the store says was
    /// durable are damage, kept for verification.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_tail_is_cut_and_damage_the_head_covers_is_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(MemoryStore::new());
        let audit = open(dir.path(), &store, AuditOptions::default());
        commit(&audit, 0, 10, false).await;
        drop(audit);
        let path = only_segment(dir.path());
        let whole = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        // Half of one more frame, as a crash in the middle of its write leaves it.
        let mut torn = whole.clone();
        let frame = whole.len() / 10;
        torn.extend_from_slice(&whole[whole.len() - frame..whole.len() - frame / 2]);
        fs::write(&path, &torn).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, AuditOptions::default());
        assert!(
            fs::read(&path).unwrap_or_else(|e| panic!("{e}")) == whole,
            "cut back to whole frames"
        );
        assert_eq!(audit.last_seq().unwrap_or_else(|e| panic!("{e}")), 10);
        commit(&audit, 10, 12, true).await;
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok() && report.checked == 12, "{report:?}");
        drop(audit);

        // The last frame's payload altered: the store's head (moved by the writes) covers it,
        // so it is not a torn tail: kept, and verification names it.
        let mut damaged = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let len = damaged.len();
        damaged[len - 40] ^= 1;
        fs::write(&path, &damaged).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, AuditOptions::default());
        assert_eq!(fs::read(&path).unwrap_or_else(|e| panic!("{e}")).len(), len);
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        let (_, problem) = report.problem.unwrap_or_else(|| panic!("not named"));
        assert!(
            problem.contains("damaged") || problem.contains("truncated"),
            "{problem}"
        );
    }

    /// Segments close at a durable checkpoint past their size; pruning removes whole old
    /// segments, and what is kept still verifies from its anchor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_rotate_at_checkpoints_and_prune_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(MemoryStore::new());
        let options = AuditOptions {
            retention_days: Some(1),
            checkpoint_every: 10,
            segment_bytes: 1024,
            ..AuditOptions::default()
        };
        let audit = open(dir.path(), &store, options);
        commit(&audit, 0, 95, false).await;
        let segments = list_segments(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(segments.len() >= 5, "{segments:?}");
        for pair in segments.windows(2) {
            // Each segment after the first starts right after a durable checkpoint.
            let at = pair[1].first - 1;
            assert!(at % 10 == 0, "{:?}", pair[1]);
        }
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok() && report.checked == 95, "{report:?}");
        let pruned = audit
            .prune(crate::domain::Clock::system().now_ms() + 2 * 86_400_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(pruned > 0);
        let after = list_segments(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(after.len() < segments.len());
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.from, after[0].first);
        drop(audit);
        // And after a restart.
        let audit = open(dir.path(), &store, options);
        commit(&audit, 95, 97, false).await;
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok(), "{report:?}");
    }

    /// A vault from before segments: its log in the store moves into a segment at the next
    /// start, keeps every event and hash, and goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_in_the_store_moves_into_segments_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(MemoryStore::new());
        let keys = Arc::new(
            crate::crypto::Keyring::open_file(dir.path().join("keyring"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let old = Audit::open(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::clone(&keys) as Arc<dyn crate::crypto::KeyProvider>,
            AuditOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        commit(&old, 0, 30, true).await;
        let before = old
            .query(&crate::audit::Filter::default(), 0, 100)
            .unwrap_or_else(|e| panic!("{e}"))
            .0;
        drop(old);
        let audit = open(dir.path(), &store, AuditOptions::default());
        assert!(
            store
                .last(Keyspace::Audit)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        let after = audit
            .query(&crate::audit::Filter::default(), 0, 100)
            .unwrap_or_else(|e| panic!("{e}"))
            .0;
        assert_eq!(before, after);
        commit(&audit, 30, 32, false).await;
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok() && report.checked == 32, "{report:?}");
    }

    /// Damage to the only frame of the only segment, under a head the store recorded: the
    /// next append starts a new segment named after its own first event, not after the last
    /// intact one (which would be the damaged segment's own name, and fail every append).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_damage_appends_go_on_in_a_segment_named_after_their_first_event() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(MemoryStore::new());
        let audit = open(dir.path(), &store, AuditOptions::default());
        commit(&audit, 0, 1, true).await;
        drop(audit);
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, AuditOptions::default());
        commit(&audit, 1, 3, false).await;
        let segments = list_segments(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(segments.iter().map(|s| s.first).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(audit.last_seq().unwrap_or_else(|e| panic!("{e}")), 3);
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        let (_, problem) = report.problem.unwrap_or_else(|| panic!("not named"));
        assert!(problem.contains("damaged"), "{problem}");
    }

    /// Events about record `k % 5` by subject `k % 3`, three to a commit (a frame).
    async fn commit_about(audit: &Audit, from: u64, to: u64) {
        for k in from..to {
            let events = (0..3)
                .map(|_| Event {
                    record_id: format!("{:032x}", k % 5),
                    subject: format!("app:s{}", k % 3),
                    ..event(k)
                })
                .collect();
            audit
                .commit(Batch::new(), events)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn by_record(audit: &Audit, k: u64) -> Result<Vec<u64>, AuditError> {
        let filter = crate::audit::Filter {
            record_id: Some(format!("{k:032x}")),
            ..crate::audit::Filter::default()
        };
        let (events, _) = audit.query(&filter, 0, 10_000)?;
        Ok(events.iter().map(|e| e.seq).collect())
    }

    /// Waits (no time limit: the test runner has one) until every closed segment has its index
    /// file, written in the background.
    fn indexed(dir: &Path) -> Vec<Segment> {
        loop {
            let segments = list_segments(dir).unwrap_or_else(|e| panic!("{e}"));
            let closed = &segments[..segments.len() - 1];
            if closed
                .iter()
                .all(|s| IndexFile::open(&s.path, s.len, true).is_some())
            {
                return segments;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Queries by record or subject find through the index what a scan finds: across closed
    /// segments, the one being written, and after a restart. They read only the frames the
    /// index names (a damaged frame about another record does not stop them). An index file
    /// that lost entries is named by verification; a removed one is rebuilt at the next start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_by_record_and_subject_read_the_index() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(MemoryStore::new());
        let options = AuditOptions {
            checkpoint_every: 10,
            segment_bytes: 2048,
            ..AuditOptions::default()
        };
        let audit = open(dir.path(), &store, options);
        commit_about(&audit, 0, 120).await;
        let (all, _) = audit
            .query(&crate::audit::Filter::default(), 0, 10_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 360);
        let expected = |k: u64| -> Vec<u64> {
            let id = format!("{k:032x}");
            all.iter()
                .filter(|e| e.record_id == id)
                .map(|e| e.seq)
                .collect()
        };
        let check = |audit: &Audit| {
            for k in 0..5 {
                assert_eq!(
                    by_record(audit, k).unwrap_or_else(|e| panic!("{e}")),
                    expected(k)
                );
            }
            for k in 0..3 {
                let filter = crate::audit::Filter {
                    subject: Some(format!("app:s{k}")),
                    ..crate::audit::Filter::default()
                };
                let (events, _) = audit
                    .query(&filter, 0, 10_000)
                    .unwrap_or_else(|e| panic!("{e}"));
                let want: Vec<u64> = all
                    .iter()
                    .filter(|e| e.subject == format!("app:s{k}"))
                    .map(|e| e.seq)
                    .collect();
                assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
            }
            // Paged: one event at a time, from where the last page ended.
            let filter = crate::audit::Filter {
                record_id: Some(format!("{:032x}", 2)),
                ..crate::audit::Filter::default()
            };
            let (mut seqs, mut after) = (Vec::new(), 0);
            while let (page, Some(next)) = audit
                .query(&filter, after, 1)
                .unwrap_or_else(|e| panic!("{e}"))
            {
                seqs.extend(page.iter().map(|e| e.seq));
                after = next;
            }
            assert_eq!(seqs, expected(2));
        };
        // Before and after the closed segments' index files are written.
        check(&audit);
        let segments = indexed(dir.path());
        assert!(segments.len() >= 5, "{segments:?}");
        check(&audit);
        drop(audit);
        let audit = open(dir.path(), &store, options);
        check(&audit);
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok(), "{report:?}");
        drop(audit);

        // A frame about record 1 in the first segment damaged: queries about record 0 never
        // read it; those about record 1, and a scan, name the damage.
        let first = &segments[0];
        let mut about_one = None;
        frames(first, 0, |read| {
            if frame_keys(&read)
                .is_some_and(|keys| keys.contains(&IndexKey::Record(&format!("{:032x}", 1)).hash()))
            {
                about_one = Some(read.offset);
                return false;
            }
            true
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let at = about_one.unwrap_or_else(|| panic!("no frame about record 1"));
        let pristine = fs::read(&first.path).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = pristine.clone();
        bytes[usize::try_from(at).unwrap_or(usize::MAX) + HEADER + 2] ^= 1;
        fs::write(&first.path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, options);
        assert_eq!(
            by_record(&audit, 0).unwrap_or_else(|e| panic!("{e}")),
            expected(0)
        );
        assert!(by_record(&audit, 1).is_err());
        assert!(
            audit
                .query(&crate::audit::Filter::default(), 0, 10_000)
                .is_err()
        );
        drop(audit);
        fs::write(&first.path, &pristine).unwrap_or_else(|e| panic!("{e}"));

        // An index file rewritten without record 3's entries (its digest redone, as someone
        // with disk access could): queries miss those events, and verification names the file.
        let hash = IndexKey::Record(&format!("{:032x}", 3)).hash();
        let entries: Vec<Entry> = segment_entries(first)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("indexable"))
            .into_iter()
            .filter(|(h, _)| *h != hash)
            .collect();
        let index_path = index::path_of(&first.path);
        fs::write(&index_path, index::encode(first.len, entries)).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, options);
        indexed(dir.path());
        assert_ne!(
            by_record(&audit, 3).unwrap_or_else(|e| panic!("{e}")),
            expected(3)
        );
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        let (seq, problem) = report.problem.unwrap_or_else(|| panic!("not named"));
        assert_eq!(seq, first.first);
        assert!(problem.contains("audit index"), "{problem}");
        drop(audit);

        // Removed, it is rebuilt from its segment at the next start.
        fs::remove_file(&index_path).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, options);
        indexed(dir.path());
        check(&audit);
        let report = audit.verify(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok(), "{report:?}");
        drop(audit);

        // The first frame of the segment being written damaged (an intact frame follows, so it
        // is not a torn tail): that segment is not indexed, and a query about the frame's record
        // reads it through and names the damage instead of answering without it.
        let last = list_segments(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .pop()
            .unwrap_or_else(|| panic!("no segment"));
        let mut first_frame = None;
        frames(&last, 0, |read| {
            first_frame = frame_keys(&read);
            false
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let keys = first_frame.unwrap_or_else(|| panic!("an empty segment"));
        let k = (0..5)
            .find(|k| keys.contains(&IndexKey::Record(&format!("{k:032x}")).hash()))
            .unwrap_or_else(|| panic!("no record in the first frame"));
        let mut bytes = fs::read(&last.path).unwrap_or_else(|e| panic!("{e}"));
        assert!(bytes.len() > 2 * (HEADER + 8), "a second frame follows");
        bytes[HEADER + 2] ^= 1;
        fs::write(&last.path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let audit = open(dir.path(), &store, options);
        assert!(by_record(&audit, k).is_err());
    }

    /// A crash between a frame and its data write is named at the next start, for the frames
    /// that had data writes only: a frame that kept a checkpoint alone lost no call's write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_before_the_data_write_is_named_only_for_frames_with_data() {
        let options = AuditOptions {
            checkpoint_every: 1,
            ..AuditOptions::default()
        };
        for data in [true, false] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let store = Arc::new(MemoryStore::new());
            let audit = open(dir.path(), &store, options);
            commit(&audit, 0, 3, data).await;
            drop(audit);
            // The store as it was before the last append's write: the crash lost it.
            let mut batch = Batch::new();
            batch.put(
                Keyspace::Meta,
                APPLIED_KEY.to_vec(),
                2u64.to_be_bytes().to_vec(),
            );
            store.write(batch).unwrap_or_else(|e| panic!("{e}"));
            let audit = open(dir.path(), &store, options);
            commit(&audit, 3, 4, false).await;
            let (events, _) = audit
                .query(&crate::audit::Filter::default(), 3, 10)
                .unwrap_or_else(|e| panic!("{e}"));
            let notes: Vec<_> = events
                .iter()
                .filter(|e| e.method == "Audit/WritesNotApplied")
                .collect();
            if data {
                assert_eq!(notes.len(), 1, "{events:?}");
                assert!(
                    notes[0].detail.contains("events 3 to 3"),
                    "{}",
                    notes[0].detail
                );
            } else {
                assert!(notes.is_empty(), "{notes:?}");
            }
        }
    }
}

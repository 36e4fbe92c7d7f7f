//! The softkey's counter journal: an append-only file beside the state file (`<state>.journal`)
//! that takes the frequent small changes (signature counters, PIN retries) so that each costs one
//! in-place write and one `fdatasync` instead of a whole atomic rewrite of the state file.
//!
//! Layout: a 32-byte header (magic, the journal's random id, checksum), then records, then zeros
//! up to the preallocated capacity. The file is created whole under a temporary name (header and
//! zeros written and synced) and renamed into place, so its blocks are allocated before the first
//! record: overwriting them with `fdatasync` flushes data only, no size or extent metadata.
//!
//! A record is `len: u16 LE ‖ body (len bytes: kind, payload) ‖ check (8 bytes)`, the check being
//! the first 8 bytes of SHA-256 over the journal id, the record's offset, `len` and the body, which
//! ties a record to its journal and its place. Records carry absolute values (the counter's new
//! value), so replaying one twice is harmless.
//!
//! Reading stops at the first position that does not hold a valid record. If what follows is all
//! zeros, or non-zero bytes that fit in one record and hold no valid record, that position is the
//! end of the journal and the bad bytes are a torn last write, whose answer never left: they are
//! discarded. A valid record after a bad one, or non-zero bytes beyond one record's reach, mean a
//! record in the middle is damaged, and reading fails closed.
//!
//! The state file names the journal it goes with (`JournalRef`: id and the offset up to which the
//! journal is already folded into the state). Every whole rewrite of the state file records the
//! current end of the journal, so only later records are replayed. When the journal is full (and
//! at every start) it is compacted: a new journal is created, and the state file is rewritten
//! pointing at it; a journal whose id the state file does not name is stale (a crash between those
//! two steps) and ignored, because the state file that replaced it already holds its records.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aws_lc_rs::digest::{SHA256, digest};

const MAGIC: &[u8; 8] = b"KWJRNL01";
/// Bytes of the header: magic, id, check.
pub const HEADER_LEN: u64 = 32;
/// Bytes of the journal id.
pub const ID_LEN: usize = 16;
/// Bytes of a record's check value.
const CHECK_LEN: usize = 8;
/// The largest record body: a credential id of up to 1023 bytes (CTAP's limit) and its counter.
pub const MAX_BODY: usize = 1 + 2 + 1023 + 4;
/// The most bytes one record can occupy.
const MAX_RECORD: usize = 2 + MAX_BODY + CHECK_LEN;
/// Preallocated size of a new journal: room for several thousand counter records.
pub const DEFAULT_CAPACITY: u64 = 256 * 1024;

const KIND_SIGN_COUNT: u8 = 1;
const KIND_PIN_RETRIES: u8 = 2;

/// One change recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The credential's signature counter is now `count`.
    SignCount { id: Vec<u8>, count: u32 },
    /// The PIN retry counters are now these.
    PinRetries {
        retries: u8,
        consecutive_failures: u8,
    },
}

impl Record {
    /// The record body: kind byte and payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::SignCount { id, count } => {
                out.push(KIND_SIGN_COUNT);
                // Ids longer than CTAP allows never reach the store; `append` checks the size.
                out.extend_from_slice(&(id.len() as u16).to_le_bytes());
                out.extend_from_slice(id);
                out.extend_from_slice(&count.to_le_bytes());
            }
            Record::PinRetries {
                retries,
                consecutive_failures,
            } => out.extend_from_slice(&[KIND_PIN_RETRIES, *retries, *consecutive_failures]),
        }
    }

    /// The length of [`Record::encode`]'s output.
    pub fn body_len(&self) -> usize {
        match self {
            Record::SignCount { id, .. } => 1 + 2 + id.len() + 4,
            Record::PinRetries { .. } => 3,
        }
    }

    fn decode(body: &[u8]) -> Option<Self> {
        let (&kind, rest) = body.split_first()?;
        match kind {
            KIND_SIGN_COUNT => {
                let (len, rest) = rest.split_first_chunk::<2>()?;
                let len = usize::from(u16::from_le_bytes(*len));
                if rest.len() != len + 4 {
                    return None;
                }
                let (id, count) = rest.split_at(len);
                Some(Record::SignCount {
                    id: id.to_vec(),
                    count: u32::from_le_bytes(count.try_into().ok()?),
                })
            }
            KIND_PIN_RETRIES => match rest {
                &[retries, consecutive_failures] => Some(Record::PinRetries {
                    retries,
                    consecutive_failures,
                }),
                _ => None,
            },
            _ => None,
        }
    }
}

fn check(id: &[u8; ID_LEN], offset: u64, len_and_body: &[u8]) -> [u8; CHECK_LEN] {
    let mut input = Vec::with_capacity(ID_LEN + 8 + len_and_body.len());
    input.extend_from_slice(id);
    input.extend_from_slice(&offset.to_le_bytes());
    input.extend_from_slice(len_and_body);
    let d = digest(&SHA256, &input);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&d.as_ref()[..CHECK_LEN]);
    out
}

fn header(id: &[u8; ID_LEN]) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..24].copy_from_slice(id);
    let d = digest(&SHA256, &h[..24]);
    h[24..].copy_from_slice(&d.as_ref()[..CHECK_LEN]);
    h
}

/// `<state>.journal`, beside the state file.
pub fn path_for(state: &Path) -> PathBuf {
    let mut name = state
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".journal");
    state.with_file_name(name)
}

/// What reading a journal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Contents {
    /// The journal belongs to another state (an older one, replaced by a compaction): ignore it.
    Stale,
    /// The journal's records from `from` on, in order, and where its valid records end.
    Records { records: Vec<Record>, end: u64 },
}

/// The body length of a valid record at `pos`, if one starts there.
fn record_at(bytes: &[u8], id: &[u8; ID_LEN], pos: usize) -> Option<usize> {
    let rest = bytes.get(pos..)?;
    let len = usize::from(u16::from_le_bytes(*rest.first_chunk::<2>()?));
    let record_len = 2 + len + CHECK_LEN;
    ((1..=MAX_BODY).contains(&len)
        && rest.len() >= record_len
        && rest[2 + len..record_len] == check(id, pos as u64, &rest[..2 + len])[..])
        .then_some(len)
}

/// Parses a whole journal file. `id` is the journal the state file names; records before `from`
/// are checked but not returned (the state file already holds them).
pub fn parse(bytes: &[u8], id: &[u8; ID_LEN], from: u64) -> anyhow::Result<Contents> {
    let Some(head) = bytes.get(..HEADER_LEN as usize) else {
        bail!("the journal is shorter than its header");
    };
    let file_id: [u8; ID_LEN] = head[8..24].try_into().expect("16 bytes");
    if &head[..8] != MAGIC || head != header(&file_id) {
        bail!("the journal header is damaged or not a keyward softkey journal");
    }
    if &file_id != id {
        return Ok(Contents::Stale);
    }
    let mut records = Vec::new();
    let mut pos = HEADER_LEN as usize;
    loop {
        let rest = &bytes[pos..];
        let Some(last_nonzero) = rest.iter().rposition(|&b| b != 0) else {
            break;
        };
        let Some(len) = record_at(bytes, id, pos) else {
            // A torn last write damages that record only: nothing was ever written after it,
            // so its bytes fit in one record and no valid record starts after them.
            if last_nonzero >= MAX_RECORD
                || (pos + 1..=pos + last_nonzero).any(|q| record_at(bytes, id, q).is_some())
            {
                bail!(
                    "the journal is damaged at offset {pos}: a record fails its checksum and \
                     later records follow; refusing to guess the counters"
                );
            }
            break;
        };
        let record = Record::decode(&rest[2..2 + len]).with_context(|| {
            format!("the journal record at offset {pos} is of an unknown kind or malformed")
        })?;
        if pos as u64 >= from {
            records.push(record);
        }
        pos += 2 + len + CHECK_LEN;
    }
    Ok(Contents::Records {
        records,
        end: pos as u64,
    })
}

/// Reads and parses the journal beside `state`. `None` when there is no journal file.
pub fn read(state: &Path, id: &[u8; ID_LEN], from: u64) -> anyhow::Result<Option<Contents>> {
    let path = path_for(state);
    match fs::read(&path) {
        Ok(bytes) => parse(&bytes, id, from)
            .with_context(|| format!("reading {}", path.display()))
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// An open journal, appended to in place.
#[derive(Debug)]
pub struct Journal {
    file: File,
    id: [u8; ID_LEN],
    /// Where the next record goes.
    end: u64,
    capacity: u64,
    buffer: Vec<u8>,
    /// The last record was written with [`Journal::write_unsynced`] and is not synced yet.
    unsynced: bool,
}

/// A journal written under a temporary name, not yet in place.
#[derive(Debug)]
pub struct NewJournal {
    journal: Journal,
    temp: PathBuf,
    path: PathBuf,
}

impl Journal {
    /// Creates a journal for `state` under a temporary name: header and zeros up to `capacity`,
    /// synced. [`NewJournal::install`] renames it into place.
    pub fn create(state: &Path, id: [u8; ID_LEN], capacity: u64) -> std::io::Result<NewJournal> {
        let path = path_for(state);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let capacity = capacity.max(HEADER_LEN + MAX_RECORD as u64);
        let result = (|| {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            let mut content = vec![0u8; usize::try_from(capacity).map_err(std::io::Error::other)?];
            content[..HEADER_LEN as usize].copy_from_slice(&header(&id));
            file.write_all(&content)?;
            file.sync_all()?;
            Ok(file)
        })();
        match result {
            Ok(file) => Ok(NewJournal {
                journal: Journal {
                    file,
                    id,
                    end: HEADER_LEN,
                    capacity,
                    buffer: Vec::with_capacity(MAX_RECORD),
                    unsynced: false,
                },
                temp,
                path,
            }),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    pub fn id(&self) -> [u8; ID_LEN] {
        self.id
    }

    /// Where the next record goes: everything before it is on disk.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether `record` still fits.
    pub fn has_room(&self, record: &Record) -> bool {
        self.end + (2 + record.body_len() + CHECK_LEN) as u64 <= self.capacity
    }

    /// Writes one record at the end and waits until it is on disk (`fdatasync`). On error the
    /// journal must not be used again: whether the record reached the disk is unknown.
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        self.sync()?;
        self.encode_at_end(record)?;
        self.file.write_all_at(&self.buffer, self.end)?;
        self.file.sync_data()?;
        self.end += self.buffer.len() as u64;
        Ok(())
    }

    /// Writes one record at the end and starts its way to the disk without waiting for it
    /// (`sync_file_range`); [`Journal::sync`] waits. The record is not durable until then, and
    /// the next append syncs it first, so at most the last record is ever unsynced (a crash
    /// can lose or tear only that one, which the reader discards). On error the journal must
    /// not be used again.
    pub fn write_unsynced(&mut self, record: &Record) -> std::io::Result<()> {
        self.sync()?;
        self.encode_at_end(record)?;
        self.file.write_all_at(&self.buffer, self.end)?;
        let range = (self.end, self.buffer.len() as u64);
        self.end += self.buffer.len() as u64;
        self.unsynced = true;
        if let Err(e) = start_writeback(&self.file, range.0, range.1) {
            // Only an earlier start is lost: `sync` still makes the record durable.
            tracing::debug!(error = %e, "could not start writing a journal record back");
        }
        Ok(())
    }

    /// Waits until a record written with [`Journal::write_unsynced`] is on disk (`fdatasync`).
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Puts `len ‖ body ‖ check` of `record` for the current end into `self.buffer`, checking
    /// that it fits.
    fn encode_at_end(&mut self, record: &Record) -> std::io::Result<()> {
        let buffer = &mut self.buffer;
        buffer.clear();
        buffer.extend_from_slice(&[0, 0]);
        record.encode(buffer);
        let len = buffer.len() - 2;
        if !(1..=MAX_BODY).contains(&len) {
            return Err(std::io::Error::other("journal record too large"));
        }
        buffer[..2].copy_from_slice(&(len as u16).to_le_bytes());
        let sum = check(&self.id, self.end, buffer);
        buffer.extend_from_slice(&sum);
        if self.end + buffer.len() as u64 > self.capacity {
            return Err(std::io::Error::other("the journal is full"));
        }
        Ok(())
    }
}

/// Starts writing `file`'s dirty pages in `offset..offset + len` to the device without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later `fdatasync` waits for less. It
/// makes nothing durable by itself: no flush of the device's cache, no metadata.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // no safe binding of sync_file_range exists in rustix, nix or std
fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let offset = i64::try_from(offset).map_err(std::io::Error::other)?;
    let len = i64::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: sync_file_range reads and writes no memory of this process; the descriptor stays
    // open while `file` is borrowed, and bad arguments only make the call fail.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Ok(())
}

impl NewJournal {
    /// Renames the journal into place (replacing the old one) and syncs the directory.
    pub fn install(self) -> std::io::Result<Journal> {
        let result = fs::rename(&self.temp, &self.path)
            .and_then(|()| File::open(super::state::parent_dir(&self.path))?.sync_all());
        match result {
            Ok(()) => Ok(self.journal),
            Err(e) => {
                let _ = fs::remove_file(&self.temp);
                Err(e)
            }
        }
    }

    /// Drops the temporary file (the state file could not be written).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; ID_LEN] = [7; ID_LEN];

    fn sample() -> Vec<Record> {
        vec![
            Record::SignCount {
                id: vec![1; 32],
                count: 1,
            },
            Record::PinRetries {
                retries: 7,
                consecutive_failures: 1,
            },
            Record::SignCount {
                id: vec![1; 32],
                count: 2,
            },
        ]
    }

    /// A new journal in place beside `dir/key.json`, and the state file's path.
    fn installed(dir: &Path, capacity: u64) -> (Journal, PathBuf) {
        let state = dir.join("key.json");
        let journal = Journal::create(&state, ID, capacity)
            .expect("create")
            .install()
            .expect("install");
        (journal, state)
    }

    /// A journal file with `records`, and the offsets where each record starts.
    fn written(dir: &Path, records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let (mut journal, state) = installed(dir, 4096);
        let mut offsets = Vec::new();
        for r in records {
            offsets.push(journal.end() as usize);
            journal.append(r).expect("append");
        }
        (fs::read(path_for(&state)).expect("read"), offsets)
    }

    fn records(contents: Contents) -> Vec<Record> {
        match contents {
            Contents::Records { records, .. } => records,
            Contents::Stale => panic!("stale"),
        }
    }

    #[test]
    fn records_round_trip_and_replay_starts_where_the_state_left_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, offsets) = written(dir.path(), &sample());
        assert_eq!(bytes.len(), 4096, "preallocated");
        assert_eq!(
            records(parse(&bytes, &ID, 0).expect("parse")),
            sample(),
            "every record back, in order"
        );
        assert_eq!(
            records(parse(&bytes, &ID, offsets[2] as u64).expect("parse")),
            sample()[2..],
        );
        assert_eq!(
            parse(&bytes, &[8; ID_LEN], 0).expect("parse"),
            Contents::Stale,
            "another journal's file is stale"
        );
    }

    #[test]
    fn unsynced_and_synced_records_read_back_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut journal, state) = installed(dir.path(), 4096);
        let sample = sample();
        journal.write_unsynced(&sample[0]).expect("write");
        // An append after an unsynced record syncs that one first, then itself.
        journal.append(&sample[1]).expect("append");
        journal.write_unsynced(&sample[2]).expect("write");
        journal.sync().expect("sync");
        journal.sync().expect("a second sync has nothing to do");
        let bytes = fs::read(path_for(&state)).expect("read");
        assert_eq!(records(parse(&bytes, &ID, 0).expect("parse")), sample);
        assert_eq!(
            written(dir.path(), &sample).0,
            bytes,
            "the same bytes as appends"
        );
    }

    #[test]
    fn a_torn_or_garbage_tail_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, offsets) = written(dir.path(), &sample());
        let last = offsets[2];
        let last_len =
            2 + usize::from(u16::from_le_bytes([bytes[last], bytes[last + 1]])) + CHECK_LEN;
        let end = last + last_len;
        // The last record cut short at every length: only the first two survive.
        for cut in 1..last_len {
            let mut torn = bytes.clone();
            torn[last + cut..end].fill(0);
            assert_eq!(
                records(parse(&torn, &ID, 0).expect("torn tail is not an error")),
                sample()[..2],
                "cut at {cut}"
            );
        }
        // Its second half written but not its first (out-of-order sector writes).
        let mut torn = bytes.clone();
        torn[last..last + 4].fill(0);
        assert_eq!(records(parse(&torn, &ID, 0).expect("parse")), sample()[..2]);
        // Garbage where the next record would go.
        let mut garbage = bytes.clone();
        garbage[end..end + 20].copy_from_slice(&[0xA5; 20]);
        assert_eq!(records(parse(&garbage, &ID, 0).expect("parse")), sample());
        // The file cut off inside the last record (a shorter file than preallocated).
        assert_eq!(
            records(parse(&bytes[..end - 3], &ID, 0).expect("parse")),
            sample()[..2]
        );
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, offsets) = written(dir.path(), &sample());
        for at in [offsets[1], offsets[1] + 2, offsets[2] - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let error = parse(&damaged, &ID, 0).expect_err("mid-journal damage");
            assert!(
                error.to_string().contains("damaged at offset"),
                "clear message: {error}"
            );
        }
        // A damaged header is an error too, not "stale".
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        assert!(parse(&damaged, &ID, 0).is_err());
        // So is a valid checksum over a record of an unknown kind.
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("key.json");
        let mut journal = Journal::create(&state, ID, 4096)
            .expect("create")
            .install()
            .expect("install");
        journal.buffer.clear();
        let mut raw = vec![1, 0, 0x7E];
        raw.extend_from_slice(&check(&ID, HEADER_LEN, &raw));
        journal.file.write_all_at(&raw, HEADER_LEN).expect("write");
        let bytes = fs::read(path_for(&state)).expect("read");
        assert!(parse(&bytes, &ID, 0).is_err());
    }

    #[test]
    fn a_record_moved_to_another_offset_fails_its_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, offsets) = written(dir.path(), &sample()[..1]);
        let start = offsets[0];
        let len = 2 + usize::from(u16::from_le_bytes([bytes[start], bytes[start + 1]])) + CHECK_LEN;
        let record = bytes[start..start + len].to_vec();
        let mut moved = bytes.clone();
        moved[start + len..start + 2 * len].copy_from_slice(&record);
        // A replayed copy of a record is not a valid record at its new place; with nothing
        // after it, it reads as a torn tail.
        assert_eq!(
            records(parse(&moved, &ID, 0).expect("parse")),
            sample()[..1]
        );
    }

    #[test]
    fn a_full_journal_refuses_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut journal, _) = installed(dir.path(), 0);
        let record = Record::PinRetries {
            retries: 1,
            consecutive_failures: 0,
        };
        let mut n = 0;
        while journal.has_room(&record) {
            journal.append(&record).expect("append");
            n += 1;
        }
        assert!(n > 0);
        assert!(journal.append(&record).is_err());
    }
}

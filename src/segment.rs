//! Payload segments: one shared-memory object per payload slot, created on demand, sized
//! by class ([`class_for`]), reused across messages, mapped once per process.
//!
//! A payload of at most `INLINE_BYTES` lives in the slot record itself. A larger one lives
//! at offset 0 (page-aligned, hence 64-byte aligned) of `/dev/shm/shmq.<queue>.<slot>`.
//! Only the slot's current owner (LOANED) resizes the object; it bumps the slot's `epoch`
//! *before* changing the object, so every process notices at its next use that its cached
//! mapping is stale, and it writes `seg_size` after. Each process caches one mapping per
//! slot, keyed by epoch. The file's own size (`fstat`) is checked before any mapping is
//! used, so a `seg_size` left stale by a crash, or a corrupt one, can never make us touch
//! memory past the end of the object.
//!
//! Growth (owner of slot `s`, needs `n` bytes):
//!
//! ```text
//!   class = class_for(n) (≥ 4 KiB, ≤ max message size rounded to a page)
//!   if Σ seg_size + class − seg_size[s] > max_payload_bytes: trim FREE slots' objects,
//!       else back-pressure (the caller waits, as when the queue is full)
//!   epoch[s] += 1                                                             (G1)
//!   ftruncate + posix_fallocate the object to `class`                         (G2)
//!   seg_size[s] = class                                                       (G3)
//! ```
//!
//! Killed after G1/G2: the slot is LOANED by the dead and recovery frees it; the next owner
//! finds `seg_size` and the file size disagreeing and sizes the object again.
//!
//! Trimming (to make room under the bound) takes a FREE slot exactly like an allocation
//! (`FREE(g) -> LOANED(g, me)`), bumps its epoch, truncates the object to 0, sets
//! `seg_size` to 0 and frees the slot. Killed at any point of it: the slot is LOANED by
//! the dead with `pos` NONE, so recovery frees it (recovery.rs V1b), and `seg_size` may
//! say more than the file holds, which the next owner detects as after G1/G2; until then
//! the pool counts bytes the object no longer has, and the next trim empties that slot
//! like any other. Crash point `send.trim` (object truncated, `seg_size` not yet reset)
//! and a kill test there (`tests/crash.rs`).
//!
//! The payload bound is checked when a segment grows; producers growing at the same moment
//! can each pass the check, so the bound can be overshot by at most one class per
//! concurrent grower.

use crate::error::{Error, ErrorKind};
use crate::layout::{Shared, INLINE_BYTES};
use crate::os;
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex};

/// One mapped segment object.
pub struct Seg {
    map: os::Mapping,
    epoch: u64,
}

impl Seg {
    /// Start of the payload.
    pub fn ptr(&self) -> *mut u8 {
        self.map.ptr()
    }
    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Why a segment could not be provided for writing.
pub enum GrowError {
    /// The payload-bytes bound is reached: wait for acks, like a full queue.
    PoolFull,
    /// An OS failure.
    Failed(Error),
}

/// This process's mappings of one queue's segments.
pub struct Segments {
    name: String,
    cache: Mutex<Vec<Option<Arc<Seg>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the cache lock leaves a valid Vec: go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Segments {
    /// An empty cache for queue `name` with `slots` slots.
    pub fn new(name: &str, slots: usize) -> Segments {
        Segments {
            name: name.to_string(),
            cache: Mutex::new(vec![None; slots]),
        }
    }

    fn cached(&self, s: u32, epoch: u64, need: u64) -> Option<Arc<Seg>> {
        let c = lock(&self.cache);
        match &c[s as usize] {
            Some(seg) if seg.epoch == epoch && seg.len() as u64 >= need => Some(seg.clone()),
            _ => None,
        }
    }

    fn map_existing(&self, s: u32, epoch: u64, need: u64) -> Result<Option<Arc<Seg>>, Error> {
        let path = os::segment_path(&self.name, s);
        let file = match os::open_rw(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
        };
        let flen = os::file_len(&file).map_err(|e| Error::io("cannot stat a segment", e))?;
        if flen < need || flen == 0 {
            return Ok(None);
        }
        let map = os::Mapping::new(&file, flen)
            .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        let seg = Arc::new(Seg { map, epoch });
        lock(&self.cache)[s as usize] = Some(seg.clone());
        Ok(Some(seg))
    }

    /// A mapping of slot `s`'s segment covering `len` bytes, for a consumer that has
    /// claimed the slot.
    pub fn for_read(&self, q: &Shared<'_>, s: u32, len: u64) -> Result<Arc<Seg>, Error> {
        let epoch = q.slots[s as usize].epoch.load(Acquire);
        if let Some(seg) = self.cached(s, epoch, len) {
            return Ok(seg);
        }
        self.map_existing(s, epoch, len)?.ok_or_else(|| {
            Error::corrupt(format!(
                "payload segment of slot {s} of queue {:?} is missing or shorter than its message ({len} bytes)",
                self.name
            ))
        })
    }

    /// A mapping of at least `need` bytes of slot `s`'s segment, for the producer that
    /// holds the slot LOANED as participant `me`, growing the object if needed.
    pub fn for_write(
        &self,
        q: &Shared<'_>,
        s: u32,
        need: u64,
        me: u16,
        max_message: u64,
        max_pool: u64,
    ) -> Result<Arc<Seg>, GrowError> {
        let rec = &q.slots[s as usize];
        let epoch = rec.epoch.load(Relaxed);
        if rec.seg_size.load(Relaxed) >= need {
            if let Some(seg) = self.cached(s, epoch, need) {
                return Ok(seg);
            }
            if let Some(seg) = self
                .map_existing(s, epoch, need)
                .map_err(GrowError::Failed)?
            {
                return Ok(seg);
            }
        }
        let cap = segment_size_for(max_message);
        let class = class_for(need).clamp(4096, cap.max(4096)).max(need);
        let old = rec.seg_size.load(Relaxed).min(cap);
        let extra = class.saturating_sub(old);
        if pool_bytes(q, cap).saturating_add(extra) > max_pool {
            self.trim(q, s, me, extra, max_pool, cap);
            if pool_bytes(q, cap).saturating_add(extra) > max_pool {
                return Err(GrowError::PoolFull);
            }
        }
        // G1: make every cached mapping of this slot stale first.
        let epoch = rec.epoch.fetch_add(1, Release).wrapping_add(1);
        lock(&self.cache)[s as usize] = None;
        crate::fault::point("send.grow");
        let path = os::segment_path(&self.name, s);
        let file = os::open_or_create(&path).map_err(|e| {
            GrowError::Failed(Error::io(format!("cannot create {}", path.display()), e))
        })?;
        // G2. Out of space: the segments of consumed messages stay allocated (they are
        // reused), so space may only be cached. Give back every FREE slot's segment (any
        // process's: they are taken like allocations, `trim`) and try once more before
        // reporting NoSpace.
        let mut sized = os::size_and_reserve(&file, class);
        if matches!(&sized, Err(e) if e.raw_os_error() == Some(libc::ENOSPC)) {
            let _ = file.set_len(0);
            rec.seg_size.store(0, Release);
            self.trim(q, s, me, 0, 0, cap);
            sized = os::size_and_reserve(&file, class);
        }
        if let Err(e) = sized {
            let _ = file.set_len(0);
            rec.seg_size.store(0, Release);
            return Err(GrowError::Failed(Error::io(
                format!("cannot reserve {class} bytes of shared memory for a message (is /dev/shm full?)"),
                e,
            )));
        }
        // G3.
        rec.seg_size.store(class, Release);
        let map = os::Mapping::new(&file, class).map_err(|e| {
            GrowError::Failed(Error::io(format!("cannot map {}", path.display()), e))
        })?;
        let seg = Arc::new(Seg { map, epoch });
        lock(&self.cache)[s as usize] = Some(seg.clone());
        Ok(seg)
    }

    /// Shrinks FREE slots' segments to zero until `extra` more bytes fit under `max_pool`.
    /// Each victim is taken like any allocation (FREE -> LOANED by `me`), emptied, freed.
    fn trim(&self, q: &Shared<'_>, keep: u32, me: u16, extra: u64, max_pool: u64, cap: u64) {
        for (i, rec) in q.slots.iter().enumerate() {
            if pool_bytes(q, cap).saturating_add(extra) <= max_pool {
                return;
            }
            if i as u32 == keep || rec.seg_size.load(Relaxed) == 0 {
                continue;
            }
            // Taken like any allocation (slots.rs A1), so no producer can be using it.
            let Some((_, loaned)) = crate::slots::take_if_free(q, me, i, |_| true) else {
                continue;
            };
            // Same order as growth: epoch, then the object, then seg_size.
            rec.epoch.fetch_add(1, Release);
            lock(&self.cache)[i] = None;
            if let Ok(f) = os::open_rw(&os::segment_path(&self.name, i as u32)) {
                let _ = f.set_len(0);
            }
            crate::fault::point("send.trim");
            rec.seg_size.store(0, Release);
            crate::slots::free(q, i as u32, loaned);
        }
    }

    /// Drops every cached mapping (the queue is being detached).
    pub fn clear(&self) {
        lock(&self.cache).iter_mut().for_each(|c| *c = None);
    }
}

/// Bytes of all payload segments as recorded in the slot table, each record taken as at
/// most `cap` (`segment_size_for(max_message_size)`: no segment grows beyond it). A size
/// scribbled over a record therefore cannot make the pool look full for good (the slot's
/// next owner resizes the object and rewrites the record; `for_read` checks the object's
/// real size before it maps anything).
pub fn pool_bytes(q: &Shared<'_>, cap: u64) -> u64 {
    q.slots
        .iter()
        .map(|r| r.seg_size.load(Relaxed).min(cap))
        .fold(0u64, u64::saturating_add)
}

/// The largest `max_message_size` a queue may have: 1 TiB (far above any `/dev/shm`; it
/// keeps every size computation far from overflow).
pub const MAX_MESSAGE_SIZE: u64 = 1 << 40;

/// The segment a message of up to `max_message` bytes may need at most: `max_message`
/// rounded up to a whole page (at least one), or 0 if it travels inline. A queue's
/// `max_payload_bytes` must be at least this, or its largest messages could never be sent.
/// (`Segments::for_write` sizes segments by [`class_for`], capped at this.)
pub fn segment_size_for(max_message: u64) -> u64 {
    if is_inline(max_message) {
        0
    } else {
        max_message.min(MAX_MESSAGE_SIZE).div_ceil(4096) * 4096
    }
}

/// The size a segment grows to for a message of `need` bytes: the next power of two up to
/// 1 MiB (few distinct sizes, so a slot's segment serves many later messages), and above
/// that the next multiple of an eighth of the power of two at or below `need`, so a
/// message just over a power of two (a pickled 32 MiB array: 32 MiB and a header) takes at
/// most 12.5% more, not twice its size, of `/dev/shm`, whose pages are all reserved. A
/// message size growing steadily costs up to eight regrowths per doubling instead of one.
pub fn class_for(need: u64) -> u64 {
    const FINE_ABOVE: u64 = 1 << 20;
    if need <= FINE_ABOVE {
        return need.next_power_of_two();
    }
    let octave = 1u64 << (63 - need.leading_zeros());
    let step = octave / 8;
    need.div_ceil(step).saturating_mul(step)
}

/// Whether a payload of `len` bytes is carried inline in the slot record.
pub fn is_inline(len: u64) -> bool {
    len <= INLINE_BYTES as u64
}

/// An error for a `len` read from shared memory that no producer could have written.
pub fn bad_len(len: u64, max: u64) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("message length {len} in shared memory exceeds the queue's maximum {max}"),
    )
}

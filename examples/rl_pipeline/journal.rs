//! Journals: what each child process did, written so that it survives the process being
//! SIGKILLed at any instruction.
//!
//! Every child incarnation appends fixed 16-byte records to a file of its own,
//! `<role>-<id>-<inc>.journal` in the run's directory, each with one `write(2)` on an
//! `O_APPEND` descriptor and no buffering in the process: once `append` returns, the record
//! is in the kernel's page cache and outlives the process (not a machine crash, which
//! would take the shared-memory queues with it anyway). A process killed in the middle of
//! `append` has written the whole record or none of it (the reader also tolerates a
//! partial tail).
//!
//! What is journaled, and when (the order is what makes the accounting sound):
//!
//! | record | who | when |
//! |---|---|---|
//! | `SENT_TRAJ actor inc seq` | actor | after `send` returned `Ok` |
//! | `GOT_TRAJ actor inc seq` | replay buffer | after receiving, before it can ack (drop) the message |
//! | `SENT_BATCH inc seq n` | replay buffer | after `send` returned `Ok` |
//! | `GOT_BATCH inc seq latency_us` | learner | after checking the batch, before dropping (acking) it |
//! | `BAD_TRAJ` / `BAD_BATCH` | replay buffer / learner | a message failed its checks |
//!
//! `GOT_*` and `BAD_*` records carry the [`REDELIVERED`] flag when
//! `Message::is_redelivery()` said so.

use crate::cli::Role;
use bytemuck::{Pod, Zeroable};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One journal record.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Rec {
    pub kind: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
}

pub const SENT_TRAJ: u32 = 1;
pub const GOT_TRAJ: u32 = 2;
pub const SENT_BATCH: u32 = 3;
pub const GOT_BATCH: u32 = 4;
pub const BAD_TRAJ: u32 = 5;
pub const BAD_BATCH: u32 = 6;
/// Flag on `GOT_*` / `BAD_*`: the message was a redelivery.
pub const REDELIVERED: u32 = 1 << 31;

impl Rec {
    pub fn new(kind: u32, a: u32, b: u32, c: u32) -> Rec {
        Rec { kind, a, b, c }
    }
    pub fn base_kind(&self) -> u32 {
        self.kind & !REDELIVERED
    }
    pub fn redelivered(&self) -> bool {
        self.kind & REDELIVERED != 0
    }
}

/// A child's journal, open for appending.
pub struct Journal {
    file: File,
}

impl Journal {
    /// Creates the journal of incarnation `inc` of child `role` `id` in `dir`.
    pub fn create(dir: &str, role: Role, id: u32, inc: u32) -> Result<Journal, String> {
        let path = Path::new(dir).join(file_name(role, id, inc));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Journal { file })
    }

    /// Appends `r` with one `write(2)` (see the module doc). Safe to call from several
    /// threads: `O_APPEND` writes of 16 bytes do not interleave.
    pub fn append(&self, r: Rec) -> Result<(), String> {
        (&self.file)
            .write_all(bytemuck::bytes_of(&r))
            .map_err(|e| format!("cannot write the journal: {e}"))
    }
}

/// Who wrote a journal: role, id, incarnation.
pub type Writer = (Role, u32, u32);

pub fn file_name(role: Role, id: u32, inc: u32) -> String {
    format!("{}-{id}-{inc}.journal", role.as_str())
}

/// `(role, id, inc)` of a journal's file name.
pub fn parse_name(name: &str) -> Option<Writer> {
    let stem = name.strip_suffix(".journal")?;
    let mut parts = stem.split('-');
    let role = Role::parse(parts.next()?)?;
    let id = parts.next()?.parse().ok()?;
    let inc = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((role, id, inc))
}

/// Reads the journals of a directory incrementally: each call returns the records
/// appended since the previous one.
#[derive(Default)]
pub struct Tailer {
    /// Per file: bytes consumed, and a partial record carried over.
    files: std::collections::HashMap<PathBuf, (u64, Vec<u8>)>,
}

impl Tailer {
    /// New records of every journal in `dir`, each with its writer's `(role, id, inc)`.
    pub fn read_new(&mut self, dir: &Path) -> Result<Vec<(Writer, Rec)>, String> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = e.file_name();
            let Some(who) = parse_name(&name.to_string_lossy()) else {
                continue;
            };
            let path = e.path();
            let (offset, partial) = self.files.entry(path.clone()).or_default();
            let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.seek(SeekFrom::Start(*offset))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut buf = std::mem::take(partial);
            let n = f
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            *offset += n as u64;
            let whole = buf.len() / 16 * 16;
            for chunk in buf[..whole].chunks_exact(16) {
                out.push((who, bytemuck::pod_read_unaligned::<Rec>(chunk)));
            }
            *partial = buf[whole..].to_vec();
        }
        Ok(out)
    }
}

//! shaq (anza): a DPDK-style bounded MPMC ring in a shared file, carrying fixed-size
//! items by value. Each payload size is its own type `Item<W>` (W words, a compile-time
//! constant), so only the sizes listed in `with_item!` run: 8 B … 16 MiB. Items are
//! written and read in place through its reservation guards (`try_reserve_write`,
//! `try_reserve_read`); consumers sleep on its futex (`reserve_read_timeout`); producers
//! have no blocking write and poll with `yield_now` while the ring is full. shaq has no
//! end of stream: the orchestrator writes one end marker per consumer after every
//! producer is done.

use crate::proto::*;
use shaq::mpmc::{Consumer, Producer};
use std::fs::{File, OpenOptions};
use std::time::Duration;

/// One fixed-size payload.
#[repr(C, align(64))]
pub struct Item<const W: usize>(pub [u64; W]);

/// Runs `$body` with `$T` bound to the item type of `$size` bytes, or evaluates `$none`.
#[macro_export]
macro_rules! with_item {
    ($size:expr, $T:ident => $body:expr, _ => $none:expr) => {
        match $size {
            8 => {
                type $T = $crate::sys::shaq_sys::Item<1>;
                $body
            }
            64 => {
                type $T = $crate::sys::shaq_sys::Item<8>;
                $body
            }
            1024 => {
                type $T = $crate::sys::shaq_sys::Item<128>;
                $body
            }
            65536 => {
                type $T = $crate::sys::shaq_sys::Item<8192>;
                $body
            }
            1048576 => {
                type $T = $crate::sys::shaq_sys::Item<131072>;
                $body
            }
            16777216 => {
                type $T = $crate::sys::shaq_sys::Item<2097152>;
                $body
            }
            _ => $none,
        }
    };
}

pub fn supports(size: usize) -> bool {
    with_item!(size, T => { let _ = std::mem::size_of::<T>(); true }, _ => false)
}

fn open(path: &str) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open shaq file")
}

/// Creates the queue file (the orchestrator is the sole initializer) and returns a
/// producer the orchestrator keeps to write end markers.
pub fn create<T>(path: &str, capacity: usize) -> Producer<T> {
    let size = shaq::mpmc::minimum_file_size::<T>(capacity).next_multiple_of(4096);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create shaq file");
    f.set_len(size as u64).expect("size shaq file");
    // SAFETY: this process created the file just now and is its only initializer; every
    // process uses the same `T` for it (chosen by size in `with_item!`).
    unsafe { Producer::<T>::create(&f, size) }.expect("shaq create")
}

#[inline]
fn words_of<const W: usize>(it: &Item<W>) -> &[u64] {
    &it.0
}

/// Writes one item in place; `copy` copies from `src` instead of generating.
fn write_one<const W: usize>(p: &Producer<Item<W>>, st: u64, src: Option<&mut Source>) {
    loop {
        // SAFETY: every word of the reserved item is written below before the guard drops.
        if let Some(mut g) = unsafe { p.try_reserve_write() } {
            let ptr = g.as_mut().as_mut_ptr() as *mut u64;
            // SAFETY: the reserved cell is W u64 words, ours until the guard drops.
            let w = unsafe { std::slice::from_raw_parts_mut(ptr, W) };
            match src {
                Some(s) => {
                    s.words[0] = st;
                    w.copy_from_slice(&s.words);
                }
                None => fill(w, st),
            }
            return;
        }
        std::thread::yield_now();
    }
}

pub fn end_markers<const W: usize>(p: &Producer<Item<W>>, n: u32) {
    for i in 0..n {
        write_one(p, end_stamp(i), None);
    }
}

fn producer_w<const W: usize>(spec: &Spec, ctl: &mut Ctl) -> Report {
    // SAFETY: every process joins with the same `Item<W>` for this file.
    let p = unsafe { Producer::<Item<W>>::join(&open(&spec.names[0])) }.expect("join");
    let r = if spec.mode == "loan" {
        run_producer(spec, ctl, |st| write_one(&p, st, None))
    } else {
        let mut src = Source::new(spec.size);
        run_producer(spec, ctl, |st| write_one(&p, st, Some(&mut src)))
    };
    keep(p);
    r
}

fn consumer_w<const W: usize>(spec: &Spec, ctl: &mut Ctl) -> Report {
    // SAFETY: as in `producer_w`.
    let c = unsafe { Consumer::<Item<W>>::join(&open(&spec.names[0])) }.expect("join");
    let (rss_start, _) = rss();
    let mut v = Verifier::new(spec.size, spec.producers as usize);
    ctl.ready_then_wait_go();
    let t_start = now_ns();
    let mut t_last = t_start;
    let mut fresh = false;
    loop {
        let g = match c.try_reserve_read() {
            Some(g) => g,
            None => {
                if fresh {
                    t_last = now_ns();
                    fresh = false;
                }
                match c.reserve_read_timeout(Duration::from_millis(1)) {
                    Ok(g) => g,
                    Err(_) => continue,
                }
            }
        };
        let got = v.words(words_of(g.as_ref()));
        drop(g);
        if got == Got::End {
            break;
        }
        fresh = true;
    }
    if fresh {
        t_last = now_ns();
    }
    let r = consumer_report(spec, v, rss_start, t_start, t_last);
    keep(c);
    r
}

struct ShaqDuplex<const W: usize> {
    p: Producer<Item<W>>,
    c: Consumer<Item<W>>,
}

impl<const W: usize> Duplex for ShaqDuplex<W> {
    fn send(&mut self, w: &[u64]) {
        let mut s = Source { words: w.to_vec() };
        write_one(&self.p, w[0], Some(&mut s));
    }
    fn recv(&mut self, spin: bool, f: &mut dyn FnMut(&[u64])) {
        let g = loop {
            let g = if spin {
                self.c.try_reserve_read()
            } else {
                self.c.reserve_read_timeout(Duration::from_secs(1)).ok()
            };
            match g {
                Some(g) => break g,
                None => std::hint::spin_loop(),
            }
        };
        f(words_of(g.as_ref()));
    }
}

fn latency_w<const W: usize>(spec: &Spec, ctl: &mut Ctl) -> Report {
    let (a, b) = if spec.role == "ping" { (0, 1) } else { (1, 0) };
    // SAFETY: both ends use `Item<W>` for these files.
    let p = unsafe { Producer::<Item<W>>::join(&open(&spec.names[a])) }.expect("join");
    // SAFETY: as above.
    let c = unsafe { Consumer::<Item<W>>::join(&open(&spec.names[b])) }.expect("join");
    let mut d = ShaqDuplex { p, c };
    run_latency(spec, ctl, &mut d)
}

pub fn producer(spec: &Spec, ctl: &mut Ctl) -> Report {
    with_item!(spec.size, T => producer_t::<T>(spec, ctl), _ => panic!("shaq: no item type of {} bytes", spec.size))
}
pub fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report {
    with_item!(spec.size, T => consumer_t::<T>(spec, ctl), _ => panic!("shaq: no item type of {} bytes", spec.size))
}
pub fn latency(spec: &Spec, ctl: &mut Ctl) -> Report {
    with_item!(spec.size, T => latency_t::<T>(spec, ctl), _ => panic!("shaq: no item type of {} bytes", spec.size))
}

/// Bridges a type alias back to its word count.
pub trait Words {
    fn producer(spec: &Spec, ctl: &mut Ctl) -> Report;
    fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report;
    fn latency(spec: &Spec, ctl: &mut Ctl) -> Report;
    fn create_and_keep(path: &str, capacity: usize) -> Box<dyn FnOnce(u32)>;
}
impl<const W: usize> Words for Item<W> {
    fn producer(spec: &Spec, ctl: &mut Ctl) -> Report {
        producer_w::<W>(spec, ctl)
    }
    fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report {
        consumer_w::<W>(spec, ctl)
    }
    fn latency(spec: &Spec, ctl: &mut Ctl) -> Report {
        latency_w::<W>(spec, ctl)
    }
    fn create_and_keep(path: &str, capacity: usize) -> Box<dyn FnOnce(u32)> {
        let p = create::<Item<W>>(path, capacity);
        Box::new(move |n| end_markers::<W>(&p, n))
    }
}
fn producer_t<T: Words>(spec: &Spec, ctl: &mut Ctl) -> Report {
    T::producer(spec, ctl)
}
fn consumer_t<T: Words>(spec: &Spec, ctl: &mut Ctl) -> Report {
    T::consumer(spec, ctl)
}
fn latency_t<T: Words>(spec: &Spec, ctl: &mut Ctl) -> Report {
    T::latency(spec, ctl)
}

/// Creates the queue file for `size`; the returned closure writes `n` end markers.
pub fn create_for(size: usize, path: &str, capacity: usize) -> Box<dyn FnOnce(u32)> {
    with_item!(size, T => T::create_and_keep(path, capacity), _ => panic!("shaq: no item type of {size} bytes"))
}

//! Slot ownership (`slots.rs`): allocation and free race on the slot word only, and the
//! generation in that word defeats stale words; segment trimming takes a slot exactly like
//! an allocation (`shmq_loom_tests::TrimRace`).
#![cfg(shmq_loom)]

use loom::sync::atomic::Ordering::{AcqRel, Relaxed};
use shmq::layout::{slot_freed, slot_gen, slot_word, SlotState};
use shmq::slots;
use shmq_loom_tests::{
    assert_all_free, model, orphan_hint_reset_beside_a_raise, queue, sweep_points, TrimRace,
};
use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

/// What the model threads share besides the queue: a ghost owner per slot (set by the
/// owner right after its alloc returns, cleared right before its free; loom runs one
/// thread at a time, so these std atomics add no synchronisation to the model) and the
/// generations each slot was taken at, in the order the takes happened.
struct Ghost {
    owner: Vec<AtomicU16>,
    gens: Mutex<Vec<Vec<u64>>>,
}

const NOBODY: u16 = u16::MAX;

/// Takes a slot for `me`, checks it has no other owner and a newer generation than any
/// earlier take of it, and writes the payload bytes (loom checks that the previous
/// owner's accesses happen-before these).
fn take(q: &shmq::layout::Shared<'_>, g: &Ghost, me: u16) -> Option<(u32, u64)> {
    let (s, w) = slots::alloc(q, me, 0, |_| true)?;
    let prev = g.owner[s as usize].swap(me, SeqCst);
    assert_eq!(prev, NOBODY, "slot {s} given to {me} while {prev} owns it");
    let mut gens = g.gens.lock().unwrap();
    if let Some(&last) = gens[s as usize].last() {
        assert!(
            slot_gen(w) > last,
            "slot {s}: generation {} after {last}",
            slot_gen(w)
        );
    }
    gens[s as usize].push(slot_gen(w));
    drop(gens);
    // SAFETY: we own slot `s`; loom's UnsafeCell reports any overlap with another owner.
    q.slots[s as usize]
        .inline
        .with_mut(|p| unsafe { (*p)[0] = me as u8 });
    Some((s, w))
}

fn give_back(q: &shmq::layout::Shared<'_>, g: &Ghost, s: u32, w: u64) {
    g.owner[s as usize].store(NOBODY, SeqCst);
    assert!(slots::free(q, s, w), "freeing slot {s} that we own failed");
}

/// Neither a stale LOANED word (an ack of a generation already freed) nor a stale FREE
/// word (an alloc that read the word before a take and a free) may CAS successfully.
fn assert_stale_words_fail(q: &shmq::layout::Shared<'_>, s: u32, loaned: u64) {
    let word = &q.slots[s as usize].word;
    let stale_free = slot_word(slot_gen(loaned), SlotState::Free, shmq::layout::OWNER_NONE);
    for stale in [loaned, stale_free] {
        let now = word.load(Relaxed);
        let r = word.compare_exchange(stale, slot_freed(stale), AcqRel, Relaxed);
        assert!(
            r.is_err(),
            "slot {s}: a CAS from the stale word {stale:#x} succeeded (word was {now:#x})"
        );
    }
}

fn run(slot_count: u32, scripts: Vec<u32>) {
    model(move || {
        let hq = Arc::new(queue(1, slot_count, false));
        let g = Arc::new(Ghost {
            owner: (0..slot_count).map(|_| AtomicU16::new(NOBODY)).collect(),
            gens: Mutex::new(vec![Vec::new(); slot_count as usize]),
        });
        let handles: Vec<_> = scripts
            .iter()
            .enumerate()
            .map(|(i, &rounds)| {
                let (hq, g) = (hq.clone(), g.clone());
                loom::thread::spawn(move || {
                    let q = hq.shared();
                    let me = i as u16 + 1;
                    let mut freed: Vec<(u32, u64)> = Vec::new();
                    for _ in 0..rounds {
                        if let Some((s, w)) = take(&q, &g, me) {
                            give_back(&q, &g, s, w);
                            freed.push((s, w));
                        }
                    }
                    for (s, w) in freed {
                        assert_stale_words_fail(&q, s, w);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let q = hq.shared();
        assert_all_free(&q);
        // Each take bumped the generation by exactly one when it was freed.
        let gens = g.gens.lock().unwrap();
        for (s, rec) in q.slots.iter().enumerate() {
            let now = slot_gen(rec.word.load(Relaxed));
            assert_eq!(now, gens[s].len() as u64, "slot {s}: generation {now}");
        }
    });
}

#[test]
fn one_slot_has_one_owner_at_a_time_and_stale_words_never_cas() {
    // Thread 1 takes and frees twice (so it holds a stale word of its own while the slot
    // is at a newer generation, possibly its own again); thread 2 once.
    run(1, vec![2, 1]);
}

#[test]
fn three_threads_share_two_slots_without_double_ownership() {
    run(2, vec![1, 1, 1]);
}

#[test]
fn trimming_racing_an_allocation_never_shares_a_slot_and_a_killed_trimmer_leaks_nothing() {
    // The trimmer takes each FREE slot (`take_if_free`), writes it and frees it, while a
    // producer allocates and sends and a consumer receives; the trimmer is killed before
    // each of its steps in turn and then recovered.
    let c = TrimRace { take: true };
    let n = sweep_points("trimming racing an allocation", c.steps(), move |k| {
        c.run(k)
    });
    eprintln!("trimming racing an allocation: {n} crash points");
}

#[test]
fn a_stale_hint_reset_never_hides_an_orphan_made_meanwhile() {
    // See `orphan_hint_reset_beside_a_raise`; its negative control (no version in the
    // hint) is in negative_controls.rs.
    let n = model(orphan_hint_reset_beside_a_raise);
    eprintln!("orphan hint reset: {n} executions");
}

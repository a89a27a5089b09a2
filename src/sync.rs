//! The only door to atomics, fences, `UnsafeCell` and spin hints.
//!
//! Everything in shared memory goes through the types here, so that building with
//! `RUSTFLAGS="--cfg shmq_loom"` swaps every one of them for its [loom] counterpart and the
//! loom models in `loom-tests/` check *the production algorithms*, not a copy.
//!
//! * In normal builds each atomic is a `#[repr(transparent)]` wrapper over the std type, so
//!   it has the size and alignment the shared layout pins down, and every method inlines
//!   to the bare instruction.
//! * Under `shmq_loom` each operation first calls [`crash::step`], which counts the
//!   shared-memory steps of the current model thread and, when the model asked for it,
//!   stops that thread dead *before* the step (a simulated SIGKILL: see [`crash`]).
//!
//! Two loom-specific deviations, both documented where they bite:
//! * Loom 0.7 does not order a plain `store` against a concurrent CAS on the same word
//!   and can then show traces no hardware can produce. Words that are both stored and
//!   CASed (`pos`) use [`AtomicU64::store_cas_safe`], a swap under loom and a store
//!   otherwise.
//! * Loom treats `SeqCst` loads and stores as `AcqRel`; the eventcount relies on `SeqCst`
//!   *fences*, which loom does model.
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(shmq_loom))]
pub(crate) use std::sync::atomic::{fence, Ordering};

#[cfg(shmq_loom)]
pub(crate) use loom::sync::atomic::Ordering;

/// A sequentially consistent (or other) fence that counts as a step under loom.
#[cfg(shmq_loom)]
pub fn fence(order: Ordering) {
    crash::step();
    loom::sync::atomic::fence(order)
}

/// A process-local mutex (never placed in shared memory): `std`'s, or loom's under
/// `shmq_loom`, so that a model can have several threads of one process meet on it
/// (`wait::block_on_counted`).
#[cfg(not(shmq_loom))]
pub type LocalMutex<T> = std::sync::Mutex<T>;
/// A process-local mutex: loom's (see the normal build's doc).
#[cfg(shmq_loom)]
pub type LocalMutex<T> = loom::sync::Mutex<T>;

/// A hint that we are spinning. Under loom it yields to the scheduler, which is what
/// makes spin loops finite in a model.
#[inline]
pub fn spin_hint() {
    #[cfg(not(shmq_loom))]
    std::hint::spin_loop();
    #[cfg(shmq_loom)]
    loom::thread::yield_now();
}

macro_rules! atomic_wrapper {
    ($name:ident, $int:ty, $std:ty, $loom:ty) => {
        /// An atomic that lives in shared memory (see the module doc).
        #[repr(transparent)]
        #[derive(Debug, Default)]
        pub struct $name(#[cfg(not(shmq_loom))] $std, #[cfg(shmq_loom)] $loom);

        #[allow(dead_code, missing_docs)]
        impl $name {
            /// A new atomic holding `v`.
            #[cfg(not(shmq_loom))]
            pub const fn new(v: $int) -> Self {
                Self(<$std>::new(v))
            }
            /// A new atomic holding `v`.
            #[cfg(shmq_loom)]
            pub fn new(v: $int) -> Self {
                Self(<$loom>::new(v))
            }
            #[inline]
            pub fn load(&self, o: Ordering) -> $int {
                crash::step();
                self.0.load(o)
            }
            #[inline]
            pub fn store(&self, v: $int, o: Ordering) {
                crash::step();
                self.0.store(v, o)
            }
            /// A store to a word that other threads also CAS. A plain store in normal
            /// builds; a swap under loom, which otherwise fails to order a store against a
            /// concurrent CAS on the same word (see the module doc).
            #[inline]
            pub fn store_cas_safe(&self, v: $int, o: Ordering) {
                crash::step();
                #[cfg(not(shmq_loom))]
                self.0.store(v, o);
                #[cfg(shmq_loom)]
                {
                    let o = match o {
                        Ordering::Release => Ordering::AcqRel,
                        o => o,
                    };
                    self.0.swap(v, o);
                }
            }
            #[inline]
            pub fn swap(&self, v: $int, o: Ordering) -> $int {
                crash::step();
                self.0.swap(v, o)
            }
            #[inline]
            pub fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                crash::step();
                self.0.compare_exchange(current, new, success, failure)
            }
            #[inline]
            pub fn fetch_add(&self, v: $int, o: Ordering) -> $int {
                crash::step();
                self.0.fetch_add(v, o)
            }
            #[inline]
            pub fn fetch_or(&self, v: $int, o: Ordering) -> $int {
                crash::step();
                self.0.fetch_or(v, o)
            }
            #[inline]
            pub fn fetch_and(&self, v: $int, o: Ordering) -> $int {
                crash::step();
                self.0.fetch_and(v, o)
            }
            /// The address of the word, for the futex syscall.
            #[inline]
            pub fn as_ptr(&self) -> *const $int {
                self as *const Self as *const $int
            }
        }
    };
}

atomic_wrapper!(
    AtomicU64,
    u64,
    std::sync::atomic::AtomicU64,
    loom::sync::atomic::AtomicU64
);
atomic_wrapper!(
    AtomicU32,
    u32,
    std::sync::atomic::AtomicU32,
    loom::sync::atomic::AtomicU32
);

/// A cell for bytes that are handed from one owner to the next by the slot protocol
/// (inline payloads). Under loom it is loom's `UnsafeCell`, so a read that races with a
/// write (for instance a stale consumer reading a slot that is being rewritten) fails the
/// model.
#[derive(Debug)]
#[repr(transparent)]
pub struct UnsafeCell<T>(
    #[cfg(not(shmq_loom))] std::cell::UnsafeCell<T>,
    #[cfg(shmq_loom)] loom::cell::UnsafeCell<T>,
);

#[allow(dead_code)]
impl<T> UnsafeCell<T> {
    /// A new cell holding `v`.
    pub fn new(v: T) -> Self {
        #[cfg(not(shmq_loom))]
        return Self(std::cell::UnsafeCell::new(v));
        #[cfg(shmq_loom)]
        return Self(loom::cell::UnsafeCell::new(v));
    }

    /// Runs `f` with a shared pointer to the contents.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        crash::step();
        #[cfg(not(shmq_loom))]
        return f(self.0.get());
        #[cfg(shmq_loom)]
        return self.0.with(f);
    }

    /// Runs `f` with a mutable pointer to the contents.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        crash::step();
        #[cfg(not(shmq_loom))]
        return f(self.0.get());
        #[cfg(shmq_loom)]
        return self.0.with_mut(f);
    }
}

/// Crash injection for the loom models.
///
/// A model marks one thread as the victim with [`crash::arm`]`(k)`: that thread then
/// panics with [`crash::Killed`] just *before* its `k`-th shared-memory step (`k = 0`: before
/// the first), which the model catches at the top of the thread. Everything the thread did
/// stays as it was, exactly as after a SIGKILL: no destructor of ours touches shared
/// memory (the pure algorithms own no guards). Outside loom, every function here compiles
/// to nothing.
pub mod crash {
    #[cfg(shmq_loom)]
    use std::cell::Cell;

    /// The panic payload of a simulated kill.
    #[derive(Debug)]
    pub struct Killed;

    // Per *model* thread: loom runs all threads of a model on one OS thread, so a std
    // thread-local would be shared by all of them.
    #[cfg(shmq_loom)]
    loom::thread_local! {
        // Steps left before the kill; `u64::MAX` = not a victim.
        static LEFT: Cell<u64> = Cell::new(u64::MAX);
        static TAKEN: Cell<u64> = Cell::new(0);
    }

    /// Counts one shared-memory step of the current thread; kills it if it is armed and
    /// out of steps.
    #[inline(always)]
    pub fn step() {
        #[cfg(shmq_loom)]
        {
            TAKEN.with(|t| t.set(t.get() + 1));
            // Decide inside `with`, panic outside it (never unwind through loom's
            // thread-local access).
            let kill = LEFT.with(|l| match l.get() {
                u64::MAX => false,
                0 => {
                    l.set(u64::MAX);
                    true
                }
                n => {
                    l.set(n - 1);
                    false
                }
            });
            if kill {
                std::panic::panic_any(Killed);
            }
        }
    }

    /// Makes the current thread die before its `k`-th shared-memory step from now.
    pub fn arm(k: u64) {
        #[cfg(shmq_loom)]
        {
            LEFT.with(|l| l.set(k));
            TAKEN.with(|t| t.set(0));
        }
        #[cfg(not(shmq_loom))]
        let _ = k;
    }

    /// Disarms the current thread; returns how many steps it took since [`arm`].
    pub fn disarm() -> u64 {
        #[cfg(shmq_loom)]
        {
            LEFT.with(|l| l.set(u64::MAX));
            TAKEN.with(|t| t.get())
        }
        #[cfg(not(shmq_loom))]
        0
    }
}

/// Negative controls for the loom models: each [`Mutation`] switches off one rule of the
/// protocol so a model can show that the rule is needed (the model must then fail).
/// Outside loom, [`mutation::on`] is the constant `false` and every check folds away.
pub mod mutation {
    /// A rule that a model may switch off.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Mutation {
        /// ring.rs R2 and the Full check ignore `pos` (the LOANED state alone decides).
        NoPosCheck = 1,
        /// slots.rs K1: freeing a slot leaves its old `pos`.
        NoPosReset = 2,
        /// ring.rs R2: read `pos` before the slot word.
        PosBeforeWord = 4,
        /// Nobody clears a stale cell or advances `head` past it (no helping).
        NoHelping = 8,
        /// slots.rs K1 as it was: `pos` reset by a plain store, whether or not the slot is
        /// still the caller's (implies `NoPosRecheck`).
        PosStore = 16,
        /// slots.rs `reset_pos`: no re-read of the slot word after reading `pos` (the old
        /// recovery V2b), so a late second runner resets a newer owner's `pos`.
        NoPosRecheck = 32,
        /// slots.rs `give_up`: no delivery limit (a message is redelivered forever).
        NoDeliveryLimit = 64,
        /// slots.rs `discard_uncommitted` (recovery V1b) resets `pos` before the free, as
        /// it did before: a second runner then wipes the `pos` of a producer that
        /// published the reused slot at the very position the dead one left open.
        ResetUncommittedPos = 128,
        /// slots.rs: the `orphans` hint without its version (raises and resets leave it,
        /// claimers decrement whatever they find), as before issue 12: a reset between a
        /// claim and its decrement, then an orphaning, and the decrement hides the orphan.
        HintWithoutVersion = 256,
    }

    #[cfg(shmq_loom)]
    static ON: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// Switches `m` on (process-wide; set before `loom::model`, reset after).
    pub fn set(m: Option<Mutation>) {
        #[cfg(shmq_loom)]
        ON.store(
            m.map_or(0, |m| m as u32),
            std::sync::atomic::Ordering::SeqCst,
        );
        #[cfg(not(shmq_loom))]
        let _ = m;
    }

    /// Whether `m` is switched on.
    #[inline(always)]
    pub fn on(m: Mutation) -> bool {
        #[cfg(shmq_loom)]
        return ON.load(std::sync::atomic::Ordering::Relaxed) & m as u32 != 0;
        #[cfg(not(shmq_loom))]
        {
            let _ = m;
            false
        }
    }
}

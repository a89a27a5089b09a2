//! shmq (work in progress)
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

macro_rules! model_visible {
    ($($(#[$m:meta])* mod $name:ident;)*) => {$(
        $(#[$m])*
        #[cfg(shmq_loom)]
        pub mod $name;
        $(#[$m])*
        #[cfg(not(shmq_loom))]
        #[allow(dead_code)]
        mod $name;
    )*};
}

model_visible! {
    /// Atomics and cells (std or loom).
    mod sync;
    /// Shared layout.
    mod layout;
    /// The ring.
    mod ring;
    /// Payload slot ownership.
    mod slots;
    /// Participants and lease.
    mod roster;
    /// Recovery.
    mod recovery;
    /// Blocking.
    mod wait;
}

//! Loom model tests for shmq; see tests/.

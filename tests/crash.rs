//! placeholder until the crash tests land

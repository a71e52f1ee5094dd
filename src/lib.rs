//! peerstash: a peer-to-peer backup service for a local area network. Files are cut into
//! 64000-byte chunks and replicated on other peers over UDP multicast (SPEC.md).
//!
//! Layers look down only: `protocol` (pure) ← `engine` (state machines) ← `net`, `store` ←
//! `daemon` (the running peer) ← `service` (watched folders, queue,
//! reload, systemd). `control` is the language of the control socket; `fsx` opens files without
//! following symlinks, for a daemon that users may race. `shutdown` (stopping every task on
//! SIGTERM) and `workers` (what each background worker is doing) serve every layer. `cluster`
//! runs local clusters of real peers on 127.0.0.1 for the demo, the tests and benchmarks.
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod fsx;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod workers;

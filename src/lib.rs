//! peerstash: a peer-to-peer backup service for a local area network. Files are cut into
//! 64000-byte chunks and replicated on other peers over UDP multicast (SPEC.md).
//!
//! Layers look down only (`tests/it/layers.rs` holds the drawing and fails on an arrow back up
//! or a circle), from the bottom: `protocol`, `fsx`, `shutdown`, `clock` (pure, or the one wall
//! clock); `control` (the language of the control socket and its client), `config`, `engine`
//! (the protocol as sans-IO state machines), `net`, `workers`; `store` (the catalog and the
//! chunk files); `daemon` (the running peer: driver, disk, receive loops); `ops` (the use cases
//! that requests and workers share); `server` (the control socket, one file per request);
//! `service` (wiring, workers, watched folders, metrics, systemd, the daemon's one entry);
//! `cli` and `cluster` (local clusters of real peers for the demo, the tests and benchmarks);
//! `demo`; the binaries.
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod fsx;
pub mod history;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod workers;

//! The process tests: real `peerstashd` daemons on loopback, driven with the real `peerstash`
//! command line, one module per subject. One test binary for all of them, so that the library is
//! linked once rather than once per file (`.ci/run` runs it with several test threads: the tests
//! mostly wait on the protocol's timers). Each test's cluster has its own folder, multicast group
//! and ports (`common`); nothing in here changes the test process's own state (environment,
//! current folder, umask): what a daemon needs is given to its own process.

mod common;

mod admin_accidents;
mod admin_mistakes;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod demo;
mod durability_holders;
mod durability_keys;
mod durability_repair;
mod durability_restore;
mod durability_snapshots;
mod encryption;
mod faults;
mod flood;
mod full_disk;
mod history;
mod hostile_lan;
mod lan_key;
mod layers;
mod local_attacks;
mod metrics;
mod netns;
mod odd_names;
mod operator;
mod pacing;
mod peers;
mod permissions;
mod protocol2;
mod receive_buffer;
mod recover;
mod restore_all;
mod restore_attacks;
mod restore_details;
mod restore_home;
mod scrub;
mod service;
mod shutdown;
mod socket_attacks;
mod status_codes;
mod suggest_id;
mod walk_attacks;
mod watched_correctness;

//! Issue 5: hundreds of concurrent PUTCHUNKs from several senders never push a peer's hosted
//! bytes above its quota, not even for a moment.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[test]
fn a_putchunk_flood_never_exceeds_the_quota() {
    let c = Arc::new(Cluster::start(&["1MB", "1MB"]));
    let quota = 1_000_000u64;
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    // Watch the disk itself while the flood goes on.
    let watcher = {
        let (c, done, peak) = (c.clone(), done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for i in 0..2 {
                    let bytes: u64 = chunks_on_disk(c.peer(i)).iter().map(|(_, _, n)| n).sum();
                    peak.fetch_max(bytes, Ordering::Relaxed);
                }
            }
        })
    };
    let senders: Vec<_> = (0..5u32)
        .map(|s| {
            let c = c.clone();
            std::thread::spawn(move || {
                for n in 0..80u32 {
                    let id = format!("{:064x}", (u64::from(s) << 32) | u64::from(n));
                    let mut d =
                        format!("1.0 PUTCHUNK {} {id} {} 1\r\n\r\n", 100 + s, n % 7).into_bytes();
                    d.extend(vec![s as u8; 64_000]);
                    c.send_raw(c.mdb, &d);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        peak.load(Ordering::Relaxed) <= quota,
        "peak {} on disk",
        peak.load(Ordering::Relaxed)
    );
    for i in 0..2 {
        let s = c.peer(i).state();
        let used = s.used_bytes;
        assert!(used <= quota, "peer {}: {used} bytes hosted", i + 1);
        assert!(used >= quota - 64_000, "the quota was used: {used}");
        let sum: u64 = s.stored.iter().map(|h| charged(c.peer(i), h.size)).sum();
        assert_eq!(sum, used);
    }
}

//! The one wall clock: unix time as the catalog's timestamps, the queue's due times and the LAN
//! key's freshness window read it. Protocol timing never reads it (the engine is given
//! `Instant`s).

/// Unix ms by the system clock.
pub fn unix_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ms.saturating_add(test_offset_s().saturating_mul(1000))
}

/// Unix seconds by the system clock.
pub fn unix_s() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    s.saturating_add_signed(test_offset_s())
}

/// Tests only: in a debug build, `PEERSTASH_CLOCK_OFFSET_S` moves this process's wall clock by
/// that many seconds, as a clock set ahead or back would (tests/it/durability_snapshots.rs). A
/// release build never reads it.
pub fn test_offset_s() -> i64 {
    #[cfg(debug_assertions)]
    {
        static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *OFFSET.get_or_init(|| {
            std::env::var("PEERSTASH_CLOCK_OFFSET_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }
    #[cfg(not(debug_assertions))]
    0
}

/// `ms` (unix) as "2026-12-07 21:44" (UTC): when a version was made, as `versions` shows it
/// and `--at` reads it back.
pub fn utc(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    format!(
        "{} {:02}:{:02}",
        crate::protocol::seal::Slot::day_text(s.div_euclid(86_400).clamp(0, u32::MAX as i64) as u32),
        s.rem_euclid(86_400) / 3600,
        s.rem_euclid(3600) / 60
    )
}

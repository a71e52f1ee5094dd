//! Exit statuses of SPEC §5; 5 to 7 are `status`'s alone (a monitoring check reads them).

pub const OK: i32 = 0;
pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const BELOW_RD: i32 = 3;
pub const UNREACHABLE: i32 = 4;
/// `status`: a watched folder is unavailable (missing, or its disk not mounted).
pub const FOLDER_UNAVAILABLE: i32 = 5;
/// `status`: changes are queued, not yet backed up (also "nothing backed up yet").
pub const QUEUE_NOT_DRAINED: i32 = 6;
/// `status`: files are backed up and no catalog snapshot is at its RD.
pub const NO_SNAPSHOT_AT_RD: i32 = 7;
/// `status`: a watched folder's history is held: too many of its files changed at once
/// (ransomware?); nothing there is pruned until `peerstash history resume DIR`.
pub const HISTORY_HELD: i32 = 8;

/// Whether `code` is one `status` ends with when it could tell the state: its report
/// is shown, not an error.
pub fn is_status(code: i32) -> bool {
    matches!(
        code,
        OK | BELOW_RD | FOLDER_UNAVAILABLE | QUEUE_NOT_DRAINED | NO_SNAPSHOT_AT_RD | HISTORY_HELD
    )
}

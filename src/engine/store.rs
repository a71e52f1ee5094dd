//! The holder side of a PUTCHUNK: whether this peer may store a chunk (admission) and what the
//! attempt came to. Pure functions over the chunk's role here, so the daemon's disk work and the
//! simulation take the same decisions.

/// What became of a PUTCHUNK the driver was asked to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// A chunk of our own file, no room for it, or an error: not stored.
    Refused,
    /// Held already (the first STORED may have been lost).
    Held,
    /// Written to disk and recorded now.
    Written,
}

/// A chunk's place in this peer's catalog, as admission and REMOVED handling need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Own {
        desired_rd: u8,
    },
    /// `desired_rd` is `UNKNOWN_RD` for a chunk re-indexed by `--rebuild-catalog` whose
    /// home's RD was not heard again yet.
    Hosted {
        desired_rd: u8,
    },
    /// A chunk of one of our own files that we forgot (a version deleted): never hosted, and
    /// otherwise treated as unknown.
    Forgotten,
}

/// The desired RD of a hosted chunk whose PUTCHUNK was lost with the catalog: not 1 (a REMOVED
/// would then never be made up for), not a guess. A REMOVED of such a chunk is made up for up
/// to the holders counted before it (`Peer::removed`); the next PUTCHUNK tells the real one.
pub const UNKNOWN_RD: u8 = 0;

/// Whether a PUTCHUNK may be stored here, decided on the chunk's role before any disk work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Not stored: a chunk of our own file (even of a version we deleted: a copy here would
    /// count as a holder while it dies with this disk), or only asked whether it is held.
    Refuse,
    /// Held already (one copy at most): answered as stored. `learn_rd`: its desired RD was lost
    /// with the catalog (`UNKNOWN_RD`), and the PUTCHUNK tells it: record it.
    Held { learn_rd: bool },
    /// Unknown here and to be written: reserve its bytes, write its file, record its row.
    Write,
}

/// Own file or forgotten -> `Refuse`; hosted -> `Held` (`learn_rd` when its desired RD is
/// unknown); unknown -> `Write` if `write`, else `Refuse` (2.0 may ask only whether it is held:
/// enough peers stored it already).
pub fn admit(role: Role, write: bool) -> Admit {
    match role {
        Role::Own { .. } | Role::Forgotten => Admit::Refuse,
        Role::Hosted { desired_rd } => Admit::Held {
            learn_rd: desired_rd == UNKNOWN_RD,
        },
        Role::Unknown if write => Admit::Write,
        Role::Unknown => Admit::Refuse,
    }
}

/// The outcome of a PUTCHUNK that was to be written: `Written` only if the chunk was within the
/// quota (`room`), its file was written and synced (`written`), and its catalog row recorded
/// (`recorded`); else `Refused`, so a STORED never goes out for a chunk that is not on disk
/// and in the catalog.
pub fn after_write(room: bool, written: bool, recorded: bool) -> Put {
    if room && written && recorded {
        Put::Written
    } else {
        Put::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_of_our_own_file_is_never_stored_even_once_forgotten() {
        for write in [true, false] {
            assert_eq!(admit(Role::Own { desired_rd: 2 }, write), Admit::Refuse);
            assert_eq!(admit(Role::Forgotten, write), Admit::Refuse);
        }
    }

    #[test]
    fn a_hosted_chunk_is_held_not_written_again() {
        for write in [true, false] {
            let held = admit(Role::Hosted { desired_rd: 3 }, write);
            assert_eq!(held, Admit::Held { learn_rd: false });
        }
    }

    #[test]
    fn a_hosted_chunk_whose_rd_was_lost_learns_it() {
        let role = Role::Hosted {
            desired_rd: UNKNOWN_RD,
        };
        assert_eq!(admit(role, true), Admit::Held { learn_rd: true });
        assert_eq!(admit(role, false), Admit::Held { learn_rd: true });
    }

    #[test]
    fn an_unknown_chunk_is_written_only_when_asked_to_write() {
        assert_eq!(admit(Role::Unknown, true), Admit::Write);
        assert_eq!(admit(Role::Unknown, false), Admit::Refuse);
    }

    #[test]
    fn written_only_within_the_quota_on_disk_and_recorded() {
        assert_eq!(after_write(true, true, true), Put::Written);
        for (room, written, recorded) in [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (true, false, true),
            (false, true, true),
        ] {
            assert_eq!(after_write(room, written, recorded), Put::Refused);
        }
    }
}

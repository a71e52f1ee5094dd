//! A backed-up file's health, from its chunks' perceived RD against its desired RD: what `state`
//! reports per file. Pure: the catalog supplies the numbers.

/// How safe one backed-up version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every chunk has at least its desired RD.
    Healthy,
    /// `below` chunks have fewer holders than desired, none is at risk.
    Degraded { below: u32 },
    /// `chunks` chunks have no holder, or a single one while more were desired: one more lost
    /// peer (or none) and they are gone.
    AtRisk { chunks: u32 },
}

impl Health {
    /// The word `state` shows: "healthy", "degraded" or "at risk".
    pub fn word(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded { .. } => "degraded",
            Health::AtRisk { .. } => "at risk",
        }
    }
}

/// The health of a version whose chunks have the perceived RDs `perceived`, all desired at
/// `desired_rd`. At risk takes precedence over degraded. A version without any chunk recorded
/// yet has nothing below its RD (every version gets at least one chunk, the empty file too).
pub fn health(desired_rd: u8, perceived: impl Iterator<Item = u32>) -> Health {
    let desired = u32::from(desired_rd);
    let (mut below, mut at_risk) = (0u32, 0u32);
    for rd in perceived {
        below += u32::from(rd < desired);
        // At RD 1 a single holder is all that was asked for; no holder is at risk at any RD.
        // (`Catalog::newest_health` counts the same in SQL.)
        at_risk += u32::from(rd == 0 || (rd == 1 && desired >= 2));
    }
    from_counts(below, at_risk)
}

/// The health of a version with `below` chunks below their desired RD, `at_risk` of them at
/// risk (as `health` counts them).
pub fn from_counts(below: u32, at_risk: u32) -> Health {
    match (at_risk, below) {
        (0, 0) => Health::Healthy,
        (0, below) => Health::Degraded { below },
        (chunks, _) => Health::AtRisk { chunks },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(desired: u8, rds: &[u32]) -> Health {
        health(desired, rds.iter().copied())
    }

    #[test]
    fn at_its_rd_a_file_is_healthy() {
        assert_eq!(of(2, &[2, 3, 2]), Health::Healthy);
        assert_eq!(of(1, &[1, 1]), Health::Healthy);
        assert_eq!(of(3, &[]), Health::Healthy);
    }

    #[test]
    fn below_its_rd_a_file_is_degraded() {
        assert_eq!(of(3, &[3, 2, 2, 4]), Health::Degraded { below: 2 });
        assert_eq!(of(2, &[2, 2, 3]).word(), "healthy");
        assert_eq!(of(3, &[2]).word(), "degraded");
    }

    #[test]
    fn one_holder_or_none_is_at_risk_and_takes_precedence() {
        assert_eq!(of(2, &[2, 1, 0, 2]), Health::AtRisk { chunks: 2 });
        assert_eq!(of(3, &[2, 2, 1]), Health::AtRisk { chunks: 1 });
        // At RD 1 one holder is what was asked; none is at risk.
        assert_eq!(of(1, &[1, 0, 1]), Health::AtRisk { chunks: 1 });
        assert_eq!(of(1, &[1, 1]), Health::Healthy);
        assert_eq!(of(2, &[0]).word(), "at risk");
    }
}

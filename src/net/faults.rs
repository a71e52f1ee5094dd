//! Fault injection for tests: `PEERSTASH_FAULTS="drop=0.2,dup=0.1,delay_ms=0..50,seed=7"` makes a
//! peer drop, duplicate and delay the datagrams it sends and receives, reproducibly from the
//! seed; `rcvbuf_max=N` gives its channels receive buffers of at most N bytes, as a lower
//! `net.core.rmem_max` would (the machine's own cannot be changed by a test). Off unless the
//! variable is set.

use std::sync::Mutex;
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

pub const ENV: &str = "PEERSTASH_FAULTS";

#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    pub drop: f64,
    pub dup: f64,
    pub delay_ms: (u64, u64),
    pub seed: u64,
    /// The most receive buffer the channels get, in bytes (None: what the kernel grants).
    pub rcvbuf_max: Option<usize>,
}

/// What to do with one datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fate {
    /// How many copies go through (0 = dropped, 2 = duplicated), each after its delay.
    pub delays: Vec<Duration>,
}

pub struct Faults {
    spec: FaultSpec,
    rng: Mutex<StdRng>,
}

impl FaultSpec {
    pub fn parse(text: &str) -> Result<FaultSpec, String> {
        let mut spec = FaultSpec {
            drop: 0.0,
            dup: 0.0,
            delay_ms: (0, 0),
            seed: 0,
            rcvbuf_max: None,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let prob = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("{key}={v}: a probability between 0 and 1"))
            };
            match key {
                "drop" => spec.drop = prob(value)?,
                "dup" => spec.dup = prob(value)?,
                "delay_ms" => {
                    let (lo, hi) = value.split_once("..").unwrap_or((value, value));
                    let n = |s: &str| {
                        s.parse::<u64>()
                            .map_err(|_| format!("delay_ms={value}: expected MIN..MAX in ms"))
                    };
                    spec.delay_ms = (n(lo)?, n(hi)?);
                    if spec.delay_ms.0 > spec.delay_ms.1 {
                        return Err(format!("delay_ms={value}: MIN is above MAX"));
                    }
                }
                "seed" => {
                    spec.seed = value
                        .parse()
                        .map_err(|_| format!("seed={value}: expected an integer"))?
                }
                "rcvbuf_max" => {
                    spec.rcvbuf_max = Some(
                        value
                            .parse()
                            .map_err(|_| format!("rcvbuf_max={value}: expected bytes"))?,
                    )
                }
                _ => {
                    return Err(format!(
                        "unknown fault {key:?} (drop, dup, delay_ms, seed, rcvbuf_max)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

impl Faults {
    /// Reads `PEERSTASH_FAULTS`; None when unset or empty.
    pub fn from_env() -> Result<Option<Faults>, String> {
        match std::env::var(ENV) {
            Ok(text) if !text.trim().is_empty() => {
                let spec = FaultSpec::parse(&text).map_err(|e| format!("{ENV}: {e}"))?;
                tracing::warn!("fault injection is on: {text}");
                Ok(Some(Faults::new(spec)))
            }
            _ => Ok(None),
        }
    }

    pub fn new(spec: FaultSpec) -> Faults {
        let rng = StdRng::seed_from_u64(spec.seed);
        Faults {
            spec,
            rng: Mutex::new(rng),
        }
    }

    pub fn rcvbuf_max(&self) -> Option<usize> {
        self.spec.rcvbuf_max
    }

    pub fn fate(&self) -> Fate {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.gen_bool(self.spec.drop) {
            return Fate { delays: Vec::new() };
        }
        let copies = if rng.gen_bool(self.spec.dup) { 2 } else { 1 };
        let (lo, hi) = self.spec.delay_ms;
        let delays = (0..copies)
            .map(|_| Duration::from_millis(rng.gen_range(lo..=hi)))
            .collect();
        Fate { delays }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let s = FaultSpec::parse("drop=0.2,dup=0.1,delay_ms=0..50,seed=7").unwrap();
        assert_eq!(
            s,
            FaultSpec {
                drop: 0.2,
                dup: 0.1,
                delay_ms: (0, 50),
                seed: 7,
                rcvbuf_max: None,
            }
        );
        let s = FaultSpec::parse("rcvbuf_max=212992").unwrap();
        assert_eq!((s.rcvbuf_max, s.drop, s.dup), (Some(212_992), 0.0, 0.0));
        assert!(FaultSpec::parse("rcvbuf_max=lots").is_err());
        assert!(FaultSpec::parse("drop=2").is_err());
        assert!(FaultSpec::parse("lose=0.1").is_err());
        assert!(FaultSpec::parse("delay_ms=9..1").is_err());
    }

    #[test]
    fn fates_follow_the_rates_and_the_seed() {
        let spec = FaultSpec::parse("drop=0.2,dup=0.1,delay_ms=0..50,seed=7").unwrap();
        let (a, b) = (Faults::new(spec.clone()), Faults::new(spec));
        let fates: Vec<Fate> = (0..10_000).map(|_| a.fate()).collect();
        assert!(
            fates
                .iter()
                .zip((0..).map(|_| b.fate()))
                .all(|(x, y)| *x == y),
            "same seed, same fates"
        );
        let dropped = fates.iter().filter(|f| f.delays.is_empty()).count();
        let duplicated = fates.iter().filter(|f| f.delays.len() == 2).count();
        assert!((1800..2200).contains(&dropped), "{dropped}");
        assert!((600..1000).contains(&duplicated), "{duplicated}");
        assert!(fates
            .iter()
            .flat_map(|f| &f.delays)
            .all(|d| *d <= Duration::from_millis(50)));
    }
}

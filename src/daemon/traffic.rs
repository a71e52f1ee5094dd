//! The channels' traffic over the last hour, sampled for the dashboard's plots.

/// Samples of traffic kept for the plots: one per status tick (10 s), an hour's worth.
pub(crate) const HISTORY: usize = 360;

/// Total bytes received and sent on the channels, sampled (unix ms, in, out).
#[derive(Default)]
pub struct History(pub(crate) std::collections::VecDeque<(i64, u64, u64)>);

impl History {
    pub(crate) fn push(&mut self, sample: (i64, u64, u64)) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(sample);
    }

    /// Bytes per second in and out between consecutive samples: (seconds before `now`, in,
    /// out).
    pub(crate) fn rates(&self, now_ms: i64) -> Vec<(f64, f64, f64)> {
        let s: Vec<_> = self.0.iter().collect();
        s.windows(2)
            .filter_map(|w| {
                let ((t0, i0, o0), (t1, i1, o1)) = (w[0], w[1]);
                let dt = (t1 - t0) as f64 / 1000.0;
                (dt > 0.0).then(|| {
                    (
                        (now_ms - t1) as f64 / 1000.0,
                        i1.saturating_sub(*i0) as f64 / dt,
                        o1.saturating_sub(*o0) as f64 / dt,
                    )
                })
            })
            .collect()
    }
}

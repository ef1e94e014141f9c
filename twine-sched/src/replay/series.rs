//! Quantities that change only at instants, integrated over time: their average over
//! the whole replay and over equal windows (for plots).

/// One window of both runs, each quantity averaged over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Sample {
    /// Where the window starts, in seconds.
    pub start_s: f64,
    /// Where it ends, in seconds.
    pub end_s: f64,
    /// Hosts in use, with rebalancing.
    pub hosts_in_use: f64,
    /// Hosts in use, without.
    pub hosts_in_use_baseline: f64,
    /// The lower bound of the pods running (with rebalancing).
    pub lower_bound: f64,
    /// Utilisation of the hosts in use in the bottleneck dimension, with rebalancing.
    pub utilisation: f64,
    /// The same without.
    pub utilisation_baseline: f64,
    /// Pending pods, with rebalancing.
    pub pending: f64,
}

/// A piecewise-constant quantity integrated over `[0, duration]`, in total and per
/// window.
#[derive(Debug, Clone)]
pub(super) struct Track {
    total: f64,
    windows: Vec<f64>,
    window_ms: u64,
}

impl Track {
    /// A track over `duration_ms` cut in windows of `window_ms` (at least 1).
    pub(super) fn new(duration_ms: u64, window_ms: u64) -> Track {
        let window_ms = window_ms.max(1);
        let n = usize::try_from(duration_ms.div_ceil(window_ms)).unwrap_or(0);
        Track {
            total: 0.0,
            windows: vec![0.0; n],
            window_ms,
        }
    }

    /// The quantity held `value` over `[from_ms, to_ms)`.
    pub(super) fn add(&mut self, from_ms: u64, to_ms: u64, value: f64) {
        if to_ms <= from_ms || value == 0.0 {
            return;
        }
        self.total += value * ms(to_ms - from_ms);
        let mut t = from_ms;
        while t < to_ms {
            let w = t / self.window_ms;
            let end = ((w + 1) * self.window_ms).min(to_ms);
            if let Some(slot) = usize::try_from(w)
                .ok()
                .and_then(|w| self.windows.get_mut(w))
            {
                *slot += value * ms(end - t);
            }
            t = end;
        }
    }

    /// The integral over everything added, in value·milliseconds.
    pub(super) fn total(&self) -> f64 {
        self.total
    }

    /// The average of window `w` over its length within `[0, duration_ms]`.
    pub(super) fn window_avg(&self, w: usize, duration_ms: u64) -> f64 {
        let (start, end) = self.window(w, duration_ms);
        let len = end.saturating_sub(start);
        if len == 0 {
            return 0.0;
        }
        self.windows.get(w).copied().unwrap_or(0.0) / ms(len)
    }

    /// Window `w`'s bounds in milliseconds, cut at `duration_ms`.
    pub(super) fn window(&self, w: usize, duration_ms: u64) -> (u64, u64) {
        let w = w as u64;
        let start = w * self.window_ms;
        (start, ((w + 1) * self.window_ms).min(duration_ms))
    }

    /// Number of windows.
    pub(super) fn windows(&self) -> usize {
        self.windows.len()
    }
}

#[allow(clippy::cast_precision_loss)] // milliseconds below 2^53 (285,000 years)
pub(super) fn ms(x: u64) -> f64 {
    x as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrals_split_over_windows() {
        let mut t = Track::new(2_500, 1_000);
        assert_eq!(t.windows(), 3);
        t.add(0, 500, 2.0);
        t.add(500, 2_500, 4.0);
        assert_eq!(t.total(), 2.0 * 500.0 + 4.0 * 2_000.0);
        assert_eq!(t.window_avg(0, 2_500), 3.0);
        assert_eq!(t.window_avg(1, 2_500), 4.0);
        assert_eq!(t.window_avg(2, 2_500), 4.0);
        assert_eq!(t.window(2, 2_500), (2_000, 2_500));
    }
}

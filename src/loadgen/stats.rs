//! Latency percentiles (nearest rank) of one run.

use std::time::Duration;

/// p50, p90 and p99 of a run's latencies, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// The nearest-rank percentiles of `micros` (sorted here); zeros when empty.
pub fn percentiles(micros: &mut [u32]) -> Percentiles {
    if micros.is_empty() {
        return Percentiles::default();
    }
    micros.sort_unstable();
    let at = |p: f64| {
        let rank = (p * micros.len() as f64).ceil() as usize;
        f64::from(micros[rank.clamp(1, micros.len()) - 1]) / 1000.0
    };
    Percentiles {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
    }
}

/// A latency in whole microseconds (saturating).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50_ms, p.p90_ms, p.p99_ms), (50.0, 90.0, 99.0));
        let mut one = vec![2500];
        assert_eq!(percentiles(&mut one).p99_ms, 2.5);
        assert_eq!(percentiles(&mut []), Percentiles::default());
    }
}

//! Small statistics and formatting helpers shared by the sections: medians, the median's
//! 95 % confidence interval, and number formatting.

/// The median of `values` (the mean of the two middle values for an even count); NaN for
/// none, so that a missing figure shows up as such in the report and in the final check.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// How wide a 95 % interval may be, either side of its median, for the figure to decide
/// anything: wider, and the report says the machine was too noisy.
pub const DECISIVE_HALF_WIDTH: f64 = 0.05;

/// A median with its 95 % confidence interval, from `n` samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

impl Estimate {
    /// Nothing measured: NaN throughout, so it shows up as a missing figure.
    pub const MISSING: Estimate = Estimate {
        median: f64::NAN,
        low: f64::NAN,
        high: f64::NAN,
        n: 0,
    };

    /// The median of `samples` and its 95 % confidence interval by order statistics: the
    /// k-th smallest and k-th largest sample, with k the largest rank for which a
    /// Binomial(n, ½) count falls below k with probability at most 2.5 % (the number of
    /// samples under the true median is Binomial(n, ½) whatever their distribution, so
    /// the interval holds it with probability at least 95 %). Needs 6 samples; with fewer
    /// the bounds are NaN. NaN samples are left out.
    pub fn of(samples: &[f64]) -> Estimate {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = median(&sorted);
        match interval_rank(n) {
            Some(k) => Estimate {
                median,
                low: sorted[k - 1],
                high: sorted[n - k],
                n,
            },
            None => Estimate {
                median,
                low: f64::NAN,
                high: f64::NAN,
                n,
            },
        }
    }

    /// [`Estimate::of`] `samples` that came from `sources` taken in turn (sample i from
    /// source i % `sources`), the interval widened where needed to take in a 95 % interval
    /// for the sources themselves. The benchmark's sources are separately loaded instances of
    /// one program, which differ by a few percent per packet: the rounds of one run, all on
    /// the same few instances, cannot show that by themselves. The sources' interval, from
    /// their own medians: with 6 or more, the smallest and the largest (order statistics, as
    /// [`Estimate::of`]); with 2 to 5, too few for that, their mean ± Student's t times its
    /// standard error.
    pub fn of_rotating(samples: &[f64], sources: usize) -> Estimate {
        let mut estimate = Estimate::of(samples);
        let medians: Vec<f64> = (0..sources)
            .map(|source| {
                let own: Vec<f64> = samples
                    .iter()
                    .skip(source)
                    .step_by(sources)
                    .copied()
                    .collect();
                median(&own)
            })
            .filter(|m| m.is_finite())
            .collect();
        let (low, high) = match medians.len() {
            0 | 1 => return estimate,
            k if k >= 6 => range(&medians),
            k => {
                let mean = medians.iter().sum::<f64>() / k as f64;
                let variance =
                    medians.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
                // Student's t, two-sided 95 %, for k - 1 = 1 to 4 degrees of freedom.
                let t = [12.706, 4.303, 3.182, 2.776][k - 2];
                let half = t * (variance / k as f64).sqrt();
                (mean - half, mean + half)
            }
        };
        estimate.low = estimate.low.min(low);
        estimate.high = estimate.high.max(high);
        estimate
    }

    /// The interval's larger distance from the median, as a fraction of the median (0.03
    /// for ±3 %); NaN without an interval.
    pub fn half_width(&self) -> f64 {
        (self.high - self.median).max(self.median - self.low) / self.median
    }

    /// Whether the interval is within ±[`DECISIVE_HALF_WIDTH`] of the median.
    pub fn decisive(&self) -> bool {
        self.half_width() <= DECISIVE_HALF_WIDTH
    }

    /// Where the figure stands against an upper limit: below it with 95 % confidence
    /// (`Some(true)`), above it (`Some(false)`), or the interval straddles it (`None`).
    pub fn at_most(&self, limit: f64) -> Option<bool> {
        if self.high <= limit {
            Some(true)
        } else if self.low > limit {
            Some(false)
        } else {
            None
        }
    }

    /// [`Estimate::at_most`] for a lower limit.
    pub fn at_least(&self, limit: f64) -> Option<bool> {
        if self.low >= limit {
            Some(true)
        } else if self.high < limit {
            Some(false)
        } else {
            None
        }
    }

    /// `38.2 ns [37.9–38.6]`-like text: the median and its interval with `format`.
    pub fn show(&self, format: impl Fn(f64) -> String) -> String {
        if self.low.is_finite() && self.high.is_finite() {
            format!(
                "{} [{}–{}]",
                format(self.median),
                format(self.low),
                format(self.high)
            )
        } else {
            format!("{} [no interval]", format(self.median))
        }
    }

    /// `±1.2 %`, and "too noisy" past [`DECISIVE_HALF_WIDTH`].
    pub fn show_half_width(&self) -> String {
        let half = self.half_width();
        if !half.is_finite() {
            "no interval".to_owned()
        } else if self.decisive() {
            format!("±{:.1} %", half * 100.0)
        } else {
            format!("±{:.1} % (too noisy)", half * 100.0)
        }
    }
}

/// The rank k (1-based) of the 95 % interval's lower bound among `n` sorted samples, or
/// `None` when `n` is too small for any (fewer than 6).
fn interval_rank(n: usize) -> Option<usize> {
    // P(Binomial(n, ½) ≤ j), summed in log space (½^n underflows past n = 1074).
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut below = 0.0; // P(count ≤ j - 1)
    let mut rank = None;
    for j in 0..n {
        let at_most_j = below + (ln_choose + ln_half_n).exp();
        if at_most_j > 0.025 {
            break;
        }
        // A count of at most j lies under x_(j+1) with probability at most 2.5 %.
        rank = Some(j + 1);
        below = at_most_j;
        ln_choose += ((n - j) as f64).ln() - ((j + 1) as f64).ln();
    }
    rank
}

/// Smallest and largest value, for the spread column of a table.
pub fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// `a / b`, NaN when `b` is zero (a missing floor must not look like an infinite ratio).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// A number with the precision a reader needs: integers for large values, three significant
/// digits for small ones.
pub fn num(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_owned();
    }
    let abs = value.abs();
    if abs >= 1000.0 {
        group_thousands(value.round() as i64)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// `1.23x`.
pub fn times(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}x")
    } else {
        "n/a".to_owned()
    }
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn median_intervals_by_order_statistics() {
        // Too few samples for a 95 % interval: 2 x ½^5 = 6.25 % > 5 %.
        assert_eq!(interval_rank(5), None);
        // n = 6: the extremes (2 x ½^6 = 3.1 %).
        assert_eq!(interval_rank(6), Some(1));
        // The textbook ranks: n = 100 gives [x(40), x(61)], n = 20 [x(6), x(15)].
        assert_eq!(interval_rank(100), Some(40));
        assert_eq!(interval_rank(20), Some(6));
        // Large n: no underflow, and close to n/2 - 0.98 sqrt(n).
        assert_eq!(interval_rank(10_000), Some(4902));
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let estimate = Estimate::of(&samples);
        assert_eq!(
            (estimate.median, estimate.low, estimate.high, estimate.n),
            (50.5, 40.0, 61.0, 100)
        );
        assert!(Estimate::of(&[1.0, 2.0]).low.is_nan());
    }

    #[test]
    fn intervals_take_in_the_sources() {
        // Six sources taken in turn, one 10 % dearer: the rounds alone give a narrow interval
        // near 1.0; the sources' extremes widen it to the dear one.
        let samples: Vec<f64> = (0..120)
            .map(|i| if i % 6 == 5 { 1.1 } else { 1.0 } + (i % 7) as f64 * 0.001)
            .collect();
        let rounds = Estimate::of(&samples);
        assert!(rounds.high < 1.01);
        let sources = Estimate::of_rotating(&samples, 6);
        assert_eq!(sources.median, rounds.median);
        assert!(sources.low <= rounds.low && sources.high >= 1.1);
        // Three sources at 1.0, 1.0 and 1.1: mean 1.0333, standard error 0.0333, t 4.303.
        let samples: Vec<f64> = (0..60)
            .map(|i| if i % 3 == 2 { 1.1 } else { 1.0 })
            .collect();
        let sources = Estimate::of_rotating(&samples, 3);
        assert!((sources.high - (1.0 + 0.1 / 3.0 + 4.303 * 0.1 / 3.0)).abs() < 1e-9);
        assert!((sources.low - (1.0 + 0.1 / 3.0 - 4.303 * 0.1 / 3.0)).abs() < 1e-9);
        // One source: the rounds alone.
        assert_eq!(Estimate::of_rotating(&samples, 1), Estimate::of(&samples));
    }

    #[test]
    fn verdicts_against_limits() {
        let estimate = Estimate {
            median: 1.5,
            low: 1.45,
            high: 1.55,
            n: 100,
        };
        assert_eq!(estimate.at_most(1.6), Some(true));
        assert_eq!(estimate.at_most(1.5), None);
        assert_eq!(estimate.at_most(1.4), Some(false));
        assert_eq!(estimate.at_least(1.4), Some(true));
        assert_eq!(estimate.at_least(1.6), Some(false));
        assert!(estimate.decisive());
        assert!((estimate.half_width() - 0.05 / 1.5).abs() < 1e-12);
        let wide = Estimate {
            low: 1.3,
            ..estimate
        };
        assert!(!wide.decisive());
        assert_eq!(wide.show_half_width(), "±13.3 % (too noisy)");
    }

    #[test]
    fn formatting() {
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(f64::NAN), "n/a");
        assert_eq!(times(1.234), "1.23x");
    }
}

//! The forecast math of the review, pure: a least-squares line through a series (accumulated one
//! point at a time, so a month of 30-second samples is never held in memory) and the days until
//! that line reaches a threshold.
//!
//! Time is in days since the window's start. The line's value at the last point (not the last
//! observation) is where the forecast starts, so one noisy reading neither hides nor fakes a trend.

use chrono::{DateTime, Utc};
use proxflow_schemas::capacity_review::DaysLeft;

/// Seconds per day.
const DAY: f64 = 86_400.0;

/// Days from `origin` to `at` (negative before it).
pub fn days_since(origin: DateTime<Utc>, at: DateTime<Utc>) -> f64 {
    (at - origin).num_milliseconds() as f64 / 1000.0 / DAY
}

/// A running least-squares fit of `y` over `x` (Welford's update: no large sums cancelling).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Accumulator {
    n: u64,
    mean_x: f64,
    mean_y: f64,
    /// Σ (x − x̄)².
    sxx: f64,
    /// Σ (x − x̄)(y − ȳ).
    sxy: f64,
    first_x: f64,
    last_x: f64,
    last_y: f64,
}

/// A fitted line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Points.
    pub n: u64,
    /// Units per day.
    pub slope: f64,
    /// The line's value at the last point.
    pub at_last: f64,
    /// The last observed value.
    pub last_y: f64,
    /// x of the first point, days.
    pub first_x: f64,
    /// x of the last point, days.
    pub last_x: f64,
}

impl Accumulator {
    /// Adds a point (x in days). Non-finite values are not observations and are skipped.
    pub fn push(&mut self, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        if self.n == 0 {
            self.first_x = x;
        }
        self.n += 1;
        let n = self.n as f64;
        let dx = x - self.mean_x;
        self.mean_x += dx / n;
        self.mean_y += (y - self.mean_y) / n;
        // Uses the updated ȳ and the pre-update x̄ offset: the standard co-moment update.
        self.sxy += dx * (y - self.mean_y);
        self.sxx += dx * (x - self.mean_x);
        if n == 1.0 || x >= self.last_x {
            self.last_x = x;
            self.last_y = y;
        }
    }

    /// Points so far.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The line, once there are two points at different times.
    pub fn fit(&self) -> Option<Fit> {
        if self.n < 2 || self.sxx <= 0.0 {
            return None;
        }
        let slope = self.sxy / self.sxx;
        Some(Fit {
            n: self.n,
            slope,
            at_last: self.mean_y + slope * (self.last_x - self.mean_x),
            last_y: self.last_y,
            first_x: self.first_x,
            last_x: self.last_x,
        })
    }

    /// The last point's x and y (also without a line).
    pub fn last(&self) -> Option<(f64, f64)> {
        (self.n > 0).then_some((self.last_x, self.last_y))
    }

    /// The first point's x.
    pub fn first_x(&self) -> Option<f64> {
        (self.n > 0).then_some(self.first_x)
    }
}

/// Days until `fit` reaches `threshold`: already above (0) when the line is there at its last
/// point; never when it is flat or falling (a slope that moves it less than a millionth of the
/// threshold over a year counts as flat: a fit of constant values is not exactly 0).
pub fn days_left(fit: Option<&Fit>, threshold: f64) -> DaysLeft {
    let Some(fit) = fit else {
        return DaysLeft::Unknown;
    };
    if fit.at_last >= threshold {
        return DaysLeft::AlreadyAbove;
    }
    let flat = fit.slope * 365.0 <= threshold.abs().max(1.0) * 1e-6;
    if flat {
        return DaysLeft::Never;
    }
    DaysLeft::Days {
        days: (threshold - fit.at_last) / fit.slope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_of(points: &[(f64, f64)]) -> Option<Fit> {
        let mut acc = Accumulator::default();
        for (x, y) in points {
            acc.push(*x, *y);
        }
        acc.fit()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn slope_and_days_left_of_a_hand_computed_series() {
        // x = 0, 1, 2, 3; y = 40, 41, 43, 44.
        // x̄ = 1.5, ȳ = 42; Sxx = 2.25+0.25+0.25+2.25 = 5;
        // Sxy = (-1.5)(-2) + (-0.5)(-1) + (0.5)(1) + (1.5)(2) = 3 + 0.5 + 0.5 + 3 = 7;
        // slope = 7/5 = 1.4 per day; line at x = 3: 42 + 1.4 × 1.5 = 44.1;
        // days to 70: (70 − 44.1) / 1.4 = 18.5.
        let fit = fit_of(&[(0.0, 40.0), (1.0, 41.0), (2.0, 43.0), (3.0, 44.0)]).expect("a line");
        assert!(close(fit.slope, 1.4), "{fit:?}");
        assert!(close(fit.at_last, 44.1), "{fit:?}");
        assert_eq!(fit.last_y, 44.0);
        match days_left(Some(&fit), 70.0) {
            DaysLeft::Days { days } => assert!(close(days, 18.5), "{days}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flat_falling_above_and_too_few() {
        let flat = fit_of(&[(0.0, 50.0), (10.0, 50.0), (20.0, 50.0)]);
        assert_eq!(days_left(flat.as_ref(), 70.0), DaysLeft::Never);
        let falling = fit_of(&[(0.0, 60.0), (10.0, 50.0)]);
        assert_eq!(days_left(falling.as_ref(), 70.0), DaysLeft::Never);
        // Above: the line at its last point is 75 (70 + 0.5 × 10) ≥ 70, even if rising.
        let above = fit_of(&[(0.0, 70.0), (10.0, 75.0)]);
        assert_eq!(days_left(above.as_ref(), 70.0), DaysLeft::AlreadyAbove);
        // Falling but still above is above: 0 days.
        let over = fit_of(&[(0.0, 90.0), (10.0, 80.0)]);
        assert_eq!(days_left(over.as_ref(), 70.0), DaysLeft::AlreadyAbove);
        assert_eq!(
            days_left(fit_of(&[(0.0, 1.0)]).as_ref(), 70.0),
            DaysLeft::Unknown
        );
        // Two points at one time: no line.
        assert_eq!(fit_of(&[(5.0, 1.0), (5.0, 2.0)]), None);
        // Non-finite values are skipped, not fitted.
        let mut acc = Accumulator::default();
        acc.push(0.0, f64::NAN);
        assert!(acc.is_empty());
    }

    #[test]
    fn a_ratio_threshold_below_one_percent_is_still_judged() {
        // Memory commitment 1.2 → 1.3 over 10 days: 0.01 per day, 1.3 at the end, 1.5 in 20 days.
        let fit = fit_of(&[(0.0, 1.2), (10.0, 1.3)]).expect("a line");
        match days_left(Some(&fit), 1.5) {
            DaysLeft::Days { days } => assert!((days - 20.0).abs() < 1e-6, "{days}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn days_since_counts_fractions() {
        let from: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().expect("time");
        let at: DateTime<Utc> = "2026-10-02T12:00:00Z".parse().expect("time");
        assert!(close(days_since(from, at), 1.5));
    }
}

//! Simulated load: what node status, VM status, the VM list and cluster resources report.
//!
//! A [`Load`] gives a CPU fraction (0..1) and a memory fraction (of the VM's `maxmem`, or for the
//! host the base share used by the host itself), each either fixed or a curve of
//! `[t_seconds, value]` points interpolated linearly. Curve time is *simulated* time since the load
//! was set: real time divided by `time_scale`, so a test at `time_scale = 0.01` plays a
//! 60-second curve in 0.6 s; at `time_scale = 0` a curve is at its last point at once. Before
//! the first point the first value holds, after the last the last value.
//!
//! The host's figures are derived, not set: memory used = base fraction × total + the used
//! memory of every running VM; CPU = base + Σ(VM cpu × VM vcpus) / host cpus, capped at 1.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// CPU and memory load of a VM, or the host's own base load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// CPU busy fraction, 0..=1.
    pub cpu: Level,
    /// Memory used as a fraction, 0..=1.
    pub mem: Level,
}

/// A fixed value or a curve over simulated time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Level {
    /// Constant.
    Fixed(f64),
    /// `[t_seconds, value]` points, `t` strictly ascending from >= 0.
    Curve(Vec<(f64, f64)>),
}

impl From<f64> for Level {
    fn from(v: f64) -> Self {
        Self::Fixed(v)
    }
}

impl Load {
    /// A constant load.
    pub fn fixed(cpu: f64, mem: f64) -> Self {
        Self {
            cpu: Level::Fixed(cpu),
            mem: Level::Fixed(mem),
        }
    }

    /// Checks ranges and curve shapes; `Err` pairs each bad field (`cpu`, `mem`) with its problem.
    pub fn validate(&self) -> Result<(), Vec<(&'static str, LevelError)>> {
        let errors: Vec<(&'static str, LevelError)> = [("cpu", &self.cpu), ("mem", &self.mem)]
            .into_iter()
            .filter_map(|(name, level)| level.validate().err().map(|e| (name, e)))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Why a [`Level`] is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LevelError {
    /// A fixed value outside 0..=1.
    #[error("{0} is not a fraction between 0 and 1")]
    NotAFraction(f64),
    /// A curve without points.
    #[error("a curve needs at least one [t_seconds, value] point")]
    EmptyCurve,
    /// A point's time is negative, not finite, or not after the previous point's.
    #[error("point {index}: t = {t} must be >= 0 and above the previous point's t")]
    PointTime {
        /// The point's position.
        index: usize,
        /// Its time.
        t: f64,
    },
    /// A point's value outside 0..=1.
    #[error("point {index}: {value} is not a fraction between 0 and 1")]
    PointValue {
        /// The point's position.
        index: usize,
        /// Its value.
        value: f64,
    },
}

fn fraction_ok(v: f64) -> bool {
    v.is_finite() && (0.0..=1.0).contains(&v)
}

impl Level {
    fn validate(&self) -> Result<(), LevelError> {
        match self {
            Self::Fixed(v) if fraction_ok(*v) => Ok(()),
            Self::Fixed(v) => Err(LevelError::NotAFraction(*v)),
            Self::Curve(points) => {
                if points.is_empty() {
                    return Err(LevelError::EmptyCurve);
                }
                let mut last = -1.0;
                for (index, &(t, value)) in points.iter().enumerate() {
                    if !t.is_finite() || t < 0.0 || t <= last {
                        return Err(LevelError::PointTime { index, t });
                    }
                    if !fraction_ok(value) {
                        return Err(LevelError::PointValue { index, value });
                    }
                    last = t;
                }
                Ok(())
            }
        }
    }

    /// The value `sim_seconds` after the load was set.
    pub(crate) fn at(&self, sim_seconds: f64) -> f64 {
        let value = match self {
            Self::Fixed(v) => *v,
            Self::Curve(points) => interpolate(points, sim_seconds),
        };
        if value.is_finite() {
            value.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

fn interpolate(points: &[(f64, f64)], t: f64) -> f64 {
    let Some(&(t0, v0)) = points.first() else {
        return 0.0;
    };
    if t <= t0 {
        return v0;
    }
    for pair in points.windows(2) {
        let [(ta, va), (tb, vb)] = pair else { continue };
        if t <= *tb {
            let span = tb - ta;
            return if span > 0.0 {
                va + (vb - va) * (t - ta) / span
            } else {
                *vb
            };
        }
    }
    points.last().map_or(v0, |p| p.1)
}

/// A load and the instant it was set (the curve's time origin).
#[derive(Debug, Clone)]
pub(crate) struct LoadState {
    pub(crate) load: Load,
    pub(crate) since: Instant,
}

impl LoadState {
    pub(crate) fn new(load: Load) -> Self {
        Self {
            load,
            since: Instant::now(),
        }
    }

    /// (cpu, mem) `back` simulated seconds ago (0: now; simulated time = real time /
    /// `time_scale`) (RRD history): before the load was set the curve's
    /// first value holds, as if the load had always been there.
    pub(crate) fn sample_back(&self, time_scale: f64, back: f64) -> (f64, f64) {
        let real = self.since.elapsed().as_secs_f64();
        let sim = if time_scale > 0.0 {
            real / time_scale - back
        } else {
            // A zero scale plays every curve to its end at once; history is the end too.
            f64::INFINITY
        };
        (self.load.cpu.at(sim), self.load.mem.at(sim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_interpolate_and_clamp_to_their_ends() {
        let level = Level::Curve(vec![(10.0, 0.2), (20.0, 0.6), (30.0, 0.6)]);
        assert_eq!(level.at(0.0), 0.2);
        assert!((level.at(15.0) - 0.4).abs() < 1e-9);
        assert_eq!(level.at(25.0), 0.6);
        assert_eq!(level.at(f64::INFINITY), 0.6);
        assert_eq!(Level::Fixed(0.3).at(99.0), 0.3);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = Load {
            cpu: Level::Fixed(1.5),
            mem: Level::Curve(vec![(5.0, 0.1), (5.0, 0.2)]),
        };
        let errors = bad.validate().expect_err("invalid");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].0, "cpu");
        assert!(errors[1].1.to_string().contains("point 1"), "{errors:?}");
        assert!(Load::fixed(0.5, 0.5).validate().is_ok());
        let parsed: Load =
            serde_json::from_str(r#"{"cpu": 0.5, "mem": [[0, 0.1], [60, 0.9]]}"#).expect("parses");
        assert_eq!(parsed.mem, Level::Curve(vec![(0.0, 0.1), (60.0, 0.9)]));
    }

    #[test]
    fn zero_time_scale_jumps_to_the_end() {
        let state = LoadState::new(Load {
            cpu: Level::Curve(vec![(0.0, 0.0), (100.0, 1.0)]),
            mem: Level::Fixed(0.25),
        });
        assert_eq!(state.sample_back(0.0, 0.0), (1.0, 0.25));
    }
}

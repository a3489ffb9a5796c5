//! From what was recorded to trends, pure: capacity samples (one metric per detector, as
//! [`crate::compute::observations`] names them) and the node's RRD rows become one
//! [`Accumulator`] per metric; VM RRD rows become each VM's growth.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proxflow_pve::rrd::{NodeRrdRow, VmRrdRow};
use proxflow_schemas::capacity::CapacitySample;
use proxflow_schemas::capacity_review::{MetricTrend, TrendSource, VmGrowth};

use super::forecast::{Accumulator, days_left, days_since};
use crate::compute;
use crate::config::CapacityConfig;

/// The review's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (inclusive).
    pub to: DateTime<Utc>,
}

impl Window {
    /// Whether `at` is inside.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at <= self.to
    }

    /// Its length in days.
    pub fn days(&self) -> f64 {
        days_since(self.from, self.to)
    }

    fn epoch(&self, secs: u64) -> Option<DateTime<Utc>> {
        i64::try_from(secs)
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .filter(|at| self.contains(*at))
    }
}

/// One metric's points so far.
#[derive(Debug, Clone)]
struct Series {
    kind: &'static str,
    acc: Accumulator,
}

/// Metric series keyed by (source, metric id), filled one sample or row at a time.
#[derive(Debug, Clone)]
pub struct Trends {
    window: Window,
    node: String,
    series: BTreeMap<(u8, String), Series>,
    samples: u64,
}

fn source_rank(source: TrendSource) -> u8 {
    match source {
        TrendSource::Samples => 0,
        TrendSource::Rrd => 1,
    }
}

impl Trends {
    /// Empty, for `node`'s samples in `window`.
    pub fn new(window: Window, node: impl Into<String>) -> Self {
        Self {
            window,
            node: node.into(),
            series: BTreeMap::new(),
            samples: 0,
        }
    }

    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Capacity samples of this node taken so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn push(
        &mut self,
        source: TrendSource,
        metric: String,
        kind: &'static str,
        at: DateTime<Utc>,
        y: f64,
    ) {
        let x = days_since(self.window.from, at);
        self.series
            .entry((source_rank(source), metric))
            .or_insert_with(|| Series {
                kind,
                acc: Accumulator::default(),
            })
            .acc
            .push(x, y);
    }

    /// Takes one capacity sample; another node's, or one outside the window, is ignored.
    pub fn sample(&mut self, sample: &CapacitySample) {
        if sample.host.node != self.node || !self.window.contains(sample.at) {
            return;
        }
        self.samples += 1;
        for (id, kind, value) in compute::observations(sample) {
            self.push(TrendSource::Samples, id.to_string(), kind, sample.at, value);
        }
    }

    /// Takes the node's RRD rows: CPU and memory (percent) and the root file system (percent).
    pub fn node_rrd(&mut self, rows: &[NodeRrdRow]) {
        let node = self.node.clone();
        let percent = |used: Option<f64>, total: Option<f64>| match (used, total) {
            (Some(u), Some(t)) if t > 0.0 => Some(u / t * 100.0),
            _ => None,
        };
        for row in rows {
            let Some(at) = self.window.epoch(row.time) else {
                continue;
            };
            let figures = [
                ("cpu", "host_cpu", row.cpu.map(|c| c * 100.0)),
                ("memory", "host_memory", percent(row.memused, row.memtotal)),
                ("rootfs", "storage", percent(row.rootused, row.roottotal)),
            ];
            for (metric, kind, value) in figures {
                if let Some(v) = value {
                    self.push(
                        TrendSource::Rrd,
                        format!("host/{node}/{metric}"),
                        kind,
                        at,
                        v,
                    );
                }
            }
        }
    }

    /// Every series as a trend judged against its kind's rule threshold.
    pub fn finish(&self, config: &CapacityConfig) -> Vec<MetricTrend> {
        let time = |x: f64| {
            self.window.from + chrono::Duration::milliseconds((x * 86_400_000.0).round() as i64)
        };
        self.series
            .iter()
            .filter_map(|((rank, metric), s)| {
                let (last_x, last_y) = s.acc.last()?;
                let fit = s.acc.fit();
                let threshold = config.rule(s.kind).threshold;
                Some(MetricTrend {
                    metric: metric.clone(),
                    kind: s.kind.to_string(),
                    source: if *rank == 0 {
                        TrendSource::Samples
                    } else {
                        TrendSource::Rrd
                    },
                    points: s.acc.len(),
                    first: time(s.acc.first_x().unwrap_or(last_x)),
                    last: time(last_x),
                    last_value: last_y,
                    trend_value: fit.map_or(last_y, |f| f.at_last),
                    slope_per_day: fit.map_or(0.0, |f| f.slope),
                    threshold,
                    days_left: days_left(fit.as_ref(), threshold),
                })
            })
            .collect()
    }
}

/// A VM's growth over `window` from its RRD rows: the trend of memory and disk in use over the
/// window's length. `None` when no row falls in the window.
pub fn vm_growth(
    window: &Window,
    vmid: u32,
    name: Option<String>,
    rows: &[VmRrdRow],
) -> Option<VmGrowth> {
    let (mut mem, mut disk) = (Accumulator::default(), Accumulator::default());
    for row in rows {
        let Some(at) = window.epoch(row.time) else {
            continue;
        };
        let x = days_since(window.from, at);
        if let Some(m) = row.mem {
            mem.push(x, m);
        }
        if let Some(d) = row.disk {
            disk.push(x, d);
        }
    }
    if mem.is_empty() && disk.is_empty() {
        return None;
    }
    let days = window.days();
    let growth = |acc: &Accumulator| acc.fit().map_or(0, |f| (f.slope * days).round() as i64);
    let now = |acc: &Accumulator| acc.last().map_or(0, |(_, y)| y.max(0.0).round() as u64);
    Some(VmGrowth {
        vmid,
        name,
        memory_bytes: now(&mem),
        memory_growth_bytes: growth(&mem),
        disk_bytes: now(&disk),
        disk_growth_bytes: growth(&disk),
        points: mem.len().max(disk.len()),
    })
}

/// The `top` VMs that grew most (memory + disk), those that did not grow left out.
pub fn top_vms(mut vms: Vec<VmGrowth>, top: usize) -> Vec<VmGrowth> {
    let total = |v: &VmGrowth| v.memory_growth_bytes.saturating_add(v.disk_growth_bytes);
    vms.retain(|v| total(v) > 0);
    vms.sort_by(|a, b| total(b).cmp(&total(a)).then(a.vmid.cmp(&b.vmid)));
    vms.truncate(top);
    vms
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn window() -> Window {
        Window {
            from: at("2026-10-01T00:00:00Z"),
            to: at("2026-10-11T00:00:00Z"),
        }
    }

    #[test]
    fn node_rrd_rows_in_the_window_become_percent_trends() {
        let day = 86_400;
        let start = at("2026-10-01T00:00:00Z").timestamp() as u64;
        // Memory 25 % → 35 % over 10 days (1 % a day); one row before the window, one empty row.
        let rows: Vec<NodeRrdRow> = [(-1i64, 10.0), (0, 25.0), (5, 30.0), (10, 35.0)]
            .iter()
            .map(|(d, pct)| NodeRrdRow {
                time: (start as i64 + d * day) as u64,
                cpu: Some(0.5),
                memtotal: Some(1000.0),
                memused: Some(pct * 10.0),
                roottotal: None,
                rootused: None,
            })
            .chain(std::iter::once(NodeRrdRow {
                time: start + 3 * day as u64,
                cpu: None,
                memtotal: None,
                memused: None,
                roottotal: None,
                rootused: None,
            }))
            .collect();
        let mut trends = Trends::new(window(), "pve1");
        trends.node_rrd(&rows);
        let out = trends.finish(&CapacityConfig::default());
        let mem = out.iter().find(|t| t.metric == "host/pve1/memory").unwrap();
        assert_eq!(mem.source, TrendSource::Rrd);
        assert_eq!(
            mem.points, 3,
            "the row before the window and the empty row are left out"
        );
        assert!((mem.slope_per_day - 1.0).abs() < 1e-9, "{mem:?}");
        // 35 % now, 70 % at 1 % a day: 35 days.
        assert_eq!(mem.days_left.days().map(|d| d.round()), Some(35.0));
        let cpu = out.iter().find(|t| t.metric == "host/pve1/cpu").unwrap();
        assert_eq!(
            cpu.days_left,
            proxflow_schemas::capacity_review::DaysLeft::Never
        );
        assert!(!out.iter().any(|t| t.metric.ends_with("rootfs")));
    }

    #[test]
    fn vm_growth_is_the_trend_over_the_window_and_only_growers_rank() {
        let start = at("2026-10-01T00:00:00Z").timestamp() as u64;
        // 1 GiB → 2 GiB over 10 days: 1 GiB growth over the 10-day window.
        let gib = f64::from(1u32 << 30);
        let rows: Vec<VmRrdRow> = (0..=10)
            .map(|d| VmRrdRow {
                time: start + d * 86_400,
                cpu: Some(0.1),
                mem: Some(gib + gib * d as f64 / 10.0),
                maxmem: Some(4.0 * gib),
                disk: Some(0.0),
                maxdisk: Some(0.0),
            })
            .collect();
        let g = vm_growth(&window(), 104, Some("k3s-1".into()), &rows).unwrap();
        assert_eq!(g.memory_growth_bytes, 1 << 30);
        assert_eq!(g.memory_bytes, 2 << 30);
        assert_eq!(g.disk_growth_bytes, 0);
        assert_eq!(g.points, 11);
        let flat = VmGrowth {
            vmid: 100,
            memory_growth_bytes: 0,
            ..g.clone()
        };
        let small = VmGrowth {
            vmid: 101,
            memory_growth_bytes: 10,
            ..g.clone()
        };
        let ranked = top_vms(vec![flat, small, g], 5);
        assert_eq!(
            ranked.iter().map(|v| v.vmid).collect::<Vec<_>>(),
            [104, 101]
        );
        assert!(vm_growth(&window(), 1, None, &[]).is_none());
    }
}

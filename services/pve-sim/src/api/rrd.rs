//! `GET /nodes/{node}/rrddata` and `GET /nodes/{node}/qemu/{vmid}/rrddata`: 70 rows per
//! `timeframe` at PVE's steps (1 min, 30 min, 3 h, 12 h, 1 week), the newest row the current
//! step of the simulator's clock, the oldest 69 steps before it (a month is 35 days).
//!
//! The simulator keeps no history, so each row is what the load model gives for that moment:
//! a row's age in seconds is taken as simulated seconds back along the VM's or host's load curve
//! (before a load was set its first value holds). A row consolidates several samples of its step
//! as `cf` asks, `AVERAGE` (the default) or `MAX`. The power state is today's for every row: a
//! VM stopped now shows no load in its whole history.

use serde_json::{Map, Value, json};

use super::{ApiError, P, Reply, param_error};
use crate::state::{State, now_epoch};

/// Rows per timeframe, as PVE's RRAs keep them.
const ROWS: i64 = 70;

/// Samples taken within one row's step to consolidate it.
const SAMPLES: u32 = 6;

/// Seconds per RRD row for each `timeframe`.
fn rrd_step(timeframe: &str) -> Option<i64> {
    match timeframe {
        "hour" => Some(60),
        "day" => Some(1_800),
        "week" => Some(10_800),
        "month" => Some(43_200),
        "year" => Some(604_800),
        _ => None,
    }
}

/// Consolidates samples key by key: the mean, or the maximum.
fn consolidate(samples: &[Map<String, Value>], max: bool) -> Map<String, Value> {
    let Some(first) = samples.first() else {
        return Map::new();
    };
    first
        .keys()
        .map(|key| {
            let values = samples
                .iter()
                .filter_map(|s| s.get(key).and_then(Value::as_f64));
            let value = if max {
                values.fold(f64::MIN, f64::max)
            } else {
                let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
                sum / f64::from(n.max(1))
            };
            (key.clone(), json!(value))
        })
        .collect()
}

impl State {
    /// One node sample `back` simulated seconds ago.
    fn node_sample(&self, back: f64) -> Map<String, Value> {
        let (cpu, mem) = self.host_usage_back(back);
        let (root_total, root_used) = self.rootfs();
        let cpus = f64::from(self.node.cpus());
        let sample = json!({
            "cpu": cpu,
            "maxcpu": cpus,
            "iowait": 0.001 + cpu * 0.01,
            "loadavg": cpu * cpus,
            "memtotal": self.node.memory as f64,
            "memused": mem as f64,
            "swaptotal": (8u64 << 30) as f64,
            "swapused": 0.0,
            "roottotal": root_total as f64,
            "rootused": root_used as f64,
            // Traffic follows the load: a busy host moves more bytes.
            "netin": 50_000.0 + cpu * 2_000_000.0,
            "netout": 40_000.0 + cpu * 1_500_000.0,
        });
        match sample {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// One VM sample `back` simulated seconds ago.
    fn vm_sample(&self, vmid: u32, back: f64) -> Map<String, Value> {
        let Some(vm) = self.vms.get(&vmid) else {
            return Map::new();
        };
        let running = vm.running();
        let (cpu, _) = self.vm_load_back(vmid, back);
        let on = |v: f64| if running { v } else { 0.0 };
        let sample = json!({
            "cpu": cpu,
            "maxcpu": f64::from(vm.cpus()),
            "mem": self.vm_mem_back(vmid, back) as f64,
            "maxmem": vm.maxmem() as f64,
            "disk": 0.0,
            "maxdisk": vm.maxdisk() as f64,
            "netin": on(1_500.0 + cpu * 500_000.0),
            "netout": on(1_000.0 + cpu * 400_000.0),
            "diskread": on(6_000.0 + cpu * 2_000_000.0),
            "diskwrite": on(4_000.0 + cpu * 1_500_000.0),
        });
        match sample {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// `GET …/rrddata` of the node (`vmid` absent) or a VM.
    pub(super) fn rrddata(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let timeframe = p.str("timeframe").unwrap_or_default();
        let step = rrd_step(&timeframe).ok_or_else(|| {
            param_error(
                "timeframe",
                "value does not have a value in the enumeration 'hour, day, week, month, year'",
            )
        })?;
        let max = p.str("cf").as_deref() == Some("MAX");
        let vmid = p.opt_num::<u32>("vmid");
        if let Some(vmid) = vmid {
            self.existing(vmid)?;
        }
        let now = now_epoch();
        let newest = now / step * step;
        let rows: Vec<Value> = (0..ROWS)
            .rev()
            .map(|i| {
                let time = newest - i * step;
                // The samples of the step that ends at `time` (the newest step ends now).
                let end = time.min(now);
                let samples: Vec<Map<String, Value>> = (0..SAMPLES)
                    .map(|k| {
                        let at = end as f64 - step as f64 * f64::from(k) / f64::from(SAMPLES);
                        let back = (now as f64 - at).max(0.0);
                        match vmid {
                            Some(vmid) => self.vm_sample(vmid, back),
                            None => self.node_sample(back),
                        }
                    })
                    .collect();
                let mut row = consolidate(&samples, max);
                row.insert("time".into(), json!(time));
                Value::Object(row)
            })
            .collect();
        Ok(Reply::data(json!(rows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_consolidate_by_mean_or_maximum() {
        let sample = |v: f64| match json!({"cpu": v}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let samples = [sample(0.2), sample(0.4), sample(0.9)];
        let avg = consolidate(&samples, false)["cpu"].as_f64().unwrap_or(0.0);
        assert!((avg - 0.5).abs() < 1e-9, "{avg}");
        assert_eq!(consolidate(&samples, true)["cpu"], json!(0.9));
        assert_eq!(rrd_step("month"), Some(43_200));
        assert_eq!(rrd_step("decade"), None);
    }
}

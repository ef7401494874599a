//! The machine a figure was taken on: cores, memory, CPU, kernel, date.

use std::fmt;

use chrono::{NaiveDate, Utc};

/// What the report says about the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `std::thread::available_parallelism` (1 when unknown).
    pub cores: usize,
    /// `MemTotal` of `/proc/meminfo`, in bytes (`None` off Linux).
    pub memory_bytes: Option<u64>,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu: Option<String>,
    /// `std::env::consts::OS` and, on Linux, the kernel release.
    pub os: String,
    /// UTC date of the run.
    pub date: NaiveDate,
    /// `release` or `debug`: the profile this binary was built with.
    pub profile: &'static str,
}

impl Machine {
    /// Reads the running machine.
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_total(&s));
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| cpu_model(&s));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok();
        let os = match kernel {
            Some(k) => format!("{} {}", std::env::consts::OS, k.trim()),
            None => std::env::consts::OS.to_owned(),
        };
        Machine {
            cores,
            memory_bytes,
            cpu,
            os,
            date: Utc::now().date_naive(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cores", self.cores)?;
        if let Some(bytes) = self.memory_bytes {
            write!(f, ", {:.1} GiB", bytes as f64 / f64::from(1u32 << 30))?;
        }
        if let Some(cpu) = &self.cpu {
            write!(f, ", {cpu}")?;
        }
        write!(f, ", {}, {} build, {}", self.os, self.profile, self.date)
    }
}

/// `MemTotal:  24563224 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    let model = line.split_once(':')?.1.split_whitespace();
    Some(model.collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_and_cpuinfo() {
        let meminfo = "MemTotal:       24563224 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_563_224 * 1024));
        assert_eq!(mem_total("MemFree: 3 kB\n"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC   7B13\nflags\t: x\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
    }

    #[test]
    fn the_description_names_cores_memory_and_date() {
        let m = Machine {
            cores: 2,
            memory_bytes: Some(24 << 30),
            cpu: None,
            os: "linux 6.1".into(),
            date: NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
            profile: "release",
        };
        assert_eq!(
            m.to_string(),
            "2 cores, 24.0 GiB, linux 6.1, release build, 2026-11-25"
        );
    }
}

//! The operator process's own memory, as `process_resident_memory_bytes` (the name
//! Prometheus client libraries give it) and `process_resident_memory_peak_bytes`,
//! read from `/proc/self/status` (`VmRSS`, `VmHWM`) each time `/metrics` is read: what
//! shows whether what clients can make the operator hold stays bounded.

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

/// The memory gauges, set when read.
#[derive(Debug, Default)]
pub struct Memory {
    resident: Gauge,
    peak: Gauge,
}

impl Memory {
    /// The gauges, registered in `registry` (unprefixed).
    pub fn register(registry: &mut Registry) -> Self {
        let memory = Self::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the operator process, in bytes",
            memory.resident.clone(),
        );
        registry.register(
            "process_resident_memory_peak_bytes",
            "The highest resident memory of the operator process since it started, in bytes \
             (VmHWM)",
            memory.peak.clone(),
        );
        memory
    }

    /// Reads the process's memory now (left as it was where there is no `/proc`).
    pub fn update(&self) {
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return;
        };
        let (resident, peak) = parse_status(&status);
        if let Some(bytes) = resident {
            self.resident.set(bytes);
        }
        if let Some(bytes) = peak {
            self.peak.set(bytes);
        }
    }
}

/// `VmRSS` and `VmHWM` of a `/proc/<pid>/status`, in bytes.
fn parse_status(status: &str) -> (Option<i64>, Option<i64>) {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?.trim();
            let kib: i64 = value.strip_suffix("kB")?.trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    (field("VmRSS"), field("VmHWM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_and_peak_memory_are_read_in_bytes() {
        let status = "Name:\tweft-operator\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\n\
                      VmRSS:\t   40960 kB\nThreads:\t9\n";
        assert_eq!(
            parse_status(status),
            (Some(40960 * 1024), Some(51200 * 1024))
        );
        assert_eq!(parse_status("Name:\tx\n"), (None, None));
    }

    #[test]
    fn this_process_has_a_peak_at_least_its_resident_memory() {
        let memory = Memory::default();
        memory.update();
        let (resident, peak) = (memory.resident.get(), memory.peak.get());
        assert!(resident > 0, "{resident}");
        assert!(peak >= resident, "{peak} < {resident}");
    }
}

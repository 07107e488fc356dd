//! What a board's latency figures depend on, read from Linux's `/proc` and `/sys`: which board
//! and cores, CPU clock and governor, temperature and (on a Raspberry Pi) throttling. Read
//! before and after the latency runs, so a report shows a board that heated up or slowed down.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Clock, governor, temperature and throttling at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardState {
    /// Current clock of each logical CPU (`cpufreq/scaling_cur_freq`), MHz, by CPU name
    /// (`cpu0`, ...); empty where the kernel exposes no cpufreq.
    pub cpu_mhz: BTreeMap<String, f64>,
    /// Highest clock each CPU may run at now (`cpufreq/scaling_max_freq`), MHz.
    pub cpu_max_mhz: BTreeMap<String, f64>,
    /// cpufreq governor of each CPU (`performance`, `ondemand`, `schedutil`, ...).
    pub governors: BTreeMap<String, String>,
    /// Temperature of each thermal zone, °C, keyed `<zone> (<type>)`, e.g.
    /// `thermal_zone0 (cpu-thermal)`.
    pub temperatures_c: BTreeMap<String, f64>,
    /// Raspberry Pi firmware's throttling flags (`get_throttled`, hex: bits 0-3 under-voltage,
    /// clock capped, throttled, soft temperature limit now; bits 16-19 the same since boot;
    /// 0x0 is a clean run), where the kernel exposes them.
    pub pi_throttled: Option<String>,
    /// Why some of the above is missing, so an absent figure is never read as zero.
    pub unavailable: Vec<String>,
}

/// The Raspberry Pi firmware's throttling flags, as Raspberry Pi OS kernels expose them:
/// `sys/devices/platform/<bus>/<bus>:firmware/get_throttled`, where the bus is `soc` on a Pi 4
/// and named otherwise on other models, so it is looked for.
fn pi_throttled(root: &Path) -> Option<String> {
    let platform = root.join("sys/devices/platform");
    for bus in std::fs::read_dir(&platform).ok()?.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path()) else { continue };
        for device in devices.flatten() {
            if device.file_name().to_string_lossy().ends_with(":firmware") {
                if let Some(flags) = read_trimmed(&device.path().join("get_throttled")) {
                    return Some(flags);
                }
            }
        }
    }
    None
}

impl BoardState {
    /// Reads the state of this machine. Under emulation `/sys` is the host's, not the emulated
    /// board's, so nothing is read and `unavailable` says why.
    pub fn read(emulated: bool) -> BoardState {
        if emulated {
            return BoardState {
                unavailable: vec![
                    "emulated (qemu): /sys describes the host, not the emulated board, so no \
                     clock or temperature is recorded"
                        .into(),
                ],
                ..BoardState::default()
            };
        }
        BoardState::read_from(Path::new("/"))
    }

    /// Reads the state from a filesystem rooted at `root` (`/` on a real machine).
    pub fn read_from(root: &Path) -> BoardState {
        let mut state = BoardState::default();
        let cpus = root.join("sys/devices/system/cpu");
        for cpu in numbered_entries(&cpus, "cpu") {
            let freq = cpus.join(&cpu).join("cpufreq");
            if let Some(khz) = read_number(&freq.join("scaling_cur_freq")) {
                state.cpu_mhz.insert(cpu.clone(), khz / 1e3);
            }
            if let Some(khz) = read_number(&freq.join("scaling_max_freq")) {
                state.cpu_max_mhz.insert(cpu.clone(), khz / 1e3);
            }
            if let Some(g) = read_trimmed(&freq.join("scaling_governor")) {
                state.governors.insert(cpu, g);
            }
        }
        if state.cpu_mhz.is_empty() {
            state.unavailable.push(
                "no /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq: the kernel exposes \
                 no CPU clock here (common in VMs and containers)"
                    .into(),
            );
        }

        let thermal = root.join("sys/class/thermal");
        for zone in numbered_entries(&thermal, "thermal_zone") {
            let dir = thermal.join(&zone);
            let Some(millidegrees) = read_number(&dir.join("temp")) else { continue };
            let key = match read_trimmed(&dir.join("type")) {
                Some(kind) => format!("{zone} ({kind})"),
                None => zone,
            };
            state.temperatures_c.insert(key, millidegrees / 1e3);
        }
        if state.temperatures_c.is_empty() {
            state.unavailable.push(
                "no readable /sys/class/thermal/thermal_zone*/temp: no temperature here".into(),
            );
        }

        state.pi_throttled = pi_throttled(root);
        state
    }

    /// Highest temperature over the thermal zones, °C.
    pub fn max_temperature_c(&self) -> Option<f64> {
        self.temperatures_c.values().copied().reduce(f64::max)
    }

    /// One line for a report: clocks, governors, hottest zone, throttling.
    pub fn summary(&self) -> String {
        let mut parts = vec![];
        let mhz: Vec<f64> = self.cpu_mhz.values().copied().collect();
        if let (Some(lo), Some(hi)) =
            (mhz.iter().copied().reduce(f64::min), mhz.iter().copied().reduce(f64::max))
        {
            parts.push(if lo == hi {
                format!("clock {lo:.0} MHz")
            } else {
                format!("clock {lo:.0}-{hi:.0} MHz")
            });
        }
        let governors: std::collections::BTreeSet<&str> =
            self.governors.values().map(String::as_str).collect();
        if !governors.is_empty() {
            parts.push(format!("governor {}", governors.into_iter().collect::<Vec<_>>().join("/")));
        }
        if let Some(t) = self.max_temperature_c() {
            parts.push(format!("{t:.1} °C"));
        }
        if let Some(flags) = &self.pi_throttled {
            parts.push(format!("Pi throttled flags {flags}"));
        }
        if parts.is_empty() {
            return "not readable".into();
        }
        parts.join(", ")
    }
}

/// The board's model from the device tree (e.g. `Raspberry Pi 5 Model B Rev 1.0`), if any.
pub fn board_model() -> Option<String> {
    let raw = std::fs::read("/proc/device-tree/model").ok()?;
    let text = String::from_utf8_lossy(&raw).trim_end_matches('\0').trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// ARM core types from `/proc/cpuinfo`'s `CPU part` lines, counted, e.g. `4 x Cortex-A76`
/// (big.LITTLE SoCs list each kind). Empty on other CPUs.
pub fn arm_cores(cpuinfo: &str) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in cpuinfo.lines().filter(|l| l.starts_with("CPU part")) {
        let Some(part) = line.split(':').nth(1).map(str::trim) else { continue };
        *counts.entry(arm_part_name(part)).or_default() += 1;
    }
    counts.into_iter().map(|(name, n)| format!("{n} x {name}")).collect()
}

/// The Arm core named by a `CPU part` id (ARM Ltd. parts; others shown by id).
fn arm_part_name(part: &str) -> String {
    let name = match part {
        "0xc07" => "Cortex-A7",
        "0xc09" => "Cortex-A9",
        "0xc0f" => "Cortex-A15",
        "0xd03" => "Cortex-A53",
        "0xd04" => "Cortex-A35",
        "0xd05" => "Cortex-A55",
        "0xd07" => "Cortex-A57",
        "0xd08" => "Cortex-A72",
        "0xd09" => "Cortex-A73",
        "0xd0a" => "Cortex-A75",
        "0xd0b" => "Cortex-A76",
        "0xd0d" => "Cortex-A77",
        "0xd41" => "Cortex-A78",
        "0xd46" => "Cortex-A510",
        "0xd47" => "Cortex-A710",
        "0xd4d" => "Cortex-A715",
        "0xd80" => "Cortex-A520",
        "0xd81" => "Cortex-A720",
        _ => return format!("CPU part {part}"),
    };
    name.into()
}

/// Entries of `dir` named `<prefix><number>`, in numeric order.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((name.strip_prefix(prefix)?.parse().ok()?, name)))
        .collect();
    found.sort();
    found.into_iter().map(|(_, name)| name).collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn read_number(path: &Path) -> Option<f64> {
    read_trimmed(path)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_a_pi_like_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (cpu, khz) in [("cpu0", "1500000\n"), ("cpu1", "600000\n"), ("cpu10", "1800000\n")] {
            write(root, &format!("sys/devices/system/cpu/{cpu}/cpufreq/scaling_cur_freq"), khz);
            write(root, &format!("sys/devices/system/cpu/{cpu}/cpufreq/scaling_max_freq"), khz);
            write(
                root,
                &format!("sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor"),
                "ondemand\n",
            );
        }
        write(root, "sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq", "1\n");
        write(root, "sys/class/thermal/thermal_zone0/temp", "61850\n");
        write(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(root, "sys/class/thermal/thermal_zone1/temp", "garbage\n");
        write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", "0x50000\n");

        let s = BoardState::read_from(root);
        assert_eq!(s.cpu_mhz.keys().collect::<Vec<_>>(), ["cpu0", "cpu1", "cpu10"]);
        assert_eq!(s.cpu_mhz["cpu0"], 1500.0);
        assert_eq!(s.cpu_max_mhz["cpu10"], 1800.0);
        assert_eq!(s.governors["cpu1"], "ondemand");
        assert_eq!(s.temperatures_c.len(), 1);
        assert!((s.temperatures_c["thermal_zone0 (cpu-thermal)"] - 61.85).abs() < 1e-9);
        assert_eq!(s.pi_throttled.as_deref(), Some("0x50000"));
        assert!(s.unavailable.is_empty(), "{:?}", s.unavailable);
        assert_eq!(
            s.summary(),
            "clock 600-1800 MHz, governor ondemand, 61.9 °C, Pi throttled flags 0x50000"
        );
    }

    #[test]
    fn says_why_figures_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = BoardState::read_from(dir.path());
        assert!(s.cpu_mhz.is_empty() && s.temperatures_c.is_empty() && s.pi_throttled.is_none());
        assert_eq!(s.unavailable.len(), 2);
        assert!(s.unavailable[0].contains("scaling_cur_freq"));
        assert_eq!(s.summary(), "not readable");

        let emulated = BoardState::read(true);
        assert!(emulated.cpu_mhz.is_empty());
        assert!(emulated.unavailable[0].contains("emulated"));
    }

    #[test]
    fn names_arm_cores() {
        let cpuinfo = "processor\t: 0\nCPU part\t: 0xd05\nprocessor\t: 1\nCPU part\t: 0xd05\n\
                       processor\t: 2\nCPU part\t: 0xd0b\nCPU part\t: 0xfff\n";
        assert_eq!(arm_cores(cpuinfo), ["1 x CPU part 0xfff", "2 x Cortex-A55", "1 x Cortex-A76"]);
        assert!(arm_cores("vendor_id\t: GenuineIntel\n").is_empty());
    }
}

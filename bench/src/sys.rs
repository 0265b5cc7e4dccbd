//! What the process costs the machine, read from `/proc/self`: CPU time and resident memory.
//! Outside Linux the readers return `None` and reports say so.

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_seconds(&stat)
}

/// Parses utime + stime out of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces, so fields are counted after its closing parenthesis.
pub fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Peak resident memory (`VmHWM`) of this process, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident memory (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, key)
}

/// Reads a `KEY:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Total time, in µs since boot, that some runnable task on the machine waited for a CPU
/// (`/proc/pressure/cpu`, the `some` line). Its growth over a run, divided by the run's length,
/// is the share of time the machine was short of CPU: on a shared machine, the context a
/// throughput figure needs.
pub fn cpu_pressure_total_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    parse_pressure_total(&text)
}

/// Reads `total=` of the `some` line of a `/proc/pressure/*` file.
pub fn parse_pressure_total(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_found_after_a_name_with_spaces_and_parentheses() {
        let line = "4242 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_seconds(line), Some(3.0));
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tspecie\nVmHWM:\t  123456 kB\nVmRSS:\t   1000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(123_456));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1000));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn pressure_totals_come_from_the_some_line() {
        let text = "some avg10=49.75 avg60=53.38 avg300=54.96 total=2241607928\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_total(text), Some(2_241_607_928));
        assert_eq!(parse_pressure_total("full total=3\n"), None);
    }

    #[test]
    fn this_process_has_a_peak_rss_and_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().expect("VmHWM") > 0);
            assert!(cpu_seconds().expect("stat") >= 0.0);
        }
    }
}

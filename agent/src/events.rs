//! Decoding the tracer's events: the Rust mirror of `bpf/tracer.h`. Offsets
//! are those of the C structs (naturally aligned, little-endian, explicit
//! padding), checked against a built object's BTF by a test. Also what an
//! event becomes on output: wall-clock time and the host name beside the
//! kernel's monotonic `ts_ns`, for log pipelines.

use serde::Serialize;

pub const HEADER_LEN: usize = 48;
pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 256;

/// Every event name, with what it carries beyond the common fields.
pub const EVENTS: [(&str, &str); 6] = [
    ("exec", "filename: the executable's path"),
    ("exit", "exit_code, signal: how the process ended (last thread)"),
    ("fork", "child_pid, child_tid: a new process"),
    ("open", "path, flags, mode, dfd: openat/openat2"),
    ("connect", "family, address, port, fd: IPv4/IPv6 connect()"),
    ("creds", "new_uid, new_gid: commit_creds (needs kprobes)"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Detail {
    Exec { filename: String },
    Exit { exit_code: i32, signal: u32 },
    Fork { child_pid: u32, child_tid: u32 },
    Open { dfd: i32, flags: u32, mode: u32, path: String },
    Connect { fd: i32, family: &'static str, address: String, port: u16 },
    Creds { new_uid: u32, new_gid: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(flatten)]
    pub detail: Detail,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self.detail {
            Detail::Exec { .. } => "exec",
            Detail::Exit { .. } => "exit",
            Detail::Fork { .. } => "fork",
            Detail::Open { .. } => "open",
            Detail::Connect { .. } => "connect",
            Detail::Creds { .. } => "creds",
        }
    }

    /// The event-specific part, for the table.
    pub fn details(&self) -> String {
        match &self.detail {
            Detail::Exec { filename } => filename.clone(),
            Detail::Exit { exit_code, signal } => {
                if *signal != 0 {
                    format!("signal {signal}")
                } else {
                    format!("exit {exit_code}")
                }
            }
            Detail::Fork { child_pid, .. } => format!("child {child_pid}"),
            Detail::Open { path, flags, .. } => format!("{path} flags=0x{flags:x}"),
            Detail::Connect { address, port, family, .. } => {
                if *family == "inet6" {
                    format!("[{address}]:{port}")
                } else {
                    format!("{address}:{port}")
                }
            }
            Detail::Creds { new_uid, new_gid } => format!("uid={new_uid} gid={new_gid}"),
        }
    }
}

/// Maps the tracer's `ts_ns` (`bpf_ktime_get_ns`: CLOCK_MONOTONIC, which
/// stops while the machine is suspended and is slewed with the wall clock)
/// to wall-clock time. Sample it again from time to time: the offset
/// between the two clocks changes after a suspend or a clock step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    /// The offset now: the wall clock read between two monotonic reads,
    /// against their midpoint.
    pub fn sample() -> Self {
        use rustix::time::{ClockId, clock_gettime};
        let ns = |t: rustix::time::Timespec| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        let before = ns(clock_gettime(ClockId::Monotonic));
        let wall = ns(clock_gettime(ClockId::Realtime));
        let after = ns(clock_gettime(ClockId::Monotonic));
        Self { offset_ns: wall - (before + after) / 2 }
    }

    pub fn from_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Nanoseconds since the Unix epoch of a monotonic timestamp (0 for a
    /// time before the epoch, which no real event has).
    pub fn epoch_ns(&self, ts_ns: u64) -> u64 {
        u64::try_from(i128::from(ts_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// This machine's host name (`uname -n`: inside a container, the
/// container's unless it shares the host's UTS namespace).
pub fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// One event as the agent prints it: the decoded event, its wall-clock time
/// (RFC 3339 in UTC with nanoseconds, and nanoseconds since the epoch)
/// and the host it happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    #[serde(flatten)]
    pub event: &'a Event,
    pub time: String,
    pub epoch_ns: u64,
    pub host: &'a str,
}

impl<'a> Record<'a> {
    pub fn new(event: &'a Event, clock: &WallClock, host: &'a str) -> Self {
        let epoch_ns = clock.epoch_ns(event.ts_ns);
        let time = utc(epoch_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        Self { event, time, epoch_ns, host }
    }

    /// The time in this machine's time zone (`TZ`, else /etc/localtime),
    /// as the table shows it.
    pub fn local_time(&self) -> String {
        utc(self.epoch_ns).with_timezone(&chrono::Local).format("%H:%M:%S%.6f").to_string()
    }
}

fn utc(epoch_ns: u64) -> chrono::DateTime<chrono::Utc> {
    // i64 nanoseconds reach the year 2262; later stamps saturate there.
    chrono::DateTime::from_timestamp_nanos(i64::try_from(epoch_ns).unwrap_or(i64::MAX))
}

/// Byte offsets in a record, by C struct and field: the table `tracer.h`
/// asserts with `BPFARM_AT(...)` (a test compares the two).
pub const LAYOUT: [(&str, &str, usize); 23] = [
    ("bpfarm_event_header", "ts_ns", TS_NS),
    ("bpfarm_event_header", "type", TYPE),
    ("bpfarm_event_header", "pid", PID),
    ("bpfarm_event_header", "tid", TID),
    ("bpfarm_event_header", "ppid", PPID),
    ("bpfarm_event_header", "uid", UID),
    ("bpfarm_event_header", "gid", GID),
    ("bpfarm_event_header", "comm", COMM),
    ("bpfarm_exec_event", "filename", EXEC_FILENAME),
    ("bpfarm_exit_event", "exit_code", EXIT_CODE),
    ("bpfarm_exit_event", "signal", EXIT_SIGNAL),
    ("bpfarm_fork_event", "child_pid", FORK_CHILD_PID),
    ("bpfarm_fork_event", "child_tid", FORK_CHILD_TID),
    ("bpfarm_open_event", "dfd", OPEN_DFD),
    ("bpfarm_open_event", "flags", OPEN_FLAGS),
    ("bpfarm_open_event", "mode", OPEN_MODE),
    ("bpfarm_open_event", "path", OPEN_PATH),
    ("bpfarm_connect_event", "fd", CONNECT_FD),
    ("bpfarm_connect_event", "family", CONNECT_FAMILY),
    ("bpfarm_connect_event", "port", CONNECT_PORT),
    ("bpfarm_connect_event", "addr", CONNECT_ADDR),
    ("bpfarm_creds_event", "new_uid", CREDS_UID),
    ("bpfarm_creds_event", "new_gid", CREDS_GID),
];

const TS_NS: usize = 0;
const TYPE: usize = 8;
const PID: usize = 12;
const TID: usize = 16;
const PPID: usize = 20;
const UID: usize = 24;
const GID: usize = 28;
const COMM: usize = 32;
const EXEC_FILENAME: usize = 48;
const EXIT_CODE: usize = 48;
const EXIT_SIGNAL: usize = 52;
const FORK_CHILD_PID: usize = 48;
const FORK_CHILD_TID: usize = 52;
const OPEN_DFD: usize = 48;
const OPEN_FLAGS: usize = 52;
const OPEN_MODE: usize = 56;
const OPEN_PATH: usize = 64;
const CONNECT_FD: usize = 48;
const CONNECT_FAMILY: usize = 52;
const CONNECT_PORT: usize = 54;
const CONNECT_ADDR: usize = 56;
const CREDS_UID: usize = 48;
const CREDS_GID: usize = 52;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// A NUL-terminated string starting at `off`, at most `max` bytes.
fn cstr_at(b: &[u8], off: usize, max: usize) -> Option<String> {
    let s = b.get(off..(off + max).min(b.len()))?;
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// Decodes one ring-buffer record; `None` for a short or unknown record.
pub fn decode(b: &[u8]) -> Option<Event> {
    if b.len() < HEADER_LEN {
        return None;
    }
    let detail = match u32_at(b, TYPE)? {
        1 => Detail::Exec { filename: cstr_at(b, EXEC_FILENAME, PATH_LEN)? },
        2 => Detail::Exit { exit_code: u32_at(b, EXIT_CODE)? as i32, signal: u32_at(b, EXIT_SIGNAL)? },
        3 => Detail::Fork { child_pid: u32_at(b, FORK_CHILD_PID)?, child_tid: u32_at(b, FORK_CHILD_TID)? },
        4 => Detail::Open {
            dfd: u32_at(b, OPEN_DFD)? as i32,
            flags: u32_at(b, OPEN_FLAGS)?,
            mode: u32_at(b, OPEN_MODE)?,
            path: cstr_at(b, OPEN_PATH, PATH_LEN)?,
        },
        5 => {
            let a = b.get(CONNECT_ADDR..CONNECT_ADDR + 16)?;
            let (family, address) = match u16_at(b, CONNECT_FAMILY)? {
                2 => ("inet", std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()),
                10 => ("inet6", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?).to_string()),
                _ => return None,
            };
            Detail::Connect { fd: u32_at(b, CONNECT_FD)? as i32, family, address, port: u16_at(b, CONNECT_PORT)? }
        }
        6 => Detail::Creds { new_uid: u32_at(b, CREDS_UID)?, new_gid: u32_at(b, CREDS_GID)? },
        _ => return None,
    };
    Some(Event {
        detail,
        ts_ns: u64::from_le_bytes(b.get(TS_NS..TS_NS + 8)?.try_into().ok()?),
        pid: u32_at(b, PID)?,
        tid: u32_at(b, TID)?,
        ppid: u32_at(b, PPID)?,
        uid: u32_at(b, UID)?,
        gid: u32_at(b, GID)?,
        comm: cstr_at(b, COMM, COMM_LEN)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32, pid: u32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&42u64.to_le_bytes());
        b[8..12].copy_from_slice(&kind.to_le_bytes());
        b[12..16].copy_from_slice(&pid.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[32..36].copy_from_slice(b"true");
        b
    }

    /// The decoder's table is exactly what tracer.h asserts at compile time.
    #[test]
    fn layout_matches_tracer_h() {
        let header = include_str!("../../bpf/tracer.h");
        let asserted: Vec<(String, String, usize)> = header
            .lines()
            .filter_map(|l| {
                let args = l.trim().strip_prefix("BPFARM_AT(")?.strip_suffix(");")?;
                let mut it = args.split(',').map(str::trim);
                Some((it.next()?.to_owned(), it.next()?.to_owned(), it.next()?.parse().ok()?))
            })
            .collect();
        let mine: Vec<(String, String, usize)> =
            LAYOUT.iter().map(|(s, f, o)| (s.to_string(), f.to_string(), *o)).collect();
        assert_eq!(asserted, mine);
        assert_eq!(HEADER_LEN, EXEC_FILENAME);
    }

    #[test]
    fn decodes_exec_and_connect() {
        let mut exec = header(1, 77);
        let mut path = vec![0u8; PATH_LEN];
        path[..9].copy_from_slice(b"/bin/true");
        exec.extend(path);
        let e = decode(&exec).unwrap();
        assert_eq!((e.name(), e.pid, e.ppid, e.comm.as_str()), ("exec", 77, 1, "true"));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event"], "exec");
        assert_eq!(json["filename"], "/bin/true");
        assert_eq!(json["pid"], 77);

        let mut c = header(5, 5);
        c.extend(3u32.to_le_bytes());
        c.extend(2u16.to_le_bytes());
        c.extend(8080u16.to_le_bytes());
        c.extend([127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&c).unwrap().details(), "127.0.0.1:8080");
        assert_eq!(decode(&header(99, 1)), None);
        assert_eq!(decode(&[0u8; 10]), None);
    }

    #[test]
    fn records_carry_wall_clock_time_and_host() {
        let mut exec = header(1, 77);
        exec.extend(vec![0u8; PATH_LEN]);
        let e = decode(&exec).unwrap();
        // ts_ns is 42 (see header()); an offset putting it at
        // 2025-11-25T12:00:00.000000001Z.
        let clock = WallClock::from_offset_ns(1_764_072_000_000_000_001 - 42);
        let r = Record::new(&e, &clock, "node-7");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["time"], "2025-11-25T12:00:00.000000001Z");
        assert_eq!(json["epoch_ns"], 1_764_072_000_000_000_001u64);
        assert_eq!(json["ts_ns"], 42);
        assert_eq!(json["host"], "node-7");
        assert_eq!(json["event"], "exec");
        // Before the epoch cannot happen for a real event: it saturates, not wraps.
        assert_eq!(WallClock::from_offset_ns(-100).epoch_ns(42), 0);
    }

    #[test]
    fn a_sampled_clock_maps_now_to_now() {
        let clock = WallClock::sample();
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let mono_ns = mono.tv_sec as u64 * 1_000_000_000 + mono.tv_nsec as u64;
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
        let err = (i128::from(clock.epoch_ns(mono_ns)) - wall).abs();
        assert!(err < 50_000_000, "mapped monotonic now is {err} ns off the wall clock");
    }
}

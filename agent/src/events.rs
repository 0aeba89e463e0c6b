//! Decoding the tracer's events: the Rust mirror of `bpf/tracer.h`. Offsets
//! are those of the C structs (naturally aligned, little-endian, explicit
//! padding), checked against a built object's BTF by a test.

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

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decodes one ring-buffer record; `None` for a short or unknown record.
pub fn decode(b: &[u8]) -> Option<Event> {
    if b.len() < HEADER_LEN {
        return None;
    }
    let body = &b[HEADER_LEN..];
    let detail = match u32_at(b, 8)? {
        1 => Detail::Exec { filename: cstr(body.get(..PATH_LEN.min(body.len()))?) },
        2 => Detail::Exit { exit_code: u32_at(body, 0)? as i32, signal: u32_at(body, 4)? },
        3 => Detail::Fork { child_pid: u32_at(body, 0)?, child_tid: u32_at(body, 4)? },
        4 => Detail::Open {
            dfd: u32_at(body, 0)? as i32,
            flags: u32_at(body, 4)?,
            mode: u32_at(body, 8)?,
            path: cstr(body.get(16..)?),
        },
        5 => {
            let fd = u32_at(body, 0)? as i32;
            let family = u16::from_le_bytes(body.get(4..6)?.try_into().ok()?);
            let port = u16::from_le_bytes(body.get(6..8)?.try_into().ok()?);
            let a = body.get(8..24)?;
            let (family, address) = match family {
                2 => ("inet", std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()),
                10 => ("inet6", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?).to_string()),
                _ => return None,
            };
            Detail::Connect { fd, family, address, port }
        }
        6 => Detail::Creds { new_uid: u32_at(body, 0)?, new_gid: u32_at(body, 4)? },
        _ => return None,
    };
    Some(Event {
        detail,
        ts_ns: u64::from_le_bytes(b[0..8].try_into().ok()?),
        pid: u32_at(b, 12)?,
        tid: u32_at(b, 16)?,
        ppid: u32_at(b, 20)?,
        uid: u32_at(b, 24)?,
        gid: u32_at(b, 28)?,
        comm: cstr(&b[32..32 + COMM_LEN]),
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
}

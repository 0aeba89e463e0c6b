//! What one input may cost: the limits every package unpack and every header
//! tree read is held to while it streams, so a hostile or broken input fails
//! its own kernel with a message naming the limit instead of filling the disk,
//! the memory or the clock.
//!
//! The defaults are an order of magnitude above the largest real header
//! packages (Debian's biggest `-common` package: 65 MB of tar, 10k entries,
//! files up to 6 MB, compression ratio under 9 at every point of the stream).

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

/// Configurable limits (`bpfarm-builder build --max-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One file: a tar member written into a tree, or a file hashed from a
    /// `--headers` tree.
    pub max_member_bytes: u64,
    /// Bytes decompressed from one package's data archive, including members
    /// the filter skips (they cost time even when nothing is written).
    pub max_package_bytes: u64,
    /// Bytes one header tree holds: written when a package is unpacked, read
    /// when a `--headers` tree is hashed.
    pub max_tree_bytes: u64,
    /// Entries in one package's data archive; files in one `--headers` tree.
    pub max_entries: u64,
    /// Decompressed bytes per compressed byte, checked continuously once
    /// [`RATIO_FLOOR`] bytes have come out.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_member_bytes: 64 << 20,
            max_package_bytes: 2 << 30,
            max_tree_bytes: 1 << 30,
            max_entries: 200_000,
            max_ratio: 100,
        }
    }
}

/// Below this many decompressed bytes the ratio is not judged: the first
/// blocks of any stream compress better than the whole.
pub const RATIO_FLOOR: u64 = 1 << 20;

/// The fixed cap on an RPM's signature and main header (index and data
/// each): a kernel-devel header with 20k files is a few MB; rpm itself
/// refuses headers over 256 MB.
pub const RPM_HEADER_BYTES: u64 = 64 << 20;

/// Fixed caps on control data (not configurable: real control archives are
/// a few hundred KB, and the control file a few KB).
pub const CONTROL_TAR_BYTES: u64 = 16 << 20;
pub const CONTROL_FILE_BYTES: u64 = 1 << 20;

/// Tar metadata between two entries (headers, GNU long names, pax records)
/// is read into memory by the tar reader: it gets this much at most.
pub const TAR_METADATA_BYTES: u64 = 1 << 20;

/// The memory an xz decoder may take (xz -9 needs 65 MiB; dpkg uses -6).
pub const XZ_MEMLIMIT: u64 = 128 << 20;

/// Which limit an input exceeded. `Display` names the flag that raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MemberBytes(u64),
    PackageBytes(u64),
    TreeBytes(u64),
    Entries(u64),
    Ratio(u64),
    ControlBytes(u64),
    TarMetadata(u64),
    RpmHeader(u64),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Limit::MemberBytes(n) => write!(f, "--max-member-bytes ({}) for one file", human(n)),
            Limit::PackageBytes(n) => {
                write!(f, "--max-package-bytes ({}) decompressed from one package", human(n))
            }
            Limit::TreeBytes(n) => write!(f, "--max-tree-bytes ({}) for one header tree", human(n)),
            Limit::Entries(n) => write!(f, "--max-entries ({n}) entries"),
            Limit::Ratio(n) => write!(f, "--max-ratio ({n}:1 decompressed to compressed)"),
            Limit::ControlBytes(n) => write!(f, "the {} cap on control data", human(n)),
            Limit::TarMetadata(n) => write!(f, "the {} cap on tar metadata (long names, pax records)", human(n)),
            Limit::RpmHeader(n) => write!(f, "the {} cap on an RPM header", human(n)),
        }
    }
}

/// `1073741824` → `1 GiB`; exact multiples only, else bytes.
pub fn human(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// Parses `1048576`, `64K`, `64M`, `64MiB`, `2G`, `2GB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 1048576, 64M, 2G)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M, G or T)")),
    };
    let v = n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err(format!("{s:?}: a limit must be above zero"));
    }
    Ok(v)
}

/// Counts bytes through a reader; shared so that a decompressed and a
/// compressed counter can be compared.
#[derive(Debug, Default, Clone)]
pub struct Counter(Rc<Cell<u64>>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Passes bytes through, adding them to a counter.
#[derive(Debug)]
pub struct Counting<R> {
    inner: R,
    counter: Counter,
}

impl<R> Counting<R> {
    pub fn new(inner: R, counter: Counter) -> Self {
        Self { inner, counter }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.0.set(self.counter.0.get() + n as u64);
        Ok(n)
    }
}

/// The state a [`Guarded`] reader shares with its owner: which limit
/// tripped (an `io::Error` loses its type inside the tar reader), and an
/// optional window that the stream may not read past.
#[derive(Debug, Default, Clone)]
pub struct Guard {
    tripped: Rc<Cell<Option<Limit>>>,
    window_end: Rc<Cell<Option<u64>>>,
    out: Counter,
}

impl Guard {
    /// The limit that stopped the stream, if one did.
    pub fn tripped(&self) -> Option<Limit> {
        self.tripped.get()
    }
    /// Bytes decompressed so far.
    pub fn decompressed(&self) -> u64 {
        self.out.get()
    }
    /// Allows `n` more bytes from here (`None`: no window), failing with
    /// `limit` past them.
    pub fn set_window(&self, n: Option<u64>) {
        self.window_end.set(n.map(|n| self.out.get().saturating_add(n)));
    }
}

/// A decompressed stream held to a total, a ratio against its compressed
/// counter, and an optional window (see [`Guard::set_window`]).
#[derive(Debug)]
pub struct Guarded<R> {
    inner: R,
    guard: Guard,
    compressed: Counter,
    total: Limit,
    max_total: u64,
    max_ratio: u64,
    window: Limit,
}

impl<R> Guarded<R> {
    /// `total` names the limit for `max_total`; `window` names the limit for
    /// reading past a window.
    pub fn new(
        inner: R,
        compressed: Counter,
        total: Limit,
        max_total: u64,
        max_ratio: u64,
        window: Limit,
    ) -> (Self, Guard) {
        let guard = Guard::default();
        (Self { inner, guard: guard.clone(), compressed, total, max_total, max_ratio, window }, guard)
    }

    /// Another reader counted against the same guard: one stream read in
    /// pieces (an RPM payload, handed out a file at a time) is held to one
    /// total and one ratio.
    pub fn resume(
        inner: R,
        guard: &Guard,
        compressed: Counter,
        total: Limit,
        max_total: u64,
        max_ratio: u64,
        window: Limit,
    ) -> Self {
        Self { inner, guard: guard.clone(), compressed, total, max_total, max_ratio, window }
    }

    fn trip(&self, limit: Limit) -> io::Error {
        self.guard.tripped.set(Some(limit));
        io::Error::other(format!("exceeds {limit}"))
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(l) = self.guard.tripped.get() {
            return Err(io::Error::other(format!("exceeds {l}")));
        }
        let done = self.guard.out.get();
        // Never hand out more than the limits allow, so a trip happens
        // before the bytes past it are produced.
        let mut room = self.max_total.saturating_sub(done);
        if let Some(end) = self.guard.window_end.get() {
            room = room.min(end.saturating_sub(done));
        }
        if room == 0 && !buf.is_empty() {
            // Is there more? One byte tells.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            let over_window = self.guard.window_end.get().is_some_and(|end| done >= end);
            return Err(self.trip(if over_window && done < self.max_total { self.window } else { self.total }));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let out = done + n as u64;
        self.guard.out.0.set(out);
        if out > RATIO_FLOOR && out / self.compressed.get().max(1) > self.max_ratio {
            return Err(self.trip(Limit::Ratio(self.max_ratio)));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(human(2 << 30), "2 GiB");
        assert_eq!(human(1000), "1000 bytes");
    }

    fn guarded(
        data: Vec<u8>,
        compressed: u64,
        max_total: u64,
        max_ratio: u64,
    ) -> (Guarded<io::Cursor<Vec<u8>>>, Guard) {
        let c = Counter::default();
        c.0.set(compressed);
        Guarded::new(
            io::Cursor::new(data),
            c,
            Limit::PackageBytes(max_total),
            max_total,
            max_ratio,
            Limit::TarMetadata(0),
        )
    }

    #[test]
    fn total_trips_before_bytes_past_it_come_out() {
        let (mut g, guard) = guarded(vec![0; 5000], 1 << 30, 4096, 100);
        let mut out = Vec::new();
        let e = g.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), 4096);
        assert!(e.to_string().contains("--max-package-bytes"), "{e}");
        assert_eq!(guard.tripped(), Some(Limit::PackageBytes(4096)));
    }

    #[test]
    fn exactly_the_total_is_fine() {
        let (mut g, guard) = guarded(vec![0; 4096], 1 << 30, 4096, 100);
        let mut out = Vec::new();
        g.read_to_end(&mut out).unwrap();
        assert_eq!(guard.tripped(), None);
    }

    #[test]
    fn ratio_trips_past_the_floor() {
        let (mut g, guard) = guarded(vec![0; 3 << 20], 1000, u64::MAX, 100);
        let mut out = Vec::new();
        assert!(g.read_to_end(&mut out).is_err());
        assert_eq!(guard.tripped(), Some(Limit::Ratio(100)));
        // Below the floor a high ratio is not judged.
        let (mut g, guard) = guarded(vec![0; RATIO_FLOOR as usize], 1, u64::MAX, 100);
        g.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(guard.tripped(), None);
    }

    #[test]
    fn window_bounds_reads_between_calls() {
        let (mut g, guard) = guarded(vec![0; 100], 1 << 30, 1 << 20, 100);
        guard.set_window(Some(10));
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).unwrap(), 10);
        assert!(g.read(&mut buf).is_err());
        assert_eq!(guard.tripped(), Some(Limit::TarMetadata(0)));
    }
}

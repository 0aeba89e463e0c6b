//! A suite's `InRelease`: its OpenPGP signature checked with `gpgv` against
//! the archive keyring (as apt does), and the signed text — only the signed
//! text, never bytes around it — parsed for the suite's names, dates,
//! arches, components and the SHA256 of every index file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bpfarm_object::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("could not run gpgv (install gpgv: ci/install-deps): {0}")]
    Gpgv(#[source] std::io::Error),
    #[error("keyring {0} does not exist (install debian-archive-keyring, or pass --keyring)")]
    NoKeyring(PathBuf),
    #[error("the OpenPGP signature does not verify against {keyring}: {detail}")]
    BadSignature { keyring: PathBuf, detail: String },
    #[error("a scratch folder for gpgv: {0}")]
    Scratch(#[source] std::io::Error),
    #[error("the signed text is not UTF-8")]
    NotText,
    #[error("SHA256 line {line:?} is not `<hex> <size> <path>`")]
    BadHashLine { line: String },
}

/// The fields of a Release file this project uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub date: Option<String>,
    pub valid_until: Option<String>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// Path below `dists/<suite>/` → (size, sha256).
    pub sha256: BTreeMap<String, (u64, Digest)>,
}

/// Checks `inrelease` with `gpgv --keyring <keyring>` and returns the text
/// the signature covers (what gpgv writes with `--output`). Succeeds only
/// when gpgv exits 0 and reports at least one `VALIDSIG` and no `BADSIG`.
pub fn verify(inrelease: &[u8], keyring: &Path) -> Result<String, ReleaseError> {
    if !keyring.is_file() {
        return Err(ReleaseError::NoKeyring(keyring.to_owned()));
    }
    let dir = tempfile::Builder::new().prefix("bpfarm-gpgv-").tempdir().map_err(ReleaseError::Scratch)?;
    let input = dir.path().join("InRelease");
    let output = dir.path().join("Release");
    std::fs::write(&input, inrelease).map_err(ReleaseError::Scratch)?;
    let out = Command::new("gpgv")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("GNUPGHOME", dir.path())
        .arg("--homedir")
        .arg(dir.path())
        .arg("--keyring")
        .arg(keyring)
        .args(["--status-fd", "1", "--output"])
        .arg(&output)
        .arg(&input)
        .stdin(Stdio::null())
        .output()
        .map_err(ReleaseError::Gpgv)?;
    let status = String::from_utf8_lossy(&out.stdout);
    let has = |tag: &str| status.lines().any(|l| l.strip_prefix("[GNUPG:] ").is_some_and(|r| r.starts_with(tag)));
    if !out.status.success() || !has("VALIDSIG ") || has("BADSIG ") || has("ERRSIG ") {
        let mut detail: Vec<String> = status
            .lines()
            .filter_map(|l| l.strip_prefix("[GNUPG:] "))
            .filter(|l| {
                ["BADSIG", "ERRSIG", "NO_PUBKEY", "NODATA", "EXPKEYSIG", "REVKEYSIG"].iter().any(|t| l.starts_with(t))
            })
            .map(str::to_owned)
            .collect();
        if detail.is_empty() {
            detail.push(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        return Err(ReleaseError::BadSignature { keyring: keyring.to_owned(), detail: detail.join("; ") });
    }
    let signed = std::fs::read(&output).map_err(ReleaseError::Scratch)?;
    String::from_utf8(signed).map_err(|_| ReleaseError::NotText)
}

/// Parses the (verified) Release text.
pub fn parse(text: &str) -> Result<Release, ReleaseError> {
    let mut r = Release::default();
    let mut in_sha256 = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if in_sha256 {
                let mut w = line.split_whitespace();
                let (Some(hex), Some(size), Some(path), None) = (w.next(), w.next(), w.next(), w.next()) else {
                    return Err(ReleaseError::BadHashLine { line: line.to_owned() });
                };
                let digest: Digest =
                    format!("sha256:{hex}").parse().map_err(|_| ReleaseError::BadHashLine { line: line.to_owned() })?;
                let size: u64 = size.parse().map_err(|_| ReleaseError::BadHashLine { line: line.to_owned() })?;
                r.sha256.insert(path.to_owned(), (size, digest));
            }
            continue;
        }
        in_sha256 = false;
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let words = || v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        match k {
            "Suite" => r.suite = Some(v.to_owned()),
            "Codename" => r.codename = Some(v.to_owned()),
            "Date" => r.date = Some(v.to_owned()),
            "Valid-Until" => r.valid_until = Some(v.to_owned()),
            "Architectures" => r.architectures = words(),
            "Components" => r.components = words(),
            "SHA256" => in_sha256 = true,
            _ => {}
        }
    }
    Ok(r)
}

impl Release {
    /// The `Packages.xz` of `arch` in the `main` component (`updates/main`
    /// on the security archive, whose files sit under `main/`): its path,
    /// size and sha256, and those of the uncompressed `Packages` if listed.
    pub fn packages_index(&self, arch: &str) -> Option<PackagesIndex> {
        let mut comps: Vec<&str> =
            self.components.iter().filter(|c| c.rsplit('/').next() == Some("main")).map(String::as_str).collect();
        comps.push("main");
        comps.iter().find_map(|c| {
            let path = format!("{c}/binary-{arch}/Packages.xz");
            let (size, digest) = self.sha256.get(&path)?.clone();
            let plain = self.sha256.get(&format!("{c}/binary-{arch}/Packages")).cloned();
            Some(PackagesIndex { path, size, digest, plain })
        })
    }

    /// Whether `Valid-Until` lies before `now` (seconds since the epoch);
    /// `None` when the file has no (readable) `Valid-Until`.
    pub fn expired(&self, now: u64) -> Option<bool> {
        let until = self.valid_until.as_deref().and_then(parse_date)?;
        Some(until < now)
    }
}

/// Where one arch's package index is, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagesIndex {
    pub path: String,
    pub size: u64,
    pub digest: Digest,
    /// The uncompressed index's (size, sha256).
    pub plain: Option<(u64, Digest)>,
}

/// A Release date (`Sat, 09 Aug 2025 09:16:30 UTC`) in seconds since the epoch.
pub fn parse_date(s: &str) -> Option<u64> {
    let mut w = s.split_whitespace();
    let first = w.next()?;
    let day = if first.ends_with(',') { w.next()? } else { first };
    let day: u64 = day.parse().ok()?;
    let month = w.next()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == month)? as u64
        + 1;
    let year: i64 = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if !matches!(w.next(), Some("UTC" | "GMT" | "+0000") | None) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nSuite: oldoldstable-security\nCodename: bullseye-security\nDate: Sat, 12 Sep 2026 09:27:08 UTC\nValid-Until: Sat, 19 Sep 2026 09:27:08 UTC\nArchitectures: amd64 arm64\nComponents: updates/main updates/contrib\nSHA256:\n 7911a94a7d45b4b674578ffccb43a9c9b44f3364ffab3f9c5df79b650bb6de36  3047551 main/binary-amd64/Packages\n f8863ad9e81b60ff7056c01764e15c3c6ec9e144ab6874304d0e4349af1a5fb1   474876 main/binary-amd64/Packages.xz\n";

    #[test]
    fn parses_release_and_finds_the_index() {
        let r = parse(RELEASE).unwrap();
        assert_eq!(r.codename.as_deref(), Some("bullseye-security"));
        assert_eq!(r.architectures, ["amd64", "arm64"]);
        let i = r.packages_index("amd64").unwrap();
        assert_eq!(i.path, "main/binary-amd64/Packages.xz");
        assert_eq!(i.size, 474876);
        assert_eq!(i.plain.unwrap().0, 3047551);
        assert!(r.packages_index("arm64").is_none());
    }

    #[test]
    fn malformed_hash_lines_are_errors() {
        let e = parse("SHA256:\n nothex 12 main/x\n").unwrap_err();
        assert!(matches!(e, ReleaseError::BadHashLine { .. }), "{e}");
    }

    #[test]
    fn dates_and_expiry() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(parse_date("Sat, 09 Aug 2025 09:16:30 UTC"), Some(1_754_730_990));
        assert_eq!(parse_date("not a date"), None);
        let r = parse(RELEASE).unwrap();
        let until = parse_date("Sat, 19 Sep 2026 09:27:08 UTC").unwrap();
        assert_eq!(r.expired(until + 1), Some(true));
        assert_eq!(r.expired(until - 1), Some(false));
    }
}

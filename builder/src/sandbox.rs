//! The compiler's sandbox: clang and llc see the header trees, the program
//! sources and the toolchain (read only), one work folder (read-write), and
//! nothing else, so a header that includes a host file (`#include
//! "/etc/shadow"`) gets "permission denied" or "file not found" instead of
//! that file's content in an error message that may be published.
//!
//! Two mechanisms, tried in this order (`--sandbox auto`):
//! - **Landlock** (Linux 5.13+, unprivileged): the ruleset is built in the
//!   builder, before the fork; the child only calls `prctl(NO_NEW_PRIVS)` and
//!   `landlock_restrict_self` on its descriptor before exec — two system calls,
//!   nothing that allocates, as a child forked from a multi-threaded process
//!   must. TCP and, where the kernel has them, signal and abstract-socket
//!   scopes are denied too.
//! - **A mount namespace** (root, or an unprivileged user namespace): the
//!   child gets a private tmpfs root holding bind mounts of exactly the
//!   allowed paths (read-only but the work folder), pivots into it and drops
//!   the old root. Every path, mount flag and uid map is prepared before the
//!   fork; the child runs only system calls.
//!
//! When neither is available the build refuses to compile unless the
//! operator passes `--no-sandbox`. Which one is in force is checked once at
//! start (a probe runs `clang --version` inside it) and printed at `-v`.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};

/// Which sandbox to use (`--sandbox`, `--no-sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Landlock, else a mount namespace, else refuse to compile.
    #[default]
    Auto,
    Landlock,
    MountNamespace,
    /// No sandbox: headers can read whatever this user can.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no sandbox for the compiler ({reasons}); refusing to compile. Pass --no-sandbox to compile without one \
         (a header could then read any file this user can)"
    )]
    Unavailable { reasons: String },
    #[error("compiler sandbox: {what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("compiler sandbox: Landlock: {0}")]
    Landlock(String),
}

fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Setup { what, source }
}

/// What one sandboxed command may touch beyond the system's libraries and
/// the toolchain.
#[derive(Debug, Clone)]
pub struct Confinement<'a> {
    /// Read (and execute) only.
    pub read: Vec<&'a Path>,
    /// Read and write.
    pub write: Vec<&'a Path>,
    /// The command's working folder (one of the above).
    pub cwd: &'a Path,
}

#[derive(Debug, Clone)]
enum Kind {
    Landlock { abi: i32 },
    MountNamespace { user_ns: bool, root: PathBuf },
    Off,
}

/// A checked sandbox, ready to confine commands.
#[derive(Debug, Clone)]
pub struct Sandbox {
    kind: Kind,
    /// System paths every tool needs read access to (those that exist).
    system: Arc<Vec<PathBuf>>,
}

/// Libraries, the loader's cache and the system's programs (a compiler may
/// be a wrapper script; none of these hold secrets); the toolchain's own
/// folders are added from where clang and llc really are.
const SYSTEM_READ: [&str; 9] =
    ["/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/usr/bin", "/bin", "/etc/ld.so.cache"];

impl Sandbox {
    /// No sandbox at all (`--no-sandbox`).
    pub fn off() -> Self {
        Self { kind: Kind::Off, system: Arc::new(Vec::new()) }
    }

    /// Picks and checks a sandbox: `tools` are the executables it must be
    /// able to run (their real folders become readable); `scratch` is a
    /// folder of the builder's own for the namespace root and the probe.
    pub fn new(mode: SandboxMode, tools: &[&Path], scratch: &Path) -> Result<Self, SandboxError> {
        let mut system: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).filter(|p| p.exists()).collect();
        for t in tools {
            // The path the tool is run by (a mount namespace recreates its
            // symlinks), and the install it lives in when that is a
            // `<prefix>/bin`: clang is in /usr/lib/llvm-14/bin, its resource
            // headers under /usr/lib/llvm-14/lib. Nothing wider: a tool in
            // some other folder gets only itself.
            system.push(t.to_path_buf());
            if let Ok(real) = t.canonicalize()
                && let Some(bin) = real.parent().filter(|b| b.file_name().is_some_and(|n| n == "bin"))
                && let Some(prefix) = bin.parent().filter(|p| *p != Path::new("/"))
                && !system.iter().any(|s| prefix.starts_with(s))
            {
                system.push(prefix.to_owned());
            }
        }
        let system = Arc::new(system);
        let probe_tool = tools.first().copied();
        let try_landlock = || -> Result<Sandbox, String> {
            let abi = landlock_abi();
            if abi < 1 {
                return Err(format!("Landlock is not enabled in this kernel (ABI {abi})"));
            }
            let s = Sandbox { kind: Kind::Landlock { abi }, system: system.clone() };
            s.probe(probe_tool, scratch).map_err(|e| format!("Landlock: {e}"))?;
            Ok(s)
        };
        let try_namespace = || -> Result<Sandbox, String> {
            // SAFETY: geteuid has no preconditions.
            let user_ns = unsafe { libc::geteuid() } != 0;
            let root = scratch.join(".sandbox-root");
            std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            let s = Sandbox { kind: Kind::MountNamespace { user_ns, root }, system: system.clone() };
            s.probe(probe_tool, scratch).map_err(|e| format!("mount namespace: {e}"))?;
            Ok(s)
        };
        match mode {
            SandboxMode::Off => Ok(Self::off()),
            SandboxMode::Landlock => try_landlock().map_err(|reasons| SandboxError::Unavailable { reasons }),
            SandboxMode::MountNamespace => try_namespace().map_err(|reasons| SandboxError::Unavailable { reasons }),
            SandboxMode::Auto => try_landlock()
                .or_else(|a| try_namespace().map_err(|b| SandboxError::Unavailable { reasons: format!("{a}; {b}") })),
        }
    }

    /// Whether commands are confined at all.
    pub fn is_on(&self) -> bool {
        !matches!(self.kind, Kind::Off)
    }

    /// Runs `tool --version` confined to nothing but the system paths: the
    /// sandbox can be set up here and the toolchain runs inside it.
    fn probe(&self, tool: Option<&Path>, scratch: &Path) -> Result<(), String> {
        let Some(tool) = tool else { return Ok(()) };
        let work = tempfile::Builder::new().prefix("probe-").tempdir_in(scratch).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(tool);
        cmd.arg("--version").env_clear().current_dir(work.path()).stdin(Stdio::null());
        let c = Confinement { read: vec![], write: vec![work.path()], cwd: work.path() };
        self.confine(&mut cmd, &c).map_err(|e| e.to_string())?;
        let out = cmd.output().map_err(|e| format!("{} --version: {e}", tool.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} --version failed inside it ({}): {}",
                tool.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Arms `cmd` so that its child confines itself to `c` before exec.
    pub fn confine(&self, cmd: &mut Command, c: &Confinement<'_>) -> Result<(), SandboxError> {
        match &self.kind {
            Kind::Off => Ok(()),
            Kind::Landlock { .. } => {
                let fd = self.landlock_ruleset(c)?;
                // SAFETY: the closure runs in the child between fork and
                // exec and makes two system calls only; no allocation, no
                // lock. `fd` stays open in the parent until `cmd` is dropped
                // (after spawn), and is close-on-exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        if libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Ok(())
            }
            Kind::MountNamespace { user_ns, root } => {
                let plan = NsPlan::new(*user_ns, root, &self.system, c)?;
                // SAFETY: as above: `plan` holds every string and flag the
                // child needs, prepared before the fork; `NsPlan::enter` only
                // makes system calls on them.
                unsafe {
                    cmd.pre_exec(move || plan.enter());
                }
                Ok(())
            }
        }
    }

    fn landlock_ruleset(&self, c: &Confinement<'_>) -> Result<OwnedFd, SandboxError> {
        let ll = |e: &dyn fmt::Display| SandboxError::Landlock(e.to_string());
        // The rights of ABI v6: reading, writing, executing, renaming across
        // folders, truncating, device ioctls. A kernel with fewer gets what
        // it has (v1 at least, or this fails).
        let abi = ABI::V6;
        let read = AccessFs::from_read(abi);
        let file_read = read & AccessFs::from_file(abi);
        let mut rs = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V1))
            .map_err(|e| ll(&e))?
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(abi))
            .map_err(|e| ll(&e))?
            .handle_access(AccessNet::from_all(abi))
            .map_err(|e| ll(&e))?
            .scope(Scope::from_all(abi))
            .map_err(|e| ll(&e))?
            .create()
            .map_err(|e| ll(&e))?;
        let rule = |p: &Path, access: BitFlags<AccessFs>| -> Result<PathBeneath<PathFd>, SandboxError> {
            let fd = PathFd::new(p).map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
            Ok(PathBeneath::new(fd, access))
        };
        for p in self.system.iter().map(PathBuf::as_path).chain(c.read.iter().copied()) {
            let access = if p.is_dir() { read } else { file_read };
            rs = rs.add_rule(rule(p, access)?).map_err(|e| ll(&e))?;
        }
        for p in &c.write {
            rs = rs.add_rule(rule(p, AccessFs::from_all(abi))?).map_err(|e| ll(&e))?;
        }
        let null_access = AccessFs::ReadFile | AccessFs::WriteFile;
        rs = rs.add_rule(rule(Path::new("/dev/null"), null_access)?).map_err(|e| ll(&e))?;
        let fd: Option<OwnedFd> = rs.into();
        fd.ok_or_else(|| SandboxError::Landlock("this kernel does not support Landlock".into()))
    }
}

impl fmt::Display for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Landlock { abi } => write!(
                f,
                "Landlock (ABI {abi}): clang and llc read only the header trees, the program and the toolchain, write only their work folder, no network"
            ),
            Kind::MountNamespace { user_ns, .. } => write!(
                f,
                "mount namespace{}: clang and llc see only the header trees, the program and the toolchain (read-only) and their work folder",
                if *user_ns { " in a user namespace" } else { "" }
            ),
            Kind::Off => write!(f, "OFF (--no-sandbox): headers can read any file this user can"),
        }
    }
}

impl Sandbox {
    /// A short name for reports: `landlock`, `mount-namespace`, `off`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Landlock { .. } => "landlock",
            Kind::MountNamespace { .. } => "mount-namespace",
            Kind::Off => "off",
        }
    }
}

/// The running kernel's Landlock ABI version (0 or less: none).
fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the documented version query: null attributes, size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0)
}

fn cstring(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Setup { what: p.display().to_string(), source: io::Error::other("NUL in path") })
}

/// One step of building the namespace's root, ready for the child.
#[derive(Debug)]
enum Step {
    Mkdir(CString),
    Touch(CString),
    Symlink {
        target: CString,
        at: CString,
    },
    Bind {
        src: CString,
        dst: CString,
    },
    /// Remount a bind read-only, keeping the flags the kernel locks.
    ReadOnly {
        dst: CString,
        flags: libc::c_ulong,
    },
}

/// Everything the child needs to enter its mount namespace, prepared before
/// the fork.
#[derive(Debug)]
struct NsPlan {
    /// `(uid_map, gid_map)` contents when not root.
    user: Option<(CString, CString)>,
    root: CString,
    steps: Vec<Step>,
    cwd: CString,
}

/// The mount flags a user namespace may not clear on a remount.
fn locked_flags(src: &CString) -> Result<libc::c_ulong, SandboxError> {
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `src` is a valid C string, `st` a valid out pointer.
    if unsafe { libc::statvfs(src.as_ptr(), &mut st) } != 0 {
        return Err(setup(src.to_string_lossy().into_owned())(io::Error::last_os_error()));
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// `a/b/../c` → `a/c`, lexically (used on paths whose earlier components
/// are known not to be symlinks).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The paths of the new root: symlinks to recreate (so the paths tools are
/// given still resolve: `/usr/bin/clang`, `/lib64/ld-linux…`,
/// `/lib/modules/<r>/build`) and real paths to bind.
#[derive(Debug, Default)]
struct Layout {
    links: Vec<(PathBuf, PathBuf)>,
    binds: Vec<(PathBuf, bool)>,
}

impl Layout {
    fn add(&mut self, p: &Path, writable: bool, hops: u32) -> Result<(), SandboxError> {
        if hops > 40 {
            return Err(setup(p.display().to_string())(io::Error::other("too many levels of symlinks")));
        }
        let p = if p.is_absolute() {
            normalize(p)
        } else {
            normalize(&std::env::current_dir().map_err(setup("cwd"))?.join(p))
        };
        let mut cur = PathBuf::from("/");
        for comp in p.components().skip(1) {
            cur.push(comp);
            let md = std::fs::symlink_metadata(&cur).map_err(setup(cur.display().to_string()))?;
            if md.file_type().is_symlink() {
                let target = std::fs::read_link(&cur).map_err(setup(cur.display().to_string()))?;
                let resolved = cur.parent().unwrap_or(Path::new("/")).join(&target);
                let rest = p.strip_prefix(&cur).unwrap_or(Path::new(""));
                if !self.links.iter().any(|(at, _)| *at == cur) {
                    self.links.push((cur.clone(), target));
                }
                return self.add(&resolved.join(rest), writable, hops + 1);
            }
        }
        if !self.binds.iter().any(|(b, w)| *b == p && *w == writable) {
            self.binds.push((p, writable));
        }
        Ok(())
    }
}

impl NsPlan {
    fn new(user_ns: bool, root: &Path, system: &[PathBuf], c: &Confinement<'_>) -> Result<Self, SandboxError> {
        let mut layout = Layout::default();
        for p in system.iter().map(PathBuf::as_path).chain(c.read.iter().copied()).chain([c.cwd]) {
            layout.add(p, false, 0)?;
        }
        for p in c.write.iter().copied().chain([Path::new("/dev/null")]) {
            layout.add(p, true, 0)?;
        }
        let Layout { links, mut binds } = layout;
        // A path both read and written is written.
        binds.retain(|(p, w)| *w || !c.write.iter().any(|x| x.canonicalize().is_ok_and(|x| x == *p)));
        // Parents before children, so a nested bind lands inside its parent's.
        binds.sort_by_key(|(p, _)| p.components().count());
        let in_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut steps = Vec::new();
        let mut bound: Vec<&PathBuf> = Vec::new();
        // Creates the folders leading to `p` in the new root, unless a bind
        // already shows them (then they exist: they are the real ones).
        let mkdirs = |steps: &mut Vec<Step>, bound: &[&PathBuf], p: &Path| -> Result<(), SandboxError> {
            let mut made = PathBuf::from("/");
            for comp in p.components().skip(1) {
                made.push(comp);
                if bound.iter().any(|b| made.starts_with(b)) {
                    return Ok(());
                }
                steps.push(Step::Mkdir(cstring(&in_root(&made))?));
            }
            Ok(())
        };
        for (p, writable) in &binds {
            let inside = bound.iter().any(|b| p.starts_with(b));
            if !inside {
                if let Some(parent) = p.parent() {
                    mkdirs(&mut steps, &bound, parent)?;
                }
                let dst = cstring(&in_root(p))?;
                steps.push(if p.is_dir() { Step::Mkdir(dst) } else { Step::Touch(dst) });
            } else if bound.contains(&p) {
                continue;
            }
            let src = cstring(p)?;
            let flags = locked_flags(&src)?;
            let dst = cstring(&in_root(p))?;
            steps.push(Step::Bind { src, dst: dst.clone() });
            if !writable {
                steps.push(Step::ReadOnly { dst, flags });
            }
            bound.push(p);
        }
        for (at, target) in &links {
            if bound.iter().any(|b| at.starts_with(b)) {
                continue; // visible through a bind already
            }
            if let Some(parent) = at.parent() {
                mkdirs(&mut steps, &bound, parent)?;
            }
            steps.push(Step::Symlink { target: cstring(target)?, at: cstring(&in_root(at))? });
        }
        let user = if user_ns {
            // SAFETY: getuid/getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let map =
                |id: u32| CString::new(format!("0 {id} 1\n")).map_err(|_| SandboxError::Landlock("uid map".into()));
            Some((map(uid)?, map(gid)?))
        } else {
            None
        };
        let cwd = normalize(&std::env::current_dir().map_err(setup("cwd"))?.join(c.cwd));
        Ok(Self { user, root: cstring(root)?, steps, cwd: cstring(&cwd)? })
    }

    /// In the child: unshare, build the root, pivot into it. System calls
    /// only.
    fn enter(&self) -> io::Result<()> {
        fn check(r: libc::c_int) -> io::Result<()> {
            if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        }
        fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
            // SAFETY: `path` is NUL-terminated; the fd is closed below.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: writing our own buffer to our own fd.
            let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            let err = io::Error::last_os_error();
            // SAFETY: closing the fd opened above.
            unsafe { libc::close(fd) };
            if n != data.len() as isize { Err(err) } else { Ok(()) }
        }
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every pointer below is a NUL-terminated string owned by
        // `self` (or a literal), alive for the whole call.
        unsafe {
            match &self.user {
                Some((uid_map, gid_map)) => {
                    check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                    write_file(c"/proc/self/setgroups", b"deny")?;
                    write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
                    write_file(c"/proc/self/gid_map", gid_map.as_bytes())?;
                }
                None => check(libc::unshare(libc::CLONE_NEWNS))?,
            }
            check(libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            for step in &self.steps {
                match step {
                    Step::Mkdir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) != 0 {
                            let e = io::Error::last_os_error();
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(e);
                            }
                        }
                    }
                    Step::Touch(p) => {
                        let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644);
                        if fd < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        libc::close(fd);
                    }
                    Step::Symlink { target, at } => check(libc::symlink(target.as_ptr(), at.as_ptr()))?,
                    Step::Bind { src, dst } => check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?,
                    Step::ReadOnly { dst, flags } => check(libc::mount(
                        null,
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                        std::ptr::null(),
                    ))?,
                }
            }
            // Make the new root `/` and drop the old one from this namespace.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(self.cwd.as_ptr()))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

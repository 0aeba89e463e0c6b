//! The one compile implementation (the builder's, and the agent's local
//! build): clang run hermetically with fixed flags, in one of two modes.
//!
//! - Kernel headers: clang's front end for the headers' own arch
//!   (`--target=x86_64-linux-gnu` / `aarch64-linux-gnu`, so arch inline asm
//!   in the headers parses) emits LLVM IR, and `llc -march=bpfel` turns it
//!   into a BPF object. A plain `-target bpf` front end fails on arm64
//!   headers.
//! - BTF: `--target=bpfel` against a `vmlinux.h` generated from the kernel's
//!   BTF.
//!
//! Hermetic: the environment is cleared but for `PATH`, the working folder
//! is the program folder, and every input folder is mapped to a fixed name
//! in debug info, so the bytes depend on the inputs and not on where they sit.
//!
//! Confined: clang and llc run in the job's `Sandbox` (see `sandbox`): they
//! read only the kernel's folders, the program folder and the toolchain, and
//! write only the work folder; the object is moved out of it afterwards.
//!
//! Per kernel tree, two things come from the tree itself rather than from a
//! table of versions: the C dialect flags its Makefile compiles with
//! (`tree_flags`: `-std=gnu11`, `-fms-extensions` from
//! `CONFIG_CC_MS_EXTENSIONS`, …, from an allowlist), and the oldest clang
//! it accepts (`clang_minimum`), which picks one of the installed clangs
//! (`Toolchains::select`).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bpfarm_object::{Arch, BuildMode, Flags};

use crate::program::MAIN_SOURCE;
use crate::sandbox::{Confinement, Sandbox, SandboxError};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{tool} not found on PATH ({path}); install clang and llvm (ci/install-deps)")]
    ToolMissing { tool: &'static str, path: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("moving the object out of {work}: {source}")]
    Output {
        work: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel tree needs clang >= {minimum} ({why}); installed: {have} (ci/install-deps installs clang-15, -16 and -19)"
    )]
    NoClang { minimum: ClangVersion, why: String, have: String },
    #[error("{file}: {reason}")]
    TreeFlags { file: PathBuf, reason: String },
}

/// A clang version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClangVersion(pub u32, pub u32, pub u32);

impl std::fmt::Display for ClangVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl ClangVersion {
    /// From `clang --version`'s first line (`Debian clang version 14.0.6`).
    pub fn from_version_line(line: &str) -> Option<Self> {
        let rest = &line[line.find("clang version ")? + "clang version ".len()..];
        let v = rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
        let mut n = v.split('.').map(|x| x.parse::<u32>().ok());
        Some(Self(n.next()??, n.next().flatten().unwrap_or(0), n.next().flatten().unwrap_or(0)))
    }

    /// From the kernel's `CLANG_VERSION` encoding (`100001` is 10.0.1).
    pub fn from_kernel_number(n: u32) -> Self {
        Self(n / 10000, n / 100 % 100, n % 100)
    }
}

/// clang and llc, found once, with their identity for cache keys.
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub clang: PathBuf,
    pub llc: PathBuf,
    path_env: OsString,
    resource_include: PathBuf,
    /// `clang --version` and `llc --version`, first lines.
    pub clang_version: String,
    pub llc_version: String,
    /// Parsed from `clang_version`.
    pub version: Option<ClangVersion>,
}

/// The first executable `name` on `path`.
fn which(name: &str, path: &OsString) -> Option<PathBuf> {
    which::which_in(name, Some(path), "/").ok()
}

fn first_line_of(cmd: &Path, args: &[&str], path_env: &OsString) -> Result<String, CompileError> {
    let out =
        Command::new(cmd).args(args).env_clear().env("PATH", path_env).output().map_err(|source| {
            CompileError::Spawn { command: format!("{} {}", cmd.display(), args.join(" ")), source }
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().map(str::trim).find(|l| l.contains("version")).unwrap_or_else(|| text.trim()).to_owned())
}

impl Toolchain {
    /// Finds `clang` and `llc` on `PATH` (or the `-14` names Debian uses).
    pub fn discover() -> Result<Self, CompileError> {
        let path_env = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let find = |tool: &'static str, alts: &[&str]| {
            std::iter::once(tool)
                .chain(alts.iter().copied())
                .find_map(|n| which(n, &path_env))
                .ok_or_else(|| CompileError::ToolMissing { tool, path: path_env.to_string_lossy().into_owned() })
        };
        let clang = find("clang", &["clang-16", "clang-14"])?;
        let llc = find("llc", &["llc-16", "llc-14"])?;
        Self::with(clang, llc, path_env)
    }

    fn with(clang: PathBuf, llc: PathBuf, path_env: OsString) -> Result<Self, CompileError> {
        let resource =
            Command::new(&clang).arg("-print-resource-dir").env_clear().env("PATH", &path_env).output().map_err(
                |source| CompileError::Spawn { command: format!("{} -print-resource-dir", clang.display()), source },
            )?;
        let resource_include = PathBuf::from(String::from_utf8_lossy(&resource.stdout).trim()).join("include");
        let clang_version = first_line_of(&clang, &["--version"], &path_env)?;
        let llc_version = first_line_of(&llc, &["--version"], &path_env)?;
        let version = ClangVersion::from_version_line(&clang_version);
        Ok(Self { clang, llc, path_env, resource_include, clang_version, llc_version, version })
    }

    /// What the cache key records of the compiler.
    pub fn identity(&self) -> String {
        format!("{} | {}", self.clang_version, self.llc_version)
    }
}

/// Every installed clang the builder may use: the default one (`clang` on
/// `PATH`) and Debian's versioned `clang-N` with their `llc-N`.
#[derive(Clone, Debug)]
pub struct Toolchains {
    pub default: Toolchain,
    /// Versioned toolchains, oldest first (the default's version included
    /// when it is installed under its versioned name too).
    pub versioned: Vec<Toolchain>,
}

impl Toolchains {
    pub fn discover() -> Result<Self, CompileError> {
        let default = Toolchain::discover()?;
        let path_env = default.path_env.clone();
        let mut versioned: Vec<Toolchain> = Vec::new();
        for n in 10..=40 {
            let (Some(clang), Some(llc)) =
                (which(&format!("clang-{n}"), &path_env), which(&format!("llc-{n}"), &path_env))
            else {
                continue;
            };
            let t = Toolchain::with(clang, llc, path_env.clone())?;
            if t.version.is_some_and(|v| v.0 == n) {
                versioned.push(t);
            }
        }
        versioned.sort_by_key(|t| t.version);
        Ok(Self { default, versioned })
    }

    /// Every toolchain, the default first (what the sandbox must let run).
    pub fn all(&self) -> impl Iterator<Item = &Toolchain> {
        std::iter::once(&self.default).chain(&self.versioned)
    }

    /// The toolchain for a tree whose oldest accepted clang is `minimum`:
    /// the default clang when it is new enough (so most kernels keep one
    /// compiler), else the oldest installed clang that is.
    pub fn select(&self, minimum: Option<&ClangMinimum>) -> Result<&Toolchain, CompileError> {
        let Some(min) = minimum else {
            return Ok(&self.default);
        };
        if self.default.version.is_some_and(|v| v >= min.version) {
            return Ok(&self.default);
        }
        self.versioned.iter().find(|t| t.version.is_some_and(|v| v >= min.version)).ok_or_else(|| {
            let mut have: Vec<String> = self.all().filter_map(|t| t.version).map(|v| v.to_string()).collect();
            have.dedup();
            CompileError::NoClang { minimum: min.version, why: min.why.clone(), have: have.join(", ") }
        })
    }
}

/// The oldest clang a kernel tree accepts, and where the tree says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClangMinimum {
    pub version: ClangVersion,
    pub why: String,
}

/// The oldest clang the tree accepts, from what the tree states:
/// `include/linux/compiler-clang.h`'s `#if CLANG_VERSION < N` + `#error`
/// (up to 5.14), `scripts/min-tool-version.sh`'s `llvm)` case where the
/// tree ships it (RPM kernel-devel), and, for a kernel configured with clang
/// (`CONFIG_CC_IS_CLANG`), that clang's major version, since its `.config`
/// enables what that compiler can do. `None` when the tree states nothing.
pub fn clang_minimum(source: &Path, build: &Path, arch: Arch) -> Option<ClangMinimum> {
    let mut found: Vec<ClangMinimum> = Vec::new();
    let header = source.join("include/linux/compiler-clang.h");
    if let Ok(text) = std::fs::read_to_string(&header) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(rest) = l.trim().strip_prefix("#if").map(str::trim) else {
                continue;
            };
            let Some(n) = rest.strip_prefix("CLANG_VERSION").and_then(|r| r.trim().strip_prefix('<')) else {
                continue;
            };
            let errors = lines[i + 1..]
                .iter()
                .take(3)
                .any(|l| l.trim_start().trim_start_matches('#').trim_start().starts_with("error"));
            if let (Ok(n), true) = (n.trim().parse::<u32>(), errors) {
                found.push(ClangMinimum {
                    version: ClangVersion::from_kernel_number(n),
                    why: "include/linux/compiler-clang.h".into(),
                });
            }
        }
    }
    for dir in [source, build] {
        if let Some(v) = std::fs::read_to_string(dir.join("scripts/min-tool-version.sh"))
            .ok()
            .and_then(|t| min_tool_llvm(&t, arch.kernel_dir()))
        {
            found.push(ClangMinimum { version: v, why: "scripts/min-tool-version.sh".into() });
        }
    }
    if let Ok(config) = std::fs::read_to_string(build.join(".config"))
        && config_value(&config, "CONFIG_CC_IS_CLANG").as_deref() == Some("y")
        && let Some(n) = config_value(&config, "CONFIG_CLANG_VERSION").and_then(|v| v.parse::<u32>().ok())
        && n > 0
    {
        let v = ClangVersion::from_kernel_number(n);
        found.push(ClangMinimum {
            version: ClangVersion(v.0, 0, 0),
            why: format!(".config: configured with clang {v}"),
        });
    }
    found.into_iter().max_by_key(|m| m.version)
}

/// The `llvm)` case of `min-tool-version.sh` for `srcarch`: the `echo`
/// under an `if`/`elif` naming `"$SRCARCH" = <srcarch>`, else the `else`
/// (or only) one.
fn min_tool_llvm(text: &str, srcarch: &str) -> Option<ClangVersion> {
    let body = text.split("llvm)").nth(1)?.split(";;").next()?;
    // The arches a test line names: `[ "$SRCARCH" = s390 -o "$SRCARCH" = x86 ]`.
    let names = |l: &str| -> Vec<String> {
        l.split("\"$SRCARCH\"")
            .skip(1)
            .filter_map(|p| p.trim_start().strip_prefix('='))
            .filter_map(|p| p.split_whitespace().next())
            .map(|w| w.trim_matches(|c| matches!(c, '"' | '\'' | ']' | ';')).to_owned())
            .collect()
    };
    let mut ours = None;
    let mut fallback = None;
    let mut cond: Option<bool> = None;
    for l in body.lines().map(str::trim) {
        if l.starts_with("if ") || l.starts_with("elif ") {
            cond = Some(names(l).iter().any(|n| n == srcarch));
        } else if l.starts_with("else") {
            cond = None;
        } else if let Some(v) = l.strip_prefix("echo ") {
            let mut n = v.trim().split('.').map(|x| x.parse::<u32>().ok());
            let Some(Some(major)) = n.next() else { continue };
            let ver = ClangVersion(major, n.next().flatten().unwrap_or(0), n.next().flatten().unwrap_or(0));
            match cond {
                Some(true) if ours.is_none() => ours = Some(ver),
                Some(_) => {}
                None => fallback = Some(ver),
            }
        }
    }
    ours.or(fallback)
}

/// `NAME=value` (quotes removed) in a `.config`.
fn config_value(config: &str, name: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_owned())
    })
}

/// Language flags a kernel may compile its headers with and that change how
/// the headers parse; nothing else from a tree reaches clang.
fn allowed_tree_flag(f: &str) -> bool {
    matches!(f, "-fms-extensions" | "-fms-anonymous-structs" | "-funsigned-char" | "-fsigned-char")
        || f.strip_prefix("-std=gnu")
            .is_some_and(|v| matches!(v, "89" | "99" | "9x" | "11" | "1x" | "17" | "18" | "2x" | "23"))
}

/// The dialect flags the tree's top `Makefile` adds to `KBUILD_CFLAGS` (and
/// `CC_FLAGS_DIALECT`, which 6.19+ adds to it): allowlisted flags written
/// there, and allowlisted flags in the values of `$(CONFIG_…)` references,
/// looked up in the build tree's `.config` (`CONFIG_CC_MS_EXTENSIONS=
/// "-fms-extensions"` in 6.19+). `ifdef` blocks are not evaluated: a flag the
/// tree writes anywhere in those variables counts. Nothing outside the
/// allowlist reaches clang. No Makefile (a bare tree): no flags.
pub fn tree_flags(source: &Path, build: &Path) -> Result<Vec<String>, CompileError> {
    let makefile = [source.join("Makefile"), build.join("Makefile")]
        .into_iter()
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("KBUILD_CFLAGS")));
    let Some(makefile) = makefile else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&makefile)
        .map_err(|e| CompileError::TreeFlags { file: makefile.clone(), reason: e.to_string() })?;
    let config = std::fs::read_to_string(build.join(".config")).unwrap_or_default();
    let mut flags: Vec<String> = Vec::new();
    let push = |f: &str, flags: &mut Vec<String>| {
        if f.starts_with("-std=") {
            flags.retain(|x| !x.starts_with("-std="));
        }
        if !flags.iter().any(|x| x == f) {
            flags.push(f.to_owned());
        }
    };
    for line in text.replace("\\\n", " ").lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some(rest) = ["KBUILD_CFLAGS", "CC_FLAGS_DIALECT"].iter().find_map(|v| line.strip_prefix(v)) else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(value) = [":=", "+=", "?=", "="].iter().find_map(|op| rest.strip_prefix(op)) else {
            continue;
        };
        for tok in value.split_whitespace() {
            if let Some(name) =
                tok.strip_prefix("$(").and_then(|t| t.strip_suffix(')')).filter(|n| n.starts_with("CONFIG_"))
            {
                // Warning options and the like (`CONFIG_CC_IMPLICIT_FALLTHROUGH`)
                // are not the dialect and are not passed on.
                for f in config_value(&config, name).unwrap_or_default().split_whitespace() {
                    if allowed_tree_flag(f) {
                        push(f, &mut flags);
                    }
                }
            } else if allowed_tree_flag(tok) {
                push(tok, &mut flags);
            }
        }
    }
    Ok(flags)
}

/// Where the kernel's types come from.
#[derive(Clone, Copy, Debug)]
pub enum Mode<'a> {
    /// `source`: the kernel source tree (Debian's `-common`); `build`: the
    /// configured build tree (the flavour package). May be the same folder.
    Headers { source: &'a Path, build: &'a Path },
    /// A folder holding `vmlinux.h`.
    Btf { vmlinux_dir: &'a Path },
}

impl Mode<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Mode::Headers { .. } => Kind::Headers,
            Mode::Btf { .. } => Kind::Btf,
        }
    }
}

/// A [`Mode`] without its folders: what the cache key and the metadata
/// record, known before any tree is unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Headers,
    Btf,
}

impl Kind {
    pub fn build_mode(self) -> BuildMode {
        match self {
            Kind::Headers => BuildMode::Headers,
            Kind::Btf => BuildMode::Btf,
        }
    }
}

const SRC: &str = "/bpfarm/kernel/source";
const BUILD: &str = "/bpfarm/kernel/build";
const BTF: &str = "/bpfarm/kernel/btf";
const PROGRAM: &str = "/bpfarm/tracer";

const WARNINGS: [&str; 8] = [
    "-Wno-unused-value",
    "-Wno-pointer-sign",
    "-Wno-compare-distinct-pointer-types",
    "-Wno-gnu-variable-sized-type-not-at-end",
    "-Wno-address-of-packed-member",
    "-Wno-tautological-compare",
    "-Wno-unknown-warning-option",
    "-Wno-unused-function",
];

/// The flags of a mode (clang's: the fixed ones, then `tree_flags`; llc's
/// in headers mode), with input folders written as the fixed names they are
/// mapped to. This is what the cache key and the metadata record;
/// `clang_args` substitutes the real folders.
pub fn flags(arch: Arch, kind: Kind, tree_flags: &[String]) -> Flags {
    let a = arch.kernel_dir();
    let mut f: Vec<String> = Vec::new();
    if kind == Kind::Headers {
        f.extend(["-nostdinc".into(), "-isystem".into(), "$CLANG_RESOURCE/include".into()]);
        for inc in [
            format!("{SRC}/arch/{a}/include"),
            format!("{BUILD}/arch/{a}/include/generated"),
            format!("{SRC}/include"),
            format!("{BUILD}/include"),
            format!("{SRC}/arch/{a}/include/uapi"),
            format!("{BUILD}/arch/{a}/include/generated/uapi"),
            format!("{SRC}/include/uapi"),
            format!("{BUILD}/include/generated/uapi"),
        ] {
            f.push(format!("-I{inc}"));
        }
        f.extend(["-include".into(), format!("{SRC}/include/linux/kconfig.h")]);
        f.extend(["-D__KERNEL__".into(), "-D__BPF_TRACING__".into()]);
        f.push(format!("--target={}", arch.clang_target()));
        f.push("-emit-llvm".into());
    } else {
        f.extend(["-DBPFARM_BTF".into(), format!("-I{BTF}"), "--target=bpfel".into()]);
    }
    f.push(format!("-D__TARGET_ARCH_{a}"));
    f.extend(WARNINGS.iter().map(|s| s.to_string()));
    // No unwind tables: the arch front end would emit .eh_frame, which is
    // meaningless in a BPF object.
    f.extend(
        [
            "-fno-stack-protector",
            "-fno-jump-tables",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-O2",
            "-g",
        ]
        .map(String::from),
    );
    f.extend(tree_flags.iter().cloned());
    let llc = if kind == Kind::Headers { llc_flags() } else { Vec::new() };
    Flags { clang: f, llc }
}

/// The `llc` flags of headers mode.
fn llc_flags() -> Vec<String> {
    ["-march=bpfel", "-filetype=obj"].map(String::from).to_vec()
}

/// One compile: program folder + kernel types → `out`.
#[derive(Debug)]
pub struct CompileJob<'a> {
    pub arch: Arch,
    pub mode: Mode<'a>,
    /// Flags the kernel tree asks for (`tree_flags`), after the fixed ones.
    pub tree_flags: &'a [String],
    pub program_dir: &'a Path,
    /// A scratch folder for intermediate files: the only folder the tools
    /// may write.
    pub work_dir: &'a Path,
    pub out: &'a Path,
    /// Where clang and llc run.
    pub sandbox: &'a Sandbox,
}

fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Toolchain {
    fn clang_args(&self, job: &CompileJob<'_>) -> Vec<String> {
        let sub = |s: &str| -> String {
            let mut s = s.replace("$CLANG_RESOURCE/include", &self.resource_include.to_string_lossy());
            match job.mode {
                Mode::Headers { source, build } => {
                    s = s.replace(SRC, &source.to_string_lossy()).replace(BUILD, &build.to_string_lossy());
                }
                Mode::Btf { vmlinux_dir } => s = s.replace(BTF, &vmlinux_dir.to_string_lossy()),
            }
            s
        };
        let mut args: Vec<String> =
            flags(job.arch, job.mode.kind(), job.tree_flags).clang.iter().map(|f| sub(f)).collect();
        let mut maps: Vec<(String, &str)> = vec![(job.program_dir.to_string_lossy().into_owned(), PROGRAM)];
        match job.mode {
            Mode::Headers { source, build } => {
                maps.push((source.to_string_lossy().into_owned(), SRC));
                if build != source {
                    maps.push((build.to_string_lossy().into_owned(), BUILD));
                }
            }
            Mode::Btf { vmlinux_dir } => maps.push((vmlinux_dir.to_string_lossy().into_owned(), BTF)),
        }
        for (from, to) in maps {
            args.push(format!("-fdebug-prefix-map={from}={to}"));
        }
        args.push(format!("-fdebug-compilation-dir={PROGRAM}"));
        args
    }

    fn run(&self, tool: &'static str, mut cmd: Command, job: &CompileJob<'_>) -> Result<ToolRun, CompileError> {
        cmd.env_clear().env("PATH", &self.path_env).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let command = render(&cmd);
        let mut read: Vec<&Path> = vec![job.program_dir];
        match job.mode {
            Mode::Headers { source, build } => read.extend([source, build]),
            Mode::Btf { vmlinux_dir } => read.push(vmlinux_dir),
        }
        job.sandbox.confine(&mut cmd, &Confinement { read, write: vec![job.work_dir], cwd: job.program_dir })?;
        let spawn = |source| CompileError::Spawn { command: command.clone(), source };
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(spawn)?;
        let mut stderr = Vec::new();
        if let Some(mut pipe) = child.stderr.take()
            && let Err(e) = pipe.read_to_end(&mut stderr)
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn(e));
        }
        let (status, cpu) = wait_with_cpu(&mut child).map_err(spawn)?;
        if !status.success() {
            return Err(CompileError::Failed {
                command,
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            });
        }
        Ok(ToolRun { tool, started, ended: Instant::now(), cpu })
    }

    /// Compiles the program; on success `job.out` holds the object, and
    /// the tools' runs say when each ran and the CPU it used.
    pub fn compile(&self, job: &CompileJob<'_>) -> Result<Vec<ToolRun>, CompileError> {
        let mut clang = Command::new(&self.clang);
        clang.current_dir(job.program_dir).args(self.clang_args(job));
        // The tools write only into the work folder; the object leaves it
        // when they are done.
        let obj = job.work_dir.join("tracer.o");
        let mut runs = Vec::new();
        match job.mode {
            Mode::Headers { .. } => {
                let ir = job.work_dir.join("tracer.bc");
                clang.arg("-c").arg(MAIN_SOURCE).arg("-o").arg(&ir);
                runs.push(self.run("clang", clang, job)?);
                let mut llc = Command::new(&self.llc);
                llc.current_dir(job.program_dir).args(llc_flags()).arg("-o").arg(&obj).arg(&ir);
                runs.push(self.run("llc", llc, job)?);
            }
            Mode::Btf { .. } => {
                clang.arg("-c").arg(MAIN_SOURCE).arg("-o").arg(&obj);
                runs.push(self.run("clang", clang, job)?);
            }
        }
        let moved = std::fs::rename(&obj, job.out).or_else(|_| std::fs::copy(&obj, job.out).map(|_| ()));
        moved.map_err(|source| CompileError::Output { work: job.work_dir.to_owned(), source })?;
        Ok(runs)
    }
}

/// One run of clang or llc: when, and the CPU time its process used.
#[derive(Debug, Clone, Copy)]
pub struct ToolRun {
    pub tool: &'static str,
    pub started: Instant,
    pub ended: Instant,
    pub cpu: Duration,
}

/// Waits for `child` and returns its exit status with the CPU time (user +
/// system) it and the children it waited for used.
fn wait_with_cpu(child: &mut Child) -> std::io::Result<(ExitStatus, Duration)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: wait4 fills the status and the zeroed rusage it is given; the
    // child is ours and not waited for anywhere else (std's `Child` does not
    // wait on drop).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((ExitStatus::from_raw(status), tv(ru.ru_utime) + tv(ru.ru_stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    #[test]
    fn dialect_of_a_5_10_makefile() {
        // As in Debian's 5.10 -common: one continued KBUILD_CFLAGS assignment.
        let t = tree(&[(
            "Makefile",
            "export KBUILD_USERCFLAGS := -Wall -O2 -std=gnu89\nKBUILD_CFLAGS   := -Wall -Wundef -fno-strict-aliasing \\\n\t\t   -fshort-wchar -fno-PIE \\\n\t\t   -std=gnu89\n",
        )]);
        assert_eq!(tree_flags(t.path(), t.path()).unwrap(), ["-std=gnu89"]);
    }

    #[test]
    fn dialect_of_a_7_x_makefile_reads_the_config() {
        let src = tree(&[(
            "Makefile",
            "KBUILD_CFLAGS :=\nKBUILD_CFLAGS += -fshort-wchar\nKBUILD_CFLAGS += -funsigned-char\nCC_FLAGS_DIALECT := -std=gnu11\n# Allow including a tagged struct\nCC_FLAGS_DIALECT += $(CONFIG_CC_MS_EXTENSIONS)\nifdef CONFIG_CC_IS_CLANG\nCC_FLAGS_DIALECT += -Wno-gnu\nendif\nKBUILD_CFLAGS += $(CC_FLAGS_DIALECT)\n",
        )]);
        let build = tree(&[(".config", "CONFIG_CC_IS_GCC=y\nCONFIG_CC_MS_EXTENSIONS=\"-fms-extensions\"\n")]);
        assert_eq!(tree_flags(src.path(), build.path()).unwrap(), ["-funsigned-char", "-std=gnu11", "-fms-extensions"]);
        // The same tree configured without the option: no flag.
        let plain = tree(&[(".config", "CONFIG_CC_IS_GCC=y\n")]);
        assert_eq!(tree_flags(src.path(), plain.path()).unwrap(), ["-funsigned-char", "-std=gnu11"]);
    }

    #[test]
    fn a_tree_cannot_smuggle_flags_to_clang() {
        let src = tree(&[(
            "Makefile",
            "KBUILD_CFLAGS += -fplugin=/tmp/evil.so -o/etc/x $(CONFIG_CC_MS_EXTENSIONS) $(CONFIG_CC_IMPLICIT_FALLTHROUGH)\n",
        )]);
        let build = tree(&[(
            ".config",
            "CONFIG_CC_MS_EXTENSIONS=\"-fms-extensions -fplugin=/tmp/evil.so\"\nCONFIG_CC_IMPLICIT_FALLTHROUGH=\"-Wimplicit-fallthrough=5\"\n",
        )]);
        assert_eq!(tree_flags(src.path(), build.path()).unwrap(), ["-fms-extensions"]);
    }

    #[test]
    fn a_bare_tree_has_no_flags() {
        let t = tree(&[("include/linux/sched.h", "")]);
        assert!(tree_flags(t.path(), t.path()).unwrap().is_empty());
    }

    #[test]
    fn minimum_from_compiler_clang_h() {
        let t = tree(&[(
            "include/linux/compiler-clang.h",
            "#define CLANG_VERSION (__clang_major__ * 10000 + __clang_minor__ * 100 + __clang_patchlevel__)\n#if CLANG_VERSION < 100001\n# error Sorry, your version of Clang is too old - please use 10.0.1 or newer.\n#endif\n",
        )]);
        let m = clang_minimum(t.path(), t.path(), Arch::X86_64).unwrap();
        assert_eq!(m.version, ClangVersion(10, 0, 1));
        // A newer tree states nothing there.
        let t = tree(&[("include/linux/compiler-clang.h", "#if CONFIG_CLANG_VERSION >= 230000\n#define X\n#endif\n")]);
        assert_eq!(clang_minimum(t.path(), t.path(), Arch::X86_64), None);
    }

    #[test]
    fn minimum_from_min_tool_version_per_arch() {
        let script = "case \"$1\" in\ngcc)\n\techo 5.1.0\n\t;;\nllvm)\n\tif [ \"$SRCARCH\" = s390 -o \"$SRCARCH\" = x86 ]; then\n\t\techo 15.0.0\n\telif [ \"$SRCARCH\" = loongarch ]; then\n\t\techo 18.0.0\n\telse\n\t\techo 13.0.1\n\tfi\n\t;;\nesac\n";
        let t = tree(&[("scripts/min-tool-version.sh", script)]);
        assert_eq!(clang_minimum(t.path(), t.path(), Arch::X86_64).unwrap().version, ClangVersion(15, 0, 0));
        assert_eq!(clang_minimum(t.path(), t.path(), Arch::Aarch64).unwrap().version, ClangVersion(13, 0, 1));
    }

    #[test]
    fn minimum_from_a_clang_configured_kernel() {
        let t = tree(&[(".config", "CONFIG_CC_IS_CLANG=y\nCONFIG_CLANG_VERSION=170006\n")]);
        let m = clang_minimum(t.path(), t.path(), Arch::Aarch64).unwrap();
        assert_eq!(m.version, ClangVersion(17, 0, 0));
        let gcc = tree(&[(".config", "CONFIG_CC_IS_GCC=y\nCONFIG_CLANG_VERSION=0\n")]);
        assert_eq!(clang_minimum(gcc.path(), gcc.path(), Arch::Aarch64), None);
    }

    fn fake(v: u32) -> Toolchain {
        Toolchain {
            clang: format!("/usr/bin/clang-{v}").into(),
            llc: format!("/usr/bin/llc-{v}").into(),
            path_env: OsString::new(),
            resource_include: PathBuf::new(),
            clang_version: format!("Debian clang version {v}.0.6"),
            llc_version: format!("Debian LLVM version {v}.0.6"),
            version: ClangVersion::from_version_line(&format!("Debian clang version {v}.0.6")),
        }
    }

    #[test]
    fn selection_keeps_the_default_when_it_is_new_enough() {
        let tcs = Toolchains { default: fake(14), versioned: vec![fake(14), fake(15), fake(16), fake(19)] };
        let min = |v| ClangMinimum { version: v, why: "test".into() };
        assert_eq!(tcs.select(None).unwrap().clang_version, "Debian clang version 14.0.6");
        assert_eq!(tcs.select(Some(&min(ClangVersion(10, 0, 1)))).unwrap().clang, PathBuf::from("/usr/bin/clang-14"));
        assert_eq!(tcs.select(Some(&min(ClangVersion(15, 0, 0)))).unwrap().clang, PathBuf::from("/usr/bin/clang-15"));
        assert_eq!(tcs.select(Some(&min(ClangVersion(17, 0, 0)))).unwrap().clang, PathBuf::from("/usr/bin/clang-19"));
        let e = tcs.select(Some(&min(ClangVersion(21, 0, 0)))).unwrap_err().to_string();
        assert!(e.contains(">= 21.0.0") && e.contains("14.0.6, 15.0.6, 16.0.6, 19.0.6"), "{e}");
    }

    #[test]
    fn version_lines() {
        assert_eq!(ClangVersion::from_version_line("Debian clang version 14.0.6"), Some(ClangVersion(14, 0, 6)));
        assert_eq!(
            ClangVersion::from_version_line("Ubuntu clang version 19.1.7 (++20250114103320+cd708029e0b2-1)"),
            Some(ClangVersion(19, 1, 7))
        );
        assert_eq!(ClangVersion::from_version_line("gcc (Debian) 12"), None);
    }
}

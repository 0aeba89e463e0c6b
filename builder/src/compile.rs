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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bpfarm_object::Arch;

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
}

fn which(name: &str, path: &OsString) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| p.is_file())
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
        let resource =
            Command::new(&clang).arg("-print-resource-dir").env_clear().env("PATH", &path_env).output().map_err(
                |source| CompileError::Spawn { command: format!("{} -print-resource-dir", clang.display()), source },
            )?;
        let resource_include = PathBuf::from(String::from_utf8_lossy(&resource.stdout).trim()).join("include");
        let clang_version = first_line_of(&clang, &["--version"], &path_env)?;
        let llc_version = first_line_of(&llc, &["--version"], &path_env)?;
        Ok(Self { clang, llc, path_env, resource_include, clang_version, llc_version })
    }

    /// What the cache key records of the compiler.
    pub fn identity(&self) -> String {
        format!("{} | {}", self.clang_version, self.llc_version)
    }
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
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Headers { .. } => "headers",
            Mode::Btf { .. } => "btf",
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

/// The clang flags of a mode, with input folders written as the fixed names
/// they are mapped to. This is what the cache key and the metadata record;
/// `clang_args` substitutes the real folders.
pub fn flags(arch: Arch, mode_name: &str) -> Vec<String> {
    let a = arch.kernel_dir();
    let mut f: Vec<String> = Vec::new();
    if mode_name == "headers" {
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
    f
}

/// The `llc` flags of headers mode.
pub fn llc_flags() -> Vec<String> {
    ["-march=bpfel", "-filetype=obj"].map(String::from).to_vec()
}

/// One compile: program folder + kernel types → `out`.
#[derive(Debug)]
pub struct CompileJob<'a> {
    pub arch: Arch,
    pub mode: Mode<'a>,
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
        let mut args: Vec<String> = flags(job.arch, job.mode.name()).iter().map(|f| sub(f)).collect();
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

    fn run(&self, mut cmd: Command, job: &CompileJob<'_>) -> Result<(), CompileError> {
        cmd.env_clear().env("PATH", &self.path_env).stdin(Stdio::null());
        let command = render(&cmd);
        let mut read: Vec<&Path> = vec![job.program_dir];
        match job.mode {
            Mode::Headers { source, build } => read.extend([source, build]),
            Mode::Btf { vmlinux_dir } => read.push(vmlinux_dir),
        }
        job.sandbox.confine(&mut cmd, &Confinement { read, write: vec![job.work_dir], cwd: job.program_dir })?;
        let out = cmd.output().map_err(|source| CompileError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            return Err(CompileError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Compiles the program; on success `job.out` holds the object.
    pub fn compile(&self, job: &CompileJob<'_>) -> Result<(), CompileError> {
        let mut clang = Command::new(&self.clang);
        clang.current_dir(job.program_dir).args(self.clang_args(job));
        // The tools write only into the work folder; the object leaves it
        // when they are done.
        let obj = job.work_dir.join("tracer.o");
        match job.mode {
            Mode::Headers { .. } => {
                let ir = job.work_dir.join("tracer.bc");
                clang.arg("-c").arg(MAIN_SOURCE).arg("-o").arg(&ir);
                self.run(clang, job)?;
                let mut llc = Command::new(&self.llc);
                llc.current_dir(job.program_dir).args(llc_flags()).arg("-o").arg(&obj).arg(&ir);
                self.run(llc, job)?;
            }
            Mode::Btf { .. } => {
                clang.arg("-c").arg(MAIN_SOURCE).arg("-o").arg(&obj);
                self.run(clang, job)?;
            }
        }
        let moved = std::fs::rename(&obj, job.out).or_else(|_| std::fs::copy(&obj, job.out).map(|_| ()));
        moved.map_err(|source| CompileError::Output { work: job.work_dir.to_owned(), source })
    }
}

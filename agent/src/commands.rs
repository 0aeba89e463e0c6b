//! What each subcommand does with the resolver's answer: print it
//! (`locate`, `fetch`, `build`), or load it and stream events (`run`).

use std::time::Duration;

use crate::cli::{Cli, Command, SettingsError};
use crate::resolve::{self, Mode, ResolveConfig, ResolveError, Step};
use crate::run::{self, Filters, Output, RunConfig, RunError};
use crate::trust::{TrustError, TrustedDir};

/// Why a command failed; [`AgentError::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// `build` in an agent without local builds: a usage error.
    #[error(
        "`build` needs local builds, and this agent was built without them (no `local-build` feature: it holds no compiler path); fetch the object with `fetch` instead"
    )]
    NoLocalBuild,
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// `locate` found nothing: its first line (the trail is printed already).
    #[error("{0}")]
    NothingToLoad(String),
    #[error("resolution returned no verified bytes")]
    NoBytes,
    #[error("{0}")]
    Capture(#[source] TrustError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("writing the answer: {0}")]
    Json(#[from] serde_json::Error),
    /// `locate --provenance` without a key: a usage error.
    #[error("locate --provenance needs --verify-key: an unverified statement proves nothing")]
    ProvenanceNeedsKey,
    #[error("no verified provenance to print: {0}")]
    NoProvenance(&'static str),
}

impl AgentError {
    /// 2 for usage errors, else 1 (see `--help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::NoLocalBuild | AgentError::ProvenanceNeedsKey => 2,
            AgentError::Settings(e) if e.is_usage() => 2,
            _ => 1,
        }
    }
}

/// Runs one command line.
pub fn execute(cli: Cli) -> Result<(), AgentError> {
    match cli.command {
        Command::ListEvents => {
            list_events();
            Ok(())
        }
        Command::Build if !cfg!(feature = "local-build") => Err(AgentError::NoLocalBuild),
        Command::Locate { output, provenance } => locate(&cli.common.settings()?, output, provenance),
        Command::Fetch => install_only(&cli.common.settings()?, Mode::FetchOnly),
        Command::Build => install_only(&cli.common.settings()?, Mode::BuildOnly),
        Command::Run(a) => {
            let cfg = cli.common.settings()?;
            let res = resolve::resolve(&cfg, Mode::Run)?;
            // One write (stderr is unbuffered: a line per piece costs a start).
            eprint!("bpfarm-agent: using {} ({:?})\n{}", res.path.display(), res.source, trail_text(&res.trail));
            let object = res.object.ok_or(AgentError::NoBytes)?;
            if object.embedded.as_ref().is_none_or(|e| e.check(&cfg.identity).is_err()) {
                eprintln!(
                    "bpfarm-agent: warning: --force-object: loading {} although it is not verified for this kernel",
                    res.path.display()
                );
            }
            let output = a.output.unwrap_or_else(|| {
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) { Output::Table } else { Output::Json }
            });
            // Captures go into a checked folder of the install path.
            let capture_dir = match a.capture {
                Some(_) => Some(
                    TrustedDir::open_or_create(&cfg.install_path)
                        .and_then(|d| d.subdir("out"))
                        .map(|d| d.path().to_owned())
                        .map_err(AgentError::Capture)?,
                ),
                None => None,
            };
            let ran = run::run(&RunConfig {
                object: res.path,
                bytes: object.bytes,
                output,
                filters: Filters { comm: a.comm, pid: a.pid, uid: a.uid, events: a.events },
                duration: a.duration.map(Duration::from_secs_f64),
                capture_dir,
                host: a.host_name.filter(|h| !h.is_empty()).unwrap_or_else(crate::events::host_name),
            });
            // The fetched object's install, written while the programs ran.
            if let Some(pending) = res.pending_install {
                match pending.wait() {
                    Ok(path) => eprintln!("bpfarm-agent: installed {}", path.display()),
                    Err(e) => eprintln!("bpfarm-agent: warning: the fetched object was not installed: {e}"),
                }
            }
            ran?;
            Ok(())
        }
    }
}

fn list_events() {
    for (name, what) in crate::events::EVENTS {
        println!("{name:<8} {what}");
    }
    println!(
        "(every event also has ts_ns (CLOCK_MONOTONIC), time (RFC 3339, UTC), epoch_ns, host, pid, tid, ppid, uid, gid, comm)"
    );
}

fn print_trail(trail: &[Step]) {
    eprint!("{}", trail_text(trail));
}

/// The trail, a line per place.
fn trail_text(trail: &[Step]) -> String {
    trail.iter().map(|s| format!("  {}: {}\n", s.place, s.outcome)).collect()
}

/// `locate`: where the object would come from; nothing is fetched, built
/// or written.
fn locate(cfg: &ResolveConfig, output: Output, provenance: bool) -> Result<(), AgentError> {
    if provenance && cfg.signing.keys.is_none() {
        return Err(AgentError::ProvenanceNeedsKey);
    }
    let r = resolve::resolve(cfg, Mode::Locate);
    // The verified provenance of what would be loaded.
    let verified = r.as_ref().ok().and_then(|res| res.object.as_ref()?.signature.as_ref()?.provenance.clone());
    if provenance && verified.is_none() {
        return Err(AgentError::NoProvenance(match &r {
            Ok(res) if res.object.is_none() => "it would be fetched or built; its provenance is checked then",
            Ok(_) => "the object it would load came without a signed provenance (.intoto.jsonl)",
            Err(_) => "there is nothing to load",
        }));
    }
    match output {
        Output::Json => {
            let v = match &r {
                Ok(res) => {
                    let mut v = serde_json::to_value(res)?;
                    let signature = res.object.as_ref().and_then(|o| o.signature.as_ref());
                    v["signature"] = serde_json::to_value(signature)?;
                    if let Some(p) = verified.as_ref().filter(|_| provenance) {
                        v["provenance"] = serde_json::from_slice(&p.statement)?;
                    }
                    v
                }
                Err(e) => serde_json::json!({ "error": e.to_string(), "trail": e.trail() }),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            let id = &cfg.identity;
            println!("kernel {} ({}), version {}: {}", id.kernel_release, id.arch, id.version, id.file_name());
            let trail = match &r {
                Ok(res) => &res.trail,
                Err(e) => e.trail(),
            };
            for s in trail {
                println!("  {}: {}", s.place, s.outcome);
            }
            match &r {
                Ok(res) => match &res.would {
                    Some(w) => println!("would load {} after: {w}", res.path.display()),
                    None => println!("would load {}", res.path.display()),
                },
                Err(_) => println!("nothing to load"),
            }
            if let Some(p) = verified.as_ref().filter(|_| provenance) {
                print!("{}", crate::verify::describe_provenance(p));
            }
        }
    }
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(AgentError::NothingToLoad(e.to_string().lines().next().unwrap_or_default().to_owned())),
    }
}

/// `fetch` and `build`: resolve, install, print the trail and the path.
fn install_only(cfg: &ResolveConfig, mode: Mode) -> Result<(), AgentError> {
    let res = resolve::resolve(cfg, mode)?;
    print_trail(&res.trail);
    println!("{}", res.path.display());
    Ok(())
}

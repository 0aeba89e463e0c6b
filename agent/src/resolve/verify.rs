//! The one gate every candidate passes, wherever it came from: its bytes
//! must match the metadata that travels with it (when there is one) and its
//! embedded identity must name this kernel release, arch and version.

use bpfarm_object::embed::{self, EmbedError, EmbeddedIdentity, Mismatch};
use bpfarm_object::{Digest, Hashed, Identity, MetadataError, ObjectMetadata};

/// Bytes that passed every check, ready to load.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Shared, not copied, with the install thread while they load.
    pub bytes: bytes::Bytes,
    pub digest: Digest,
    /// What the object says it is (`None` only under `--force-object`).
    pub embedded: Option<EmbeddedIdentity>,
    /// Its signature, once `crate::verify::check` accepted it (#11).
    pub signature: Option<crate::verify::Signature>,
}

/// Why a candidate's bytes are not used. The wording is the trail's.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("does not verify: bytes hash to {actual}, its metadata says {claimed} (a partial or altered file)")]
    Digest { actual: Digest, claimed: Digest },
    #[error("refused: its metadata does not fit this host: {0}")]
    Metadata(#[source] MetadataError),
    #[error("refused: {0}")]
    OtherIdentity(#[source] Mismatch),
    #[error(
        "refused: it carries no embedded identity ({} section), so nothing says which kernel it was built for",
        embed::SECTION
    )]
    NoIdentity,
    #[error("refused: {0}")]
    Unreadable(#[source] EmbedError),
}

/// Checks bytes against what this host needs: the metadata (when there is
/// one) must name the same digest and identity, and the embedded identity
/// must name this kernel release, arch and version. `force` lets a missing
/// or different embedded identity pass, with the reason in the outcome.
/// Returns the verified bytes and what was checked, for the trail.
///
/// The digest checked is [`Hashed`]'s, computed over exactly these bytes
/// (as they were read from disk, or as they streamed in from a registry),
/// so fetched bytes are not hashed a second time; the bytes loaded are the
/// bytes it names.
pub fn verify(
    bytes: Hashed,
    id: &Identity,
    meta: Option<&ObjectMetadata>,
    force: bool,
) -> Result<(Verified, String), Rejected> {
    let (bytes, digest) = bytes.into_parts();
    let mut outcome = format!("digest {digest}");
    if let Some(m) = meta {
        if m.digest != digest {
            return Err(Rejected::Digest { actual: digest, claimed: m.digest.clone() });
        }
        m.check_identity(id).map_err(Rejected::Metadata)?;
        outcome += " matches its metadata";
    }
    let embedded = match embed::read(&bytes) {
        Ok(Some(e)) => match e.check(id) {
            Ok(()) => {
                outcome += "; its embedded identity names this kernel, arch and version";
                Some(e)
            }
            Err(m) if force => {
                outcome += &format!("; LOADED ANYWAY (--force-object): {m}");
                Some(e)
            }
            Err(m) => return Err(Rejected::OtherIdentity(m)),
        },
        Ok(None) if force => {
            outcome += &format!("; LOADED ANYWAY (--force-object): it carries no {} section", embed::SECTION);
            None
        }
        Ok(None) => return Err(Rejected::NoIdentity),
        Err(e) if force => {
            outcome += &format!("; LOADED ANYWAY (--force-object): {e}");
            None
        }
        Err(e) => return Err(Rejected::Unreadable(e)),
    };
    Ok((Verified { bytes: bytes.into(), digest, embedded, signature: None }, outcome))
}

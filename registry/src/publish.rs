//! The publish rules: every rule about making an object current, for
//! objects arriving through `/v1`, bpfarm artifacts pushed through `/v2`,
//! the start-up and `fsck` repair of an OCI form, and any later import.
//!
//! An object's metadata is accepted only for a valid identity whose file
//! name it carries, and for a blob that is stored with that digest and
//! size; the same bytes again are a no-op (which rewrites the OCI form, so
//! it also heals one); a different object for an identity that has one is
//! refused unless the publisher asks to replace it (the old one stays in
//! history). `make_current` applies them inside a `WriteTx` and writes the
//! object's OCI form in the same transaction, so `/v1` and `/v2` always
//! agree.
//!
//! Errors are `error::Error`; nothing here knows which face asked.

use bpfarm_object::sign::{Attached, TrustedKeys};
use bpfarm_object::{Identity, ObjectMetadata};

use crate::blobs::BlobStore;
use crate::error::{Error, Result};
use crate::repo::{ObjectCheckRow, Repo, SignatureRow, WriteTx};
use crate::{faces, signatures};

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Published,
    /// The identity already had exactly this object.
    Unchanged,
    Replaced,
    /// The identity already had exactly this object; the signatures sent
    /// with it are new and now attached to it.
    Signed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Unchanged => "unchanged",
            Outcome::Replaced => "replaced",
            Outcome::Signed => "signed",
        }
    }
}

/// What `make_current` did, and the tag the object's OCI form is under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub outcome: Outcome,
    pub tag: String,
}

/// Whether a different object may take an identity's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse it (`Error::Conflict`).
    No,
    /// Make it current; the old one stays in history.
    Yes,
}

/// The rules that need no transaction: identity, file name, stored blob
/// of the claimed size.
pub async fn check(blobs: &BlobStore, meta: &ObjectMetadata) -> Result<()> {
    let id = &meta.identity;
    let checked = Identity::new(&id.kernel_release, id.arch, &id.version)?;
    if meta.file_name != checked.file_name() {
        return Err(Error::FileName { given: meta.file_name.clone(), expected: checked.file_name() });
    }
    match blobs.size(&meta.digest).await {
        None => Err(Error::ObjectBlobMissing(meta.digest.clone())),
        Some(stored) if stored != meta.size => {
            Err(Error::Size { digest: meta.digest.clone(), claimed: meta.size, stored })
        }
        Some(_) => Ok(()),
    }
}

/// The replace rule alone, inside `tx`: a different current object for
/// the identity is a conflict unless `replace` says otherwise.
pub async fn check_current(tx: &mut WriteTx, meta: &ObjectMetadata, replace: Replace) -> Result<()> {
    match tx.current(&meta.identity).await? {
        Some(row) if row.digest != meta.digest.as_str() && replace == Replace::No => {
            Err(Error::Conflict { identity: meta.identity.clone(), existing: row.digest })
        }
        _ => Ok(()),
    }
}

/// Makes `meta` current for its identity in both faces, inside `tx`
/// (which the caller commits). `check` must have passed.
pub async fn make_current(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    replace: Replace,
) -> Result<Current> {
    make_current_signed(tx, blobs, oci_repo, meta, replace, None).await
}

/// As `make_current`, attaching `signed` (checked by `signatures::check`)
/// to the object row. The signatures belong to the row: a replaced
/// object's stay in its history, a new object has only what came with it,
/// and an unchanged object keeps what it had; signatures sent for it are
/// attached when it had none, and replace different ones only with
/// `Replace::Yes` (else `Error::SignaturesDiffer`). The
/// cosign `.sig`/`.att` tags of the object's manifest are (re)written from
/// the row in the same transaction as its OCI form.
pub async fn make_current_signed(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    replace: Replace,
    signed: Option<&signatures::Checked>,
) -> Result<Current> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let outcome = match tx.current(&meta.identity).await? {
        None => {
            tx.insert_object(meta, &now).await?;
            Outcome::Published
        }
        // Rewriting the OCI form of an unchanged object is idempotent and
        // heals a form a crash of an older version left incomplete.
        Some(row) if row.digest == meta.digest.as_str() => Outcome::Unchanged,
        Some(row) if replace == Replace::Yes => {
            tx.retire(row.id).await?;
            tx.insert_object(meta, &now).await?;
            let id = &meta.identity;
            tracing::info!(release = %id.kernel_release, arch = %id.arch, version = %id.version, old = %row.digest, new = %meta.digest, "replaced");
            Outcome::Replaced
        }
        Some(row) => return Err(Error::Conflict { identity: meta.identity.clone(), existing: row.digest }),
    };
    let mut outcome = outcome;
    let row = tx
        .current(&meta.identity)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{} vanished while it was published", meta.file_name)))?;
    if let Some(signed) = signed {
        let before = tx.signatures(row.id).await?;
        // Another set of signatures for the same object replaces the
        // stored one only when asked: a stale or hostile re-publish must
        // not swap what agents verify.
        if outcome == Outcome::Unchanged
            && replace == Replace::No
            && before.as_ref().is_some_and(|b| signatures::differs(b, signed))
        {
            return Err(Error::SignaturesDiffer { identity: meta.identity.clone() });
        }
        signatures::store(tx, blobs, row.id, signed).await?;
        if outcome == Outcome::Unchanged && tx.signatures(row.id).await? != before {
            outcome = Outcome::Signed;
        }
    }
    let tag = faces::write_oci_form(tx, blobs, oci_repo, meta).await?;
    if let Some(sigs) = tx.signatures(row.id).await? {
        signatures::write_oci_forms(tx, blobs, oci_repo, meta, &sigs).await?;
    }
    Ok(Current { outcome, tag })
}

/// Publishes `meta` (whose blob is stored): the rules, then one
/// transaction for both faces. `/v1`'s publish, and the way for any import.
pub async fn publish(
    repo: &Repo,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    replace: Replace,
) -> Result<Outcome> {
    publish_signed(repo, blobs, oci_repo, meta, replace, &Attached::default(), None).await
}

/// As `publish`, with what the publisher `attached` (signature,
/// provenance, manifest signature), held to the object and, with `keys`
/// (`--trusted-key`), verified; nothing is written unless all of it
/// passes.
pub async fn publish_signed(
    repo: &Repo,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    replace: Replace,
    attached: &Attached,
    keys: Option<&TrustedKeys>,
) -> Result<Outcome> {
    publish_under(repo, blobs, oci_repo, meta, attached, keys, Rules::Publisher(replace)).await
}

/// Publishes `meta` as a mirror or an import carries it, with what came
/// beside it: the `/v1` rules and the signing policy (`keys`), following
/// the source's replacements, plus two rules for copies. A current object
/// that is signed is never replaced by one that carries no signature
/// (`Error::WouldDropSignature`), whatever the keys. The same object with
/// other signatures takes them only when `keys` verified them (a source
/// re-signed with a trusted key); without keys nothing can tell a
/// re-signing from a swap, so that is `Error::SignaturesDiffer`. Nothing
/// is written unless all of it passes.
pub async fn publish_carried(
    repo: &Repo,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    attached: &Attached,
    keys: Option<&TrustedKeys>,
) -> Result<Outcome> {
    publish_under(repo, blobs, oci_repo, meta, attached, keys, Rules::Copy).await
}

/// Whose rules a publish follows.
enum Rules {
    /// A publisher's: a different object replaces the current one only as
    /// `Replace` says.
    Publisher(Replace),
    /// A copy's: the source's replacements are followed, under
    /// `carried_rules`.
    Copy,
}

/// A publish under `rules`: the checks that need no transaction and the
/// signing policy, then one transaction for both faces; nothing is written
/// unless all of it passes.
async fn publish_under(
    repo: &Repo,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    attached: &Attached,
    keys: Option<&TrustedKeys>,
    rules: Rules,
) -> Result<Outcome> {
    check(blobs, meta).await?;
    let checked = signatures::check(blobs, meta, attached, keys).await?;
    let mut tx = repo.begin_write().await?;
    // Checked again under the write lock: `gc` removes unnamed blobs only
    // while it holds it, so a blob seen here stays until this commits.
    if blobs.size(&meta.digest).await.is_none() {
        return Err(Error::ObjectBlobMissing(meta.digest.clone()));
    }
    let replace = match rules {
        Rules::Publisher(replace) => replace,
        Rules::Copy => {
            carried_rules(&mut tx, meta, checked.as_ref(), keys.is_some()).await?;
            Replace::Yes
        }
    };
    let made = make_current_signed(&mut tx, blobs, oci_repo, meta, replace, checked.as_ref()).await?;
    tx.commit().await?;
    Ok(made.outcome)
}

/// The copy rules of `publish_carried`, against what `tx` holds now.
pub async fn carried_rules(
    tx: &mut WriteTx,
    meta: &ObjectMetadata,
    checked: Option<&signatures::Checked>,
    verified: bool,
) -> Result<()> {
    let Some(row) = tx.current(&meta.identity).await? else { return Ok(()) };
    let held = tx.signatures(row.id).await?;
    carried_verdict(&row.digest, held.as_ref(), meta, checked, verified)
}

/// The copy rules on what an identity holds: its current object's digest
/// and signatures (`held`), and what is carried in (`checked`, verified by
/// trusted keys when `verified`).
pub fn carried_verdict(
    current: &str,
    held: Option<&SignatureRow>,
    meta: &ObjectMetadata,
    checked: Option<&signatures::Checked>,
    verified: bool,
) -> Result<()> {
    let Some(held) = held else { return Ok(()) };
    match checked {
        None if current != meta.digest.as_str() => Err(Error::WouldDropSignature {
            identity: meta.identity.clone(),
            existing: current.to_owned(),
            incoming: meta.digest.clone(),
        }),
        Some(c) if current == meta.digest.as_str() && !verified && signatures::differs(held, c) => {
            Err(Error::SignaturesDiffer { identity: meta.identity.clone() })
        }
        _ => Ok(()),
    }
}

/// Rewrites the OCI form of the object that is current for `row`'s
/// identity now (read inside the transaction: a publish may have replaced
/// it since `row` was read), by publishing it again. Returns the tag
/// written, or `None` when the identity has no current object any more.
pub async fn heal(repo: &Repo, blobs: &BlobStore, oci_repo: &str, row: &ObjectCheckRow) -> Result<Option<String>> {
    let meta = row.metadata()?;
    let mut tx = repo.begin_write().await?;
    let Some(current) = tx.current(&meta.identity).await? else { return Ok(None) };
    let meta = current.metadata()?;
    let made = make_current(&mut tx, blobs, oci_repo, &meta, Replace::No).await?;
    tx.commit().await?;
    Ok(Some(made.tag))
}

//! The publish rules: an object's metadata is accepted only for a blob that
//! is stored with that digest and size; the same bytes again are a no-op; a
//! different object for an identity that has one is refused unless the
//! publisher asks to replace it (the old one stays in history).

use axum::http::StatusCode;
use bpfarm_object::{Identity, ObjectMetadata};

use crate::blobs::BlobStore;
use crate::repo::Repo;
use crate::routes::ApiError;

/// Publishes through `/v1` and writes the object's OCI form, so both faces
/// show it.
pub async fn publish_both(
    s: &crate::AppState,
    meta: &ObjectMetadata,
    replace: bool,
) -> Result<(StatusCode, &'static str), ApiError> {
    let answer = publish(&s.repo, &s.blobs, meta, replace).await?;
    crate::oci::mirror_object(s, meta).await.map_err(|e| {
        tracing::error!("writing the OCI form of {}: {e:?}", meta.file_name);
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "published, but writing its OCI form failed")
    })?;
    Ok(answer)
}

pub async fn publish(
    repo: &Repo,
    blobs: &BlobStore,
    meta: &ObjectMetadata,
    replace: bool,
) -> Result<(StatusCode, &'static str), ApiError> {
    let id = &meta.identity;
    let checked = Identity::new(&id.kernel_release, id.arch, &id.version)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "IDENTITY_INVALID", e.to_string()))?;
    if meta.file_name != checked.file_name() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "IDENTITY_INVALID",
            format!("file_name {:?} does not match the identity (expected {:?})", meta.file_name, checked.file_name()),
        ));
    }
    match blobs.size(&meta.digest).await {
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BLOB_UNKNOWN",
                format!("upload the object to /v1/blobs/{} first", meta.digest),
            ));
        }
        Some(n) if n != meta.size => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "SIZE_INVALID",
                format!("metadata says {} bytes, the blob has {n}", meta.size),
            ));
        }
        Some(_) => {}
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    match repo.insert(meta, false, &now).await? {
        Ok(()) => Ok((StatusCode::CREATED, "published")),
        Err(existing) if existing.digest == meta.digest.as_str() => Ok((StatusCode::OK, "unchanged")),
        Err(existing) if replace => {
            repo.insert(meta, true, &now)
                .await?
                .map_err(|_| ApiError::new(StatusCode::CONFLICT, "CONFLICT", "replaced concurrently; retry"))?;
            tracing::info!(release = %id.kernel_release, arch = %id.arch, version = %id.version, old = %existing.digest, new = %meta.digest, "replaced");
            Ok((StatusCode::CREATED, "replaced"))
        }
        Err(existing) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!(
                "kernel {} ({}) version {} already has object {}; publish with ?replace=true to replace it",
                id.kernel_release, id.arch, id.version, existing.digest
            ),
        )),
    }
}

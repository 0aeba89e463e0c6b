//! Manifests pushed through `/v2`, parsed and checked in full before
//! anything is stored: a known media type that the body and the
//! `Content-Type` agree on, `schemaVersion` 2, no image/index ambiguity (an
//! image manifest with `manifests`, an index with `layers`), every
//! descriptor with a media type, a valid digest (never a tag) and a size,
//! a well-formed `subject`. Whether the referenced content is in the
//! repository, with those sizes, is checked by `oci` against the store.
//!
//! A bpfarm artifact (`artifactType` = bpfarm's) must also carry a valid
//! identity in its annotations and exactly one object layer; it then goes
//! through the `/v1` publish rules (`publish`).

use bpfarm_object::{Arch, Digest, Identity, ObjectMetadata, Origin, oci};
use serde_json::Value;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// `platform.architecture`, for index entries.
    pub arch: Option<String>,
    pub annotations: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Image { config: Descriptor, layers: Vec<Descriptor> },
    Index { manifests: Vec<Descriptor> },
}

/// A parsed manifest or index (its bytes stay the caller's).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: Kind,
    pub artifact_type: Option<String>,
    pub subject: Option<Descriptor>,
    /// The top-level annotations, as JSON text (stored for referrers).
    pub annotations: Option<String>,
    annotation_map: serde_json::Map<String, Value>,
}

/// Why a manifest is refused (`MANIFEST_INVALID`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid(m.into())
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor, Invalid> {
    let Some(o) = v.as_object() else { return Err(invalid(format!("{what} is not a descriptor object"))) };
    let media_type = o
        .get("mediaType")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid(format!("{what} has no mediaType")))?;
    let digest = o.get("digest").and_then(Value::as_str).ok_or_else(|| invalid(format!("{what} has no digest")))?;
    let digest = digest
        .parse::<Digest>()
        .map_err(|e| invalid(format!("{what} must name its content by digest, not {digest:?}: {e}")))?;
    let size = o
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid(format!("{what} has no size (a non-negative integer)")))?;
    let annotations = match o.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) if a.values().all(Value::is_string) => Some(a.clone()),
        Some(_) => return Err(invalid(format!("{what}: annotations must map strings to strings"))),
    };
    let arch = match o.get("platform") {
        None | Some(Value::Null) => None,
        Some(p) => Some(
            p["architecture"]
                .as_str()
                .ok_or_else(|| invalid(format!("{what}: platform without an architecture")))?
                .to_owned(),
        ),
    };
    Ok(Descriptor { media_type: media_type.to_owned(), digest, size, arch, annotations })
}

/// Parses and checks a manifest's bytes; `content_type` is the request's.
pub fn parse(bytes: &[u8], content_type: &str) -> Result<Manifest, Invalid> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Some(o) = v.as_object() else { return Err(invalid("a manifest is a JSON object")) };
    if o.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let declared = match o.get("mediaType") {
        None => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(_) => return Err(invalid("mediaType must be a string")),
    };
    let content_type = content_type.split(';').next().unwrap_or("").trim();
    let media_type = match (declared, content_type) {
        (Some(d), c) if !c.is_empty() && c != d => {
            return Err(invalid(format!("Content-Type {c} differs from the manifest's mediaType {d}")));
        }
        (Some(d), _) => d,
        (None, "") => return Err(invalid("no mediaType in the manifest or Content-Type")),
        (None, c) => c,
    };
    let is_index = match media_type {
        oci::MANIFEST_MEDIA_TYPE | DOCKER_MANIFEST => false,
        oci::INDEX_MEDIA_TYPE | DOCKER_LIST => true,
        other => return Err(invalid(format!("unsupported manifest media type {other:?}"))),
    };
    let kind = if is_index {
        if o.contains_key("layers") || o.contains_key("config") {
            return Err(invalid("an index must not have layers or a config"));
        }
        let list = o.get("manifests").and_then(Value::as_array).ok_or_else(|| invalid("an index needs manifests"))?;
        let manifests = list
            .iter()
            .enumerate()
            .map(|(i, d)| descriptor(d, &format!("manifests[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Kind::Index { manifests }
    } else {
        if o.contains_key("manifests") {
            return Err(invalid("an image manifest must not have manifests"));
        }
        let config = descriptor(o.get("config").unwrap_or(&Value::Null), "config")?;
        let layers = match o.get("layers") {
            None => Vec::new(),
            Some(Value::Array(l)) => {
                l.iter().enumerate().map(|(i, d)| descriptor(d, &format!("layers[{i}]"))).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(invalid("layers must be an array")),
        };
        Kind::Image { config, layers }
    };
    let artifact_type = match o.get("artifactType") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(invalid("artifactType must be a string")),
    };
    let subject = match o.get("subject") {
        None | Some(Value::Null) => None,
        Some(s) => Some(descriptor(s, "subject")?),
    };
    let annotation_map = match o.get("annotations") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(a)) if a.values().all(Value::is_string) => a.clone(),
        Some(_) => return Err(invalid("annotations must map strings to strings")),
    };
    let annotations = o.get("annotations").filter(|a| !a.is_null()).map(Value::to_string);
    Ok(Manifest { media_type: media_type.to_owned(), kind, artifact_type, subject, annotations, annotation_map })
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        matches!(self.kind, Kind::Index { .. })
    }

    /// What `artifactType` the referrers API reports: the field, else an
    /// image manifest's config media type.
    pub fn reported_artifact_type(&self) -> Option<&str> {
        match (&self.artifact_type, &self.kind) {
            (Some(t), _) => Some(t),
            (None, Kind::Image { config, .. }) => Some(&config.media_type),
            (None, Kind::Index { .. }) => None,
        }
    }

    /// For a bpfarm artifact, the object it carries (its metadata as far as
    /// OCI knows it); `None` for any other content.
    pub fn bpfarm_object(&self) -> Result<Option<ObjectMetadata>, Invalid> {
        if self.artifact_type.as_deref() != Some(oci::ARTIFACT_TYPE) {
            return Ok(None);
        }
        let Kind::Image { layers, .. } = &self.kind else {
            return Err(invalid("a bpfarm artifact is an image manifest"));
        };
        let [layer] = layers.as_slice() else {
            return Err(invalid(format!("a bpfarm artifact has exactly one layer, this one has {}", layers.len())));
        };
        if layer.media_type != oci::LAYER_MEDIA_TYPE {
            return Err(invalid(format!(
                "a bpfarm artifact's layer is {}, not {}",
                oci::LAYER_MEDIA_TYPE,
                layer.media_type
            )));
        }
        let ann = |k: &str| self.annotation_map.get(k).and_then(Value::as_str);
        let (Some(release), Some(arch), Some(version)) =
            (ann(oci::ANN_RELEASE), ann(oci::ANN_ARCH), ann(oci::ANN_VERSION))
        else {
            return Err(invalid(format!(
                "a bpfarm artifact names its kernel in the annotations {}, {} and {}",
                oci::ANN_RELEASE,
                oci::ANN_ARCH,
                oci::ANN_VERSION
            )));
        };
        let arch = Arch::from_any(arch).ok_or_else(|| invalid(format!("unknown arch {arch:?}")))?;
        let identity = Identity::new(release, arch, version).map_err(|e| invalid(e.to_string()))?;
        let file_name = identity.file_name();
        if let Some(title) = layer.annotations.as_ref().and_then(|a| a.get(oci::ANN_TITLE)).and_then(Value::as_str)
            && title != file_name
        {
            return Err(invalid(format!("the layer is titled {title:?}; this kernel's object is {file_name:?}")));
        }
        Ok(Some(ObjectMetadata::unattested(identity, layer.digest.clone(), layer.size, Origin::OciPush)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        Digest::of_bytes(&[n]).to_string()
    }

    #[test]
    fn refuses_what_is_not_a_well_formed_manifest() {
        let ok = json!({ "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE,
            "config": { "mediaType": oci::EMPTY_MEDIA_TYPE, "digest": d(1), "size": 2 }, "layers": [] });
        parse(&serde_json::to_vec(&ok).unwrap(), "").unwrap();
        let cases = [
            (json!([1]), "JSON object"),
            (json!({ "schemaVersion": 1, "mediaType": oci::MANIFEST_MEDIA_TYPE }), "schemaVersion"),
            (json!({ "schemaVersion": 2, "mediaType": "text/plain" }), "unsupported"),
            (
                json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": [{ "mediaType": oci::MANIFEST_MEDIA_TYPE, "digest": "latest", "size": 3 }] }),
                "by digest",
            ),
            (
                json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": [], "layers": [] }),
                "must not have layers",
            ),
            (
                json!({ "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE, "manifests": [], "config": ok["config"] }),
                "must not have manifests",
            ),
            (
                json!({ "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE, "config": { "mediaType": "x", "digest": d(1), "size": -1 } }),
                "size",
            ),
            (
                json!({ "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE, "config": ok["config"], "subject": { "digest": "sha256:zz" } }),
                "subject",
            ),
            (
                json!({ "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE, "config": ok["config"], "annotations": { "a": 1 } }),
                "annotations",
            ),
        ];
        for (v, want) in cases {
            let e = parse(&serde_json::to_vec(&v).unwrap(), "").unwrap_err().0;
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = parse(&serde_json::to_vec(&ok).unwrap(), oci::INDEX_MEDIA_TYPE).unwrap_err().0;
        assert!(e.contains("differs"), "{e}");
    }

    #[test]
    fn a_bpfarm_artifact_needs_an_identity_and_one_object_layer() {
        let m = |ann: Value, title: &str| {
            let v = json!({ "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE, "artifactType": oci::ARTIFACT_TYPE,
                "config": { "mediaType": oci::EMPTY_MEDIA_TYPE, "digest": d(1), "size": 2 },
                "layers": [{ "mediaType": oci::LAYER_MEDIA_TYPE, "digest": d(2), "size": 5, "annotations": { oci::ANN_TITLE: title } }],
                "annotations": ann });
            parse(&serde_json::to_vec(&v).unwrap(), "").unwrap().bpfarm_object()
        };
        let good = json!({ oci::ANN_RELEASE: "6.1.0-9-amd64", oci::ANN_ARCH: "x86_64", oci::ANN_VERSION: "v1" });
        let meta = m(good.clone(), "tracee.bpf.6_1_0-9-amd64.v1.o").unwrap().unwrap();
        assert_eq!((meta.identity.kernel_release.as_str(), meta.size), ("6.1.0-9-amd64", 5));
        assert!(m(good, "tracee.bpf.other.o").unwrap_err().0.contains("titled"));
        let bad = json!({ oci::ANN_RELEASE: "../../etc", oci::ANN_ARCH: "x86_64", oci::ANN_VERSION: "v1" });
        assert!(m(bad, "x").unwrap_err().0.contains("invalid kernel release"));
        assert!(m(json!({}), "x").unwrap_err().0.contains("annotations"));
    }
}

//! The OCI form of an object (docs/contracts.md, "OCI mapping"): repository
//! `<namespace>/tracee-bpf`, one tag per (version, kernel release) pointing
//! at an image index with one manifest per arch, each manifest holding the
//! raw `.o` as its single layer. Builders of the exact JSON bytes live here
//! so that every party produces the same digests.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{Arch, Digest, Identity, ObjectMetadata};

pub const ARTIFACT_TYPE: &str = "application/vnd.bpfarm.tracee.bpf.v1";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.bpfarm.tracee.bpf.object.v1+elf";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty descriptor's content, `{}`.
pub const EMPTY_CONFIG: &[u8] = b"{}";
pub const REPOSITORY: &str = "tracee-bpf";

pub const ANN_RELEASE: &str = "io.bpfarm.kernel.release";
pub const ANN_ARCH: &str = "io.bpfarm.kernel.arch";
pub const ANN_VERSION: &str = "org.opencontainers.image.version";
pub const ANN_CREATED: &str = "org.opencontainers.image.created";
pub const ANN_TITLE: &str = "org.opencontainers.image.title";
/// Fixed, so that the same object always has the same manifest digest.
pub const CREATED: &str = "1970-01-01T00:00:00Z";

/// `sanitised(release) + "." + sanitised(version)`; over 128 characters, or
/// when `collides`, cut and suffixed with `-` + 12 hex of sha256 of the
/// exact pair. Tags are never parsed back.
pub fn tag(release: &str, version: &str, collides: bool) -> String {
    let sanitise = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
            .collect::<String>()
    };
    let plain = format!("{}.{}", sanitise(release), sanitise(version));
    if plain.len() <= 128 && !collides {
        return plain;
    }
    let h = hex::encode(Sha256::digest(format!("{release}\0{version}").as_bytes()));
    let suffix = format!("-{}", &h[..12]);
    format!("{}{suffix}", &plain[..plain.len().min(128 - suffix.len())])
}

/// OCI platform architecture names.
pub fn oci_arch(a: Arch) -> &'static str {
    a.debian()
}

/// A descriptor JSON value.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest.as_str(), "size": size })
}

/// The manifest of one object, as exact bytes (serde_json keeps the field
/// order written here; the same metadata always gives the same bytes).
pub fn manifest(meta: &ObjectMetadata) -> Vec<u8> {
    let id = &meta.identity;
    let mut layer = descriptor(LAYER_MEDIA_TYPE, &meta.digest, meta.size);
    layer["annotations"] = json!({ ANN_TITLE: meta.file_name });
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(EMPTY_MEDIA_TYPE, &Digest::of_bytes(EMPTY_CONFIG), EMPTY_CONFIG.len() as u64),
        "layers": [layer],
        "annotations": {
            ANN_RELEASE: id.kernel_release,
            ANN_ARCH: id.arch.uname(),
            ANN_VERSION: id.version,
            ANN_CREATED: CREATED,
        }
    });
    // `Value`'s Display is serde_json's compact form: the bytes `to_vec`
    // writes, without a Result that cannot be an error for a `Value`.
    m.to_string().into_bytes()
}

/// Whether a platform manifest's annotations name exactly `id` (release,
/// arch, version); `Err` says what they name instead, against `whose`
/// (`"this host's "`, or empty) identity.
pub fn check_annotations(manifest: &Value, id: &Identity, whose: &str) -> Result<(), String> {
    let a = &manifest["annotations"];
    if a[ANN_RELEASE] == id.kernel_release.as_str()
        && a[ANN_ARCH].as_str().and_then(Arch::from_any) == Some(id.arch)
        && a[ANN_VERSION] == id.version.as_str()
    {
        return Ok(());
    }
    Err(format!(
        "its annotations name {} {} {}, not {whose}{} {} {}",
        a[ANN_RELEASE], a[ANN_ARCH], a[ANN_VERSION], id.kernel_release, id.arch, id.version
    ))
}

/// Whether a manifest's `layer` descriptor is an object's layer, titled
/// `title` when one is given; `Err` says how it is not.
pub fn check_object_layer(layer: &Value, title: Option<&str>) -> Result<(), String> {
    if layer["mediaType"] != LAYER_MEDIA_TYPE {
        return Err(format!("its layer is {}, not {}", layer["mediaType"], LAYER_MEDIA_TYPE));
    }
    match title {
        Some(t) if layer["annotations"][ANN_TITLE] != t => {
            Err(format!("its title is {}, not {t}", layer["annotations"][ANN_TITLE]))
        }
        _ => Ok(()),
    }
}

/// An index for (release, version) with one manifest per arch: `existing`
/// (a previous index's bytes, if any) merged with `arch`'s new manifest, so
/// that publishing one arch never drops another.
pub fn index(
    release: &str,
    version: &str,
    existing: Option<&[u8]>,
    arch: Arch,
    manifest_digest: &Digest,
    manifest_size: u64,
) -> Vec<u8> {
    let mut manifests: Vec<Value> = existing
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["platform"]["architecture"] != oci_arch(arch))
        .collect();
    // No `artifactType` in the index or its descriptors (the manifests carry
    // it): older OCI tooling (containers/image in Debian's skopeo 1.9) drops
    // unknown descriptor fields, so it could not copy such an index with its
    // digest preserved.
    let mut d = descriptor(MANIFEST_MEDIA_TYPE, manifest_digest, manifest_size);
    d["platform"] = json!({ "architecture": oci_arch(arch), "os": "linux" });
    manifests.push(d);
    // Arch order is fixed so the index bytes do not depend on publish order.
    manifests.sort_by(|a, b| a["platform"]["architecture"].as_str().cmp(&b["platform"]["architecture"].as_str()));
    let v = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
        "annotations": { ANN_RELEASE: release, ANN_VERSION: version, ANN_CREATED: CREATED }
    });
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BuildMode, Compiler, Flags, Identity, KernelFacts};

    #[test]
    fn tags_follow_the_rule() {
        assert_eq!(tag("6.1.0-47-amd64", "v0.3.0", false), "6.1.0-47-amd64.v0.3.0");
        assert_eq!(tag("6.12.117+deb12-amd64", "v0.3.0", false), "6.12.117_deb12-amd64.v0.3.0");
        let long = "x".repeat(200);
        let t = tag(&long, "v1", false);
        assert_eq!(t.len(), 128);
        assert!(t.ends_with(&format!("-{}", &hex::encode(Sha256::digest(format!("{long}\0v1").as_bytes()))[..12])));
        // A collision (6.1+x vs 6.1_x) gets the hashed form, distinct per release.
        assert_ne!(tag("6.1+x", "v1", true), tag("6.1_x", "v1", true));
        assert_eq!(tag("6.1+x", "v1", false), tag("6.1_x", "v1", false));
    }

    fn meta(arch: Arch) -> ObjectMetadata {
        let identity = Identity::new("5.15.0-91-generic", arch, "v0.1.0").unwrap();
        ObjectMetadata {
            file_name: identity.file_name(),
            identity,
            digest: Digest::of_bytes(arch.uname().as_bytes()),
            size: 6,
            kernel: KernelFacts::default(),
            build_mode: BuildMode::Headers,
            sources: vec![],
            program_digest: Digest::of_bytes(b"p"),
            compiler: Compiler { clang: "c".into(), llc: None },
            flags: Flags::default(),
            built_at: "now".into(),
        }
    }

    #[test]
    fn manifests_are_reproducible_and_indexes_merge_arches() {
        let a = manifest(&meta(Arch::X86_64));
        assert_eq!(a, manifest(&meta(Arch::X86_64)), "same object, same bytes");
        // Compact, keys sorted: what serde_json::to_vec writes for the value.
        assert_eq!(a, serde_json::to_vec(&serde_json::from_slice::<Value>(&a).unwrap()).unwrap());
        assert_eq!(
            Digest::of_bytes(&a).to_string(),
            "sha256:abc53975ee7c406e0d4beb7a47f8bfb6a2c1169da1ec37fe41926cd0f0decbaa",
            "the manifest's bytes changed: every published object's OCI digest would change"
        );
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["layers"][0]["annotations"][ANN_TITLE], "tracee.bpf.5_15_0-91-generic.v0_1_0.o");
        assert_eq!(v["config"]["digest"], "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        let b = manifest(&meta(Arch::Aarch64));
        let (da, db) = (Digest::of_bytes(&a), Digest::of_bytes(&b));
        let i1 = index("5.15.0-91-generic", "v0.1.0", None, Arch::Aarch64, &db, b.len() as u64);
        let i2 = index("5.15.0-91-generic", "v0.1.0", Some(&i1), Arch::X86_64, &da, a.len() as u64);
        let v: Value = serde_json::from_slice(&i2).unwrap();
        let arches: Vec<&str> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(arches, ["amd64", "arm64"]);
        // Publishing in the other order gives the same index bytes.
        let j1 = index("5.15.0-91-generic", "v0.1.0", None, Arch::X86_64, &da, a.len() as u64);
        assert_eq!(index("5.15.0-91-generic", "v0.1.0", Some(&j1), Arch::Aarch64, &db, b.len() as u64), i2);
        // Republishing one arch replaces, not duplicates, its entry.
        assert_eq!(index("5.15.0-91-generic", "v0.1.0", Some(&i2), Arch::X86_64, &da, a.len() as u64), i2);
    }
}

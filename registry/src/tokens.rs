//! API tokens: random, shown once, stored as sha256, checked in constant time.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::repo::{Repo, Scope};

/// A new token: `bpfarm_` + 32 random bytes in hex. Fails only when the OS
/// has no randomness to give.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(format!("bpfarm_{}", hex::encode(b)))
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    // getrandom::Error is no std::error::Error without getrandom's `std`.
    #[error("OS randomness: {0}")]
    Randomness(getrandom::Error),
    #[error("storing token {name:?} (names are unique): {source}")]
    Store { name: String, source: sqlx::Error },
}

impl From<getrandom::Error> for CreateError {
    fn from(e: getrandom::Error) -> Self {
        CreateError::Randomness(e)
    }
}

/// Creates a token named `name` with `scope`, stores only its hash, and
/// returns the token: the one time it exists outside the caller's hands.
pub async fn create(repo: &Repo, name: &str, scope: Scope, now: &str) -> Result<String, CreateError> {
    let token = generate()?;
    repo.add_token(name, scope, &hash(&token), now)
        .await
        .map_err(|source| CreateError::Store { name: name.to_owned(), source })?;
    Ok(token)
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The scope `token` grants among the stored `(hash, scope)` rows, if any.
/// Every row is compared, without stopping at a match, so the time taken
/// does not depend on which token (if any) matched.
pub fn scope_of(token: &str, stored: &[(String, Scope)]) -> Option<Scope> {
    let presented = hash(token);
    let mut found = None;
    for (h, scope) in stored {
        if bool::from(h.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(*scope);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_their_hash() {
        let t = generate().unwrap();
        assert!(t.starts_with("bpfarm_") && t.len() == 7 + 64);
        assert_ne!(generate().unwrap(), t);
        let stored = vec![(hash("other"), Scope::Read), (hash(&t), Scope::Push)];
        assert_eq!(scope_of(&t, &stored), Some(Scope::Push));
        assert_eq!(scope_of("other", &stored), Some(Scope::Read));
        assert_eq!(scope_of("nope", &stored), None);
    }

    /// The index holds a created token's hash and nothing from which the
    /// token can be read back: not the token, not its random part, in the
    /// database or its WAL. (A `create` that stored the token, or a `hash`
    /// that kept it, fails here.)
    #[tokio::test]
    async fn a_created_token_is_stored_only_as_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        let token = create(&repo, "ci", Scope::Push, "t").await.unwrap();
        let secret = token.strip_prefix("bpfarm_").unwrap();
        assert_eq!(scope_of(&token, &repo.token_hashes().await.unwrap()), Some(Scope::Push));
        let mut stored = Vec::new();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            if f.file_name().to_string_lossy().starts_with("index.sqlite") {
                stored.extend(std::fs::read(f.path()).unwrap());
            }
        }
        let holds = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
        assert!(holds(hash(&token).as_bytes()), "the hash is where the test looks");
        assert!(!holds(secret.as_bytes()), "the token is stored in clear");
        assert!(!holds(&hex::decode(secret).unwrap()), "the token's bytes are stored");
        // Names are unique: a second "ci" is refused, not a second secret.
        assert!(matches!(create(&repo, "ci", Scope::Read, "t").await, Err(CreateError::Store { .. })));
        repo.close().await;
    }
}

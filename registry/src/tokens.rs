//! API tokens: random, shown once, stored as sha256, checked in constant time.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::repo::Scope;

/// A new token: `bpfarm_` + 32 random bytes in hex.
pub fn generate() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("OS randomness");
    format!("bpfarm_{}", hex::encode(b))
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
        let t = generate();
        assert!(t.starts_with("bpfarm_") && t.len() == 7 + 64);
        assert_ne!(generate(), t);
        let stored = vec![(hash("other"), Scope::Read), (hash(&t), Scope::Push)];
        assert_eq!(scope_of(&t, &stored), Some(Scope::Push));
        assert_eq!(scope_of("other", &stored), Some(Scope::Read));
        assert_eq!(scope_of("nope", &stored), None);
        assert!(!stored.iter().any(|(h, _)| h.contains(&t)), "a token is stored in clear");
    }
}

//! Random secrets (tokens, session ids) and the hash under which they are stored.

use sha2::{Digest, Sha256};

/// 256 random bits from the OS, hex-encoded, after `prefix` (tokens start with `crt_` so they are
/// recognizable in a config file or a leak scanner).
pub fn generate(prefix: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_hashed() {
        let a = generate("crt_").unwrap();
        let b = generate("crt_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("crt_") && a.len() == 4 + 64, "{a}");
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 64);
    }
}

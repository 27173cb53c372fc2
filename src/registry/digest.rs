//! Content digests (`sha256:<hex>`, `sha512:<hex>`): checking their form and computing them.

use sha2::{Digest as _, Sha256, Sha512};

/// Why a digest string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not `algorithm:hex`.
    #[error(
        "digest {0:?} is not of the form sha256:<64 lower-case hex> or sha512:<128 lower-case hex>"
    )]
    Malformed(String),
}

/// Checks that `digest` is `sha256:` + 64 or `sha512:` + 128 lower-case hex digits.
pub fn validate(digest: &str) -> Result<(), DigestError> {
    let malformed = || DigestError::Malformed(digest.to_owned());
    let (algorithm, hex) = digest.split_once(':').ok_or_else(malformed)?;
    let want_len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(malformed()),
    };
    let lower_hex = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex.len() != want_len || !lower_hex {
        return Err(malformed());
    }
    Ok(())
}

/// Computes the digest of a byte stream with the algorithm a digest string names.
pub enum Hasher {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-512.
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher for the algorithm of `digest` (sha256 when it names none we know).
    pub fn for_digest(digest: &str) -> Self {
        if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest string of everything fed.
    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// The digest of `data` with the algorithm `like` names (sha256 by default).
pub fn digest_of(data: &[u8], like: &str) -> String {
    let mut h = Hasher::for_digest(like);
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_digest_forms() {
        let good256 = format!("sha256:{}", "a".repeat(64));
        let good512 = format!("sha512:{}", "0".repeat(128));
        assert!(validate(&good256).is_ok());
        assert!(validate(&good512).is_ok());
        for bad in [
            "sha256:abc".to_owned(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(128)),
            format!("md5:{}", "a".repeat(32)),
            "sha256".to_owned(),
            String::new(),
        ] {
            assert!(validate(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_with_the_named_algorithm() {
        assert_eq!(
            digest_of(b"", "sha256:x"),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(digest_of(b"", "sha512:x").starts_with("sha512:cf83e1357eefb8bd"));
    }
}

//! Comparing secrets (tokens, MAC tags) in time that does not depend on where they differ.

/// Whether `a` equals `b`, compared without stopping at the first difference, so the time a
/// refusal takes does not tell how much of a guess was right. Only the lengths may leak, and
/// they are public wherever this is used (a token's length, six hex digits of a tag).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(same_secret(b"abc123", b"abc123"));
        assert!(!same_secret(b"abc123", b"abc124"));
        assert!(!same_secret(b"abc", b"abc123"));
        assert!(same_secret(b"", b""));
    }
}

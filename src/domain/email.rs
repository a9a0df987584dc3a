//! Email addresses as the service keys accounts by: trimmed, Unicode-NFC-normalised, then
//! lower-cased, plausibly shaped. NFC first, so that an address typed with a precomposed `é` and
//! one with `e` + combining accent are one account.
//!
//! This is not an RFC 5322 validator; it refuses what is certainly not an address and keeps the
//! rest, because the only proof an address works is a message that arrives.

use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// A normalised email address.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

/// Why an input is not an email address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 254 characters")]
    TooLong,
    #[error("must be an email address like name@example.com")]
    Malformed,
}

impl Email {
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let normalised: String = input.trim().nfc().collect();
        let trimmed = normalised.as_str();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.chars().count() > 254 {
            return Err(EmailError::TooLong);
        }
        let original_local = trimmed.split('@').next().unwrap_or_default();
        let lowered = trimmed.to_lowercase();
        let (local, domain) = lowered.split_once('@').ok_or(EmailError::Malformed)?;
        let well_formed = !local.is_empty()
            && original_local.chars().count() <= 64
            && !domain.is_empty()
            && !domain.contains('@')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && lowered
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '<' && c != '>');
        if well_formed {
            Ok(Self(lowered))
        } else {
            Err(EmailError::Malformed)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let email = Email::parse("  Alice@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "alice@example.com");
    }

    #[test]
    fn email_is_nfc_normalised_before_it_is_lower_cased() {
        let decomposed = Email::parse("Jose\u{301}@Example.com").unwrap();
        let precomposed = Email::parse("jos\u{e9}@example.com").unwrap();
        assert_eq!(decomposed, precomposed);
        assert_eq!(decomposed.as_str(), "jos\u{e9}@example.com");
        // The 64-character limit of the local part counts normalised characters.
        let local = "e\u{301}".repeat(64);
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
    }

    #[test]
    fn malformed_emails_are_refused() {
        assert_eq!(Email::parse(""), Err(EmailError::Empty));
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        for bad in [
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "al ice@x.org",
            "a@.x",
            "a@x..y",
            "a\u{0}@x.y",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError::Malformed), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }
}

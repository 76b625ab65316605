//! STAN channel names. A channel is a literal NATS subject: wildcards would
//! make one channel's stream capture another's messages.

use crate::error::{ErrorCode, JetstanError, Result};

pub fn validate_channel(subject: &str) -> Result<()> {
    if subject.is_empty() {
        return Err(JetstanError::new(
            ErrorCode::BadSubject,
            crate::error::text::SUBJECT_REQUIRED,
        ));
    }
    let invalid = |why: &str| {
        Err(JetstanError::new(
            ErrorCode::BadSubject,
            format!("stan: invalid subject '{subject}': {why}"),
        ))
    };
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("whitespace is not allowed");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return invalid("empty token");
        }
        if token == "*" || token == ">" {
            return invalid("wildcards are not allowed");
        }
    }
    Ok(())
}

/// STAN client IDs: alphanumerics, `-` and `_`, as nats-streaming-server
/// enforced. They become a subject token, so nothing else may pass.
pub fn validate_client_id(client_id: &str) -> Result<()> {
    let valid = !client_id.is_empty()
        && client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(JetstanError::new(
            ErrorCode::BadClientId,
            crate::error::text::BAD_CLIENT_ID,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_literal_subjects() {
        for ok in ["foo", "foo.bar", "ticket:created", "a-b_c.d1", "foo*bar"] {
            assert!(validate_channel(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn client_ids_are_tokens() {
        assert!(validate_client_id("orders-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "é"] {
            let code = validate_client_id(bad).err().map(|e| e.code);
            assert_eq!(code, Some(ErrorCode::BadClientId), "{bad}");
        }
    }

    #[test]
    fn rejects_wildcards_blanks_and_empty_tokens() {
        for bad in [
            "", "foo.*", ">", "foo bar", "foo..bar", ".foo", "foo.", "a\tb",
        ] {
            let code = validate_channel(bad).err().map(|e| e.code);
            assert_eq!(code, Some(ErrorCode::BadSubject), "{bad}");
        }
    }
}

//! STAN channel names. A channel is a literal NATS subject: wildcards would
//! make one channel's stream capture another's messages.

use crate::error::{ErrorCode, JetstanError, Result};

/// nats-server's default `max_control_line`: a protocol line (`PUB`, `SUB`,
/// with subject and reply) longer than this closes the connection, and a
/// reconnect would send it again. async-nats does not expose the server's
/// own setting, so names are held to what the default lets through.
const MAX_CONTROL_LINE: usize = 4096;
/// Room on a control line for the verb, the longest prefix jetstan puts
/// around a name (`_STAN.pub.<id>.`, `_JSTAN.<cluster>.clients.`), an
/// inbox reply and the sizes.
const LINE_OVERHEAD: usize = 256;
/// Longest channel name: it is a subject on every publish.
pub const MAX_CHANNEL_LEN: usize = MAX_CONTROL_LINE - LINE_OVERHEAD;

pub fn validate_channel(subject: &str) -> Result<()> {
    if subject.is_empty() {
        return Err(JetstanError::new(
            ErrorCode::BadSubject,
            crate::error::text::SUBJECT_REQUIRED,
        ));
    }
    if subject.len() > MAX_CHANNEL_LEN {
        return Err(JetstanError::new(
            ErrorCode::BadSubject,
            format!(
                "stan: invalid subject: {} bytes, longer than the {MAX_CHANNEL_LEN} a server line allows",
                subject.len()
            ),
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

/// The cluster and client IDs travel together in subjects (client-ID
/// presence, STAN's discover and request subjects): both must fit one line.
pub fn validate_names(cluster_id: &str, client_id: &str) -> Result<()> {
    if cluster_id.is_empty()
        || cluster_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(JetstanError::new(
            ErrorCode::BadOption,
            "stan: invalid clusterID: must be non-empty, without whitespace",
        ));
    }
    if cluster_id.len() + client_id.len() > MAX_CHANNEL_LEN {
        return Err(JetstanError::new(
            ErrorCode::BadOption,
            format!(
                "stan: clusterID and clientID are {} bytes together, longer than the {MAX_CHANNEL_LEN} a server line allows",
                cluster_id.len() + client_id.len()
            ),
        ));
    }
    validate_client_id(client_id)
}

/// Appends `value` in decimal, without the `fmt` machinery (reply subjects
/// are built per publish).
pub fn push_decimal(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&digit| char::from(digit)));
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
    fn names_must_fit_a_server_line() {
        let long = "a".repeat(70_000);
        let code = |r: Result<()>| r.err().map(|e| e.code);
        assert_eq!(code(validate_channel(&long)), Some(ErrorCode::BadSubject));
        assert_eq!(code(validate_names(&long, "c")), Some(ErrorCode::BadOption));
        assert_eq!(code(validate_names("c", &long)), Some(ErrorCode::BadOption));
        assert_eq!(code(validate_names("", "c")), Some(ErrorCode::BadOption));
        assert!(validate_names("test-cluster", "client-1").is_ok());
        assert!(validate_channel(&"a".repeat(MAX_CHANNEL_LEN)).is_ok());
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

//! Password redaction for connection URLs.

/// Returns `url` with any password replaced by `***`, so it can go into an error or a log.
///
/// ```
/// assert_eq!(
///     windlass_core::redact_url("postgres://app:s3cret@db:5432/app"),
///     "postgres://app:***@db:5432/app"
/// );
/// assert_eq!(windlass_core::redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // A lone userinfo part is a password for some schemes (`redis://:pw@` has a colon,
        // `redis://pw@` is a username in the spec but a password in practice).
        None => "***".to_owned(),
    };
    format!("{}{}@{}", &url[..scheme_end + 3], redacted, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("redis://:pw@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://user@host"), "redis://***@host");
        assert_eq!(
            redact_url("postgres://u:p@h/db?x=@"),
            "postgres://u:***@h/db?x=@"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}

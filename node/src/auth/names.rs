//! Username, email, device-id and password rules.
//!
//! Usernames are NFKC-normalized (so full-width `ＡＬＩＣＥ` becomes `ALICE`),
//! then must consist of ASCII letters, digits, `_`, `.` and `-` only. Anything
//! else, including look-alike letters from other scripts (Cyrillic `а` for
//! Latin `a`), is *rejected*, not mapped: confusables cannot be registered.
//! The uniqueness key is the lowercase form, so `Alice` and `alice` collide.

use unicode_normalization::UnicodeNormalization;

pub const USERNAME_MIN_CHARS: usize = 3;
pub const USERNAME_MAX_CHARS: usize = 24;
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
pub const EMAIL_MAX_BYTES: usize = 254;
pub const DEVICE_ID_MIN_CHARS: usize = 8;
pub const DEVICE_ID_MAX_CHARS: usize = 128;

/// A username as displayed (NFKC form) and its uniqueness key (lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    pub display: String,
    pub key: String,
}

pub fn normalize_username(raw: &str) -> Result<Username, String> {
    let display: String = raw.trim().nfkc().collect();
    let n = display.chars().count();
    if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&n) {
        return Err(format!(
            "must be {USERNAME_MIN_CHARS}-{USERNAME_MAX_CHARS} characters"
        ));
    }
    if let Some(bad) = display
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "character {bad:?} not allowed (letters a-z, digits, '_', '.', '-')"
        ));
    }
    if !display
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err("must start with a letter or digit".into());
    }
    if display.to_ascii_lowercase().starts_with("guest-") {
        return Err("the prefix 'guest-' is reserved for device accounts".into());
    }
    Ok(Username {
        key: display.to_ascii_lowercase(),
        display,
    })
}

/// Lowercased email after a plain shape check (one '@', a dot in the domain).
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let e = raw.trim().to_lowercase();
    if e.len() > EMAIL_MAX_BYTES {
        return Err(format!("longer than {EMAIL_MAX_BYTES} bytes"));
    }
    let Some((local, domain)) = e.split_once('@') else {
        return Err("not an email address".into());
    };
    let ok = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err("not an email address".into());
    }
    Ok(e)
}

pub fn check_password(password: &str, username_key: Option<&str>) -> Result<(), String> {
    let n = password.chars().count();
    if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&n) {
        return Err(format!(
            "must be {PASSWORD_MIN_CHARS}-{PASSWORD_MAX_CHARS} characters"
        ));
    }
    if let Some(u) = username_key {
        if password.to_lowercase().contains(u) {
            return Err("must not contain the username".into());
        }
    }
    Ok(())
}

pub fn check_device_id(raw: &str) -> Result<(), String> {
    let n = raw.chars().count();
    if !(DEVICE_ID_MIN_CHARS..=DEVICE_ID_MAX_CHARS).contains(&n) {
        return Err(format!(
            "must be {DEVICE_ID_MIN_CHARS}-{DEVICE_ID_MAX_CHARS} characters"
        ));
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
    {
        return Err("letters, digits, '-', '_', ':' and '.' only".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_fold_case_and_width() {
        let a = normalize_username("Alice").unwrap();
        let b = normalize_username("ＡＬＩＣＥ").unwrap();
        assert_eq!(a.key, "alice");
        assert_eq!(b.key, "alice");
        assert_eq!(a.display, "Alice");
    }

    #[test]
    fn confusables_and_bad_lengths_rejected() {
        assert!(normalize_username("аlice").is_err()); // Cyrillic а
        assert!(normalize_username("al").is_err());
        assert!(normalize_username(&"a".repeat(USERNAME_MAX_CHARS)).is_ok());
        assert!(normalize_username(&"a".repeat(USERNAME_MAX_CHARS + 1)).is_err());
        assert!(normalize_username("bob smith").is_err());
        assert!(normalize_username("_bob").is_err());
        assert!(normalize_username("guest-123").is_err());
    }

    #[test]
    fn password_policy_edges() {
        assert!(check_password(&"x".repeat(PASSWORD_MIN_CHARS - 1), None).is_err());
        assert!(check_password(&"x".repeat(PASSWORD_MIN_CHARS), None).is_ok());
        assert!(check_password(&"x".repeat(PASSWORD_MAX_CHARS), None).is_ok());
        assert!(check_password(&"x".repeat(PASSWORD_MAX_CHARS + 1), None).is_err());
        assert!(check_password("myALICEpass", Some("alice")).is_err());
    }

    #[test]
    fn emails() {
        assert_eq!(normalize_email(" A@B.io ").unwrap(), "a@b.io");
        assert!(normalize_email("a@b").is_err());
        assert!(normalize_email("ab.io").is_err());
        assert!(normalize_email("a@@b.io").is_err());
    }

    #[test]
    fn device_ids() {
        assert!(check_device_id("device-1234").is_ok());
        assert!(check_device_id("short").is_err());
        assert!(check_device_id("bad device id!").is_err());
    }
}

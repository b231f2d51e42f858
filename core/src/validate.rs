//! Checks of the values several domain modules accept: email addresses, E.164 phone numbers,
//! IANA time zones and ISO 4217 currencies. Each names the offending field in its
//! [`DomainError::Invalid`]. Pure functions: no database, no table.

use chrono_tz::Tz;

use crate::error::DomainError;

/// Checks an email address: one `@`, something either side, no spaces, at most 254 characters.
pub fn email(field: &str, email: &str) -> Result<(), DomainError> {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(field, "expected an email address such as name@example.com"))
    }
}

/// Checks an E.164 number: `+`, a non-zero country digit, 7 to 15 digits in all.
pub fn phone(field: &str, phone: &str) -> Result<(), DomainError> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    let ok = (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(field, "expected an E.164 phone number such as +447700900123"))
    }
}

/// Parses an IANA time-zone name.
pub fn timezone(field: &str, tz: &str) -> Result<Tz, DomainError> {
    tz.parse::<Tz>()
        .map_err(|_| DomainError::invalid(field, format!("expected an IANA time zone such as Europe/London, got {tz:?}")))
}

/// Checks an ISO 4217 code: three capital letters.
pub fn currency(field: &str, c: &str) -> Result<(), DomainError> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(DomainError::invalid(field, "expected an ISO 4217 code such as GBP"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_phones_time_zones_and_currencies_are_refused_unless_well_formed() {
        assert!(email("email", "a@b.co").is_ok());
        assert!(email("email", "a b@c.co").is_err());
        assert!(email("email", "ab.co").is_err());
        assert!(email("email", "a@b").is_err());
        assert!(phone("phone", "+447700900123").is_ok());
        assert!(phone("phone", "07700900123").is_err());
        assert!(phone("phone", "+0447700900").is_err());
        assert!(phone("phone", "+44 7700 900").is_err());
        assert!(timezone("tz", "Europe/Berlin").is_ok());
        assert!(timezone("tz", "Mars/Olympus").is_err());
        assert!(currency("currency", "GBP").is_ok());
        assert!(currency("currency", "gbp").is_err());
    }
}

//! Checks of the values several domain modules accept: email addresses, E.164 phone numbers,
//! IANA time zones and ISO 4217 currencies. Each names the offending field in its
//! [`DomainError::Invalid`]. Pure functions: no database, no table. Also the one reader of
//! time zones read back from the database, [`stored_timezone`].

use std::sync::RwLock;

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

/// The school's zone (`SCHOOL_TIMEZONE`), recorded by [`crate::Config::from_env`]: what
/// [`stored_timezone`] reads a zone it cannot parse as. Europe/London until a configuration is
/// loaded (the configuration's own default).
static SCHOOL_ZONE: RwLock<Tz> = RwLock::new(chrono_tz::Europe::London);

/// Records the school's zone for [`stored_timezone`] (done by [`crate::Config::from_env`]).
pub fn set_school_timezone(tz: Tz) {
    *SCHOOL_ZONE.write().unwrap_or_else(|e| e.into_inner()) = tz;
}

/// Reads a time zone stored in the database (a user's, a series'): the one place a stored
/// zone is parsed. Every zone is refused at input unless it parses ([`timezone`]: the API
/// answers 422 naming the field) and the schema's `CHECK` refuses names Postgres does not
/// know, so one that does not parse here means the zone databases of chrono-tz and Postgres
/// disagree: it is logged as a warning and read as the school's zone (`SCHOOL_TIMEZONE`).
pub fn stored_timezone(tz: &str) -> Tz {
    tz.parse::<Tz>().unwrap_or_else(|_| {
        let school = *SCHOOL_ZONE.read().unwrap_or_else(|e| e.into_inner());
        tracing::warn!(
            stored = tz,
            school = school.name(),
            "a stored time zone does not parse; read as the school's zone"
        );
        school
    })
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
        assert_eq!(stored_timezone("Europe/Berlin"), chrono_tz::Europe::Berlin);
        assert!(currency("currency", "GBP").is_ok());
        assert!(currency("currency", "gbp").is_err());
    }
}

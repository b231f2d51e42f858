//! The error of the domain operations (bookings, people, payments, ...): what went wrong in terms
//! an API maps to a status code in one place. Constraint violations become [`DomainError`]s here.

/// Why a domain operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// An id that does not exist (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The write conflicts with the current state (409), e.g. a double booking.
    #[error("{0}")]
    Conflict(String),
    /// A value is not acceptable (422); `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is expected.
        message: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl DomainError {
    /// An invalid value of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Maps well-known constraint violations to conflicts or invalid values, leaving the rest as
    /// database errors.
    pub fn from_db(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            let constraint = db.constraint().unwrap_or_default().to_owned();
            match db.code().as_deref() {
                Some("23P01") if constraint == "bookings_no_instructor_overlap" => {
                    return DomainError::Conflict("the instructor is already booked at that time".into());
                }
                Some("23505") => {
                    let what = match constraint.as_str() {
                        "users_email_key" => "a user with this email already exists",
                        "instructors_license_number_key" => "an instructor with this license number already exists",
                        "user_devices_user_id_device_id_key" => "this device is already registered",
                        _ => "this already exists",
                    };
                    return DomainError::Conflict(what.into());
                }
                Some("23503") => return DomainError::NotFound("a referenced record"),
                Some("23514") => {
                    return DomainError::invalid(constraint.clone(), format!("value violates the rule {constraint}"));
                }
                _ => {}
            }
        }
        DomainError::Db(e)
    }
}

//! Lists: `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`], 422 beyond) and an opaque
//! `cursor` (the last id of the previous page), answered as `{items, next_cursor}`. Each list
//! fetches one row more than asked to know whether another page follows.

use crate::error::ApiError;

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 500;

/// Validates `limit`.
pub fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid("limit", format!("expected 1 to {MAX_LIMIT}, got {n}"))),
    }
}

/// Reads a cursor made of a numeric id.
pub fn id_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::invalid("cursor", "not a cursor this list gave out")),
    }
}

/// Cuts the extra row off and returns the items and the cursor of the next page.
pub fn finish<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(key);
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        assert_eq!(limit(None).unwrap(), 50);
        assert_eq!(limit(Some(500)).unwrap(), 500);
        assert!(limit(Some(501)).is_err());
        assert!(limit(Some(0)).is_err());
        assert_eq!(id_cursor(Some("42")).unwrap(), Some(42));
        assert!(id_cursor(Some("x")).is_err());
        assert_eq!(finish(vec![3, 2, 1], 2, |n| n.to_string()), (vec![3, 2], Some("2".into())));
        assert_eq!(finish(vec![3, 2], 2, |n| n.to_string()), (vec![3, 2], None));
    }
}
